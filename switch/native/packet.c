/*
 * packet: opening AF_PACKET sockets (packetOpen), the switch's port to an existing interface
 * (a veth end, a Xen vif). Guarantees: the socket sees only frames received on that interface
 * (bound by ifindex, created with protocol 0 so nothing is queued before the bind; outgoing
 * frames ignored), in promiscuous mode, non-blocking, with large buffers; on failure it is
 * closed and the error names the step.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "addon.h"
#include "napi_util.h"
#include "sockopt.h"

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif

/*
 * packetOpen(ifname) -> { fd, ifindex }
 *
 * CALLER'S DUTY: on veth and TAP kernel sides (and most NICs) the kernel hands a packet
 * socket 64 KiB GSO super-frames with partial checksums unless segmentation/checksum
 * offloads are off on that interface: run `ethtool -K IF tx off tso off gso off` (and, so
 * VLAN tags are not moved out of the frame into metadata, `rxvlan off txvlan off`) before
 * using the port. This addon does not shell out.
 */
napi_value PacketOpen(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  char name[256];
  size_t len = 0;
  char op[300];
  if (!arg_subject(env, argv[0], "packetOpen", "ifname", name, &len, op)) return NULL;
  if (len == 0 || len >= IFNAMSIZ) {
    throw_io(env, "%s: invalid interface name (1 to %d bytes)", op, IFNAMSIZ - 1);
    return NULL;
  }
  errno = 0;
  unsigned idx = if_nametoindex(name);
  if (idx == 0) {
    throw_sys(env, op, "if_nametoindex", errno ? errno : ENODEV);
    return NULL;
  }
  /* Protocol 0 at creation: nothing is queued until bind() (with ETH_P_ALL) on this ifindex,
   * so no frame of another interface slips in between socket() and bind(). */
  int fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    throw_sys(env, op, "socket AF_PACKET", errno);
    return NULL;
  }
  int one = 1, zero = 0;
  const char *step = NULL;
  if (setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one, sizeof one) < 0) {
    step = "setsockopt PACKET_IGNORE_OUTGOING";
    goto fail;
  }
  if (setsockopt(fd, SOL_PACKET, PACKET_AUXDATA, &zero, sizeof zero) < 0) {
    step = "setsockopt PACKET_AUXDATA";
    goto fail;
  }
  struct packet_mreq mr;
  memset(&mr, 0, sizeof mr);
  mr.mr_ifindex = (int)idx;
  mr.mr_type = PACKET_MR_PROMISC;
  if (setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr) < 0) {
    step = "setsockopt PACKET_ADD_MEMBERSHIP";
    goto fail;
  }
  set_sock_bufs(fd);
  struct sockaddr_ll sll;
  memset(&sll, 0, sizeof sll);
  sll.sll_family = AF_PACKET;
  sll.sll_protocol = htons(ETH_P_ALL);
  sll.sll_ifindex = (int)idx;
  if (bind(fd, (struct sockaddr *)&sll, sizeof sll) < 0) {
    step = "bind";
    goto fail;
  }
  napi_value res;
  napi_create_object(env, &res);
  set_num_prop(env, res, "fd", fd);
  set_num_prop(env, res, "ifindex", idx);
  return res;
fail:
  return fail_close(env, fd, op, step);
}
