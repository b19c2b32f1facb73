/*
 * tap: opening TAP devices (tapOpen). A TAP is the switch's port to a VM on this host: the VM's
 * frames are read from and written to its fd. Optionally with IFF_VNET_HDR, so the kernel may
 * hand over TCP super-frames (and checksum work) that the switch segments only when it must.
 * Guarantees: the fd is non-blocking and close-on-exec; on any failure it is closed and the
 * error names the ioctl that failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "addon.h"
#include "napi_util.h"
#include "offload.h"

#ifndef TUN_F_CSUM
#define TUN_F_CSUM 0x01
#define TUN_F_TSO4 0x02
#define TUN_F_TSO6 0x04
#endif

/*
 * tapOpen(name, opts?) -> { fd, name, vnetHdr, offloads }
 * opts.vnetHdr: IFF_VNET_HDR (every frame read/written is prefixed by a 10-byte
 * virtio_net_hdr) and TUNSETOFFLOAD(CSUM|TSO4|TSO6) (`offloads` says whether that worked).
 */
napi_value TapOpen(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int vnet = opt_bool(env, argv[1], "vnetHdr");
  char name[256], op[300];
  size_t len = 0;
  if (!arg_subject(env, argv[0], "tapOpen", "name", name, &len, op)) return NULL;
  if (len >= IFNAMSIZ) {
    throw_io(env, "%s: interface name longer than %d bytes", op, IFNAMSIZ - 1);
    return NULL;
  }
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    throw_sys(env, op, "open /dev/net/tun", errno);
    return NULL;
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (vnet ? IFF_VNET_HDR : 0);
  memcpy(ifr.ifr_name, name, len);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    return fail_close(env, fd, op, "ioctl TUNSETIFF");
  }
  int offloads = 0;
  if (vnet) {
    int sz = OFL_VNET_HDR_LEN;
    if (ioctl(fd, TUNSETVNETHDRSZ, &sz) < 0) {
      return fail_close(env, fd, op, "ioctl TUNSETVNETHDRSZ");
    }
    offloads = ioctl(fd, TUNSETOFFLOAD, (unsigned long)(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)) == 0;
  }
  ifr.ifr_name[IFNAMSIZ - 1] = 0;
  napi_value res;
  napi_create_object(env, &res);
  set_num_prop(env, res, "fd", fd);
  set_str_prop(env, res, "name", ifr.ifr_name);
  set_bool_prop(env, res, "vnetHdr", vnet);
  set_bool_prop(env, res, "offloads", offloads);
  return res;
}
