/*
 * packet: opening AF_PACKET sockets (packetOpen), the switch's port to an existing interface
 * (a veth end, a Xen vif). Guarantees: the socket sees only frames received on that interface
 * (bound by ifindex, created with protocol 0 so nothing is queued before the bind; outgoing
 * frames ignored), in promiscuous mode, non-blocking, with large buffers; on failure it is
 * closed and the error names the step.
 *
 * With opts.vnetHdr (PACKET_VNET_HDR, the switch's side of a QEMU TAP opened with vnet_hdr=on)
 * every frame read and written is prefixed by a 10-byte struct virtio_net_hdr (legacy layout,
 * native byte order, the same as a vnet TAP's), so the frames can be TCP super-frames:
 *  - RX: the kernel synthesises the header from the skb at recvmsg time: gso_type/gso_size/
 *    hdr_len (= the skb's linear length) for a GSO skb (up to 64 KiB, e.g. a guest's TSO frame
 *    as QEMU wrote it), flags NEEDS_CSUM + csum_start/csum_offset (from the frame's first byte)
 *    for a partial checksum, DATA_VALID for a checksum already verified, all zero otherwise.
 *    An skb whose GSO type has no virtio_net_hdr form (UDP tunnel GSO, ...) fails that recvmsg
 *    with EINVAL and is dropped (the poller counts a read error and goes on).
 *  - TX: the kernel builds the skb from the header (virtio_net_hdr_to_skb): a frame with
 *    gso_type TCPV4/TCPV6 may exceed the MTU and leaves as one GSO skb; the TAP passes it whole
 *    to QEMU if the guest negotiated TSO (QEMU's TUNSETOFFLOAD set the TAP's features), and the
 *    kernel segments it in software (validate_xmit_skb) otherwise. A header it cannot honour
 *    is refused with EINVAL (writeFramesVnet skips that frame).
 *
 * With opts.writeOnly the socket only writes (the switch's writing face toward a VM whose frames
 * it reads elsewhere, e.g. one end of the veth pair in front of a QEMU TAP): a filter that
 * accepts nothing is attached before the bind, so nothing is ever queued on it, and the
 * interface is not put in promiscuous mode.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/filter.h>
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
 * packetOpen(ifname, opts?) -> { fd, ifindex, vnetHdr, writeOnly }
 *
 * CALLER'S DUTY without vnetHdr: on veth and TAP kernel sides (and most NICs) the kernel hands a packet
 * socket 64 KiB GSO super-frames with partial checksums unless segmentation/checksum
 * offloads are off on that interface: run `ethtool -K IF tx off tso off gso off` (and, so
 * VLAN tags are not moved out of the frame into metadata, `rxvlan off txvlan off`) before
 * using the port. This addon does not shell out.
 * CALLER'S DUTY with vnetHdr: leave the interface's offloads ON (tx, tso, gso: super-frames are
 * what this mode is for, the header describes them); still `rxvlan off txvlan off` where the
 * interface has VLAN acceleration (a TAP has none on receive). A QEMU TAP needs nothing: its
 * features are what the guest negotiated.
 */
napi_value PacketOpen(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int vnet = opt_bool(env, argv[1], "vnetHdr");
  int write_only = opt_bool(env, argv[1], "writeOnly");
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
  /* Before the bind, so no frame is ever read without its header. */
  if (vnet && setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof one) < 0) {
    step = "setsockopt PACKET_VNET_HDR";
    goto fail;
  }
  if (write_only) {
    struct sock_filter drop_all = BPF_STMT(BPF_RET | BPF_K, 0);
    struct sock_fprog prog = {1, &drop_all};
    if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) < 0) {
      step = "setsockopt SO_ATTACH_FILTER";
      goto fail;
    }
  } else {
    struct packet_mreq mr;
    memset(&mr, 0, sizeof mr);
    mr.mr_ifindex = (int)idx;
    mr.mr_type = PACKET_MR_PROMISC;
    if (setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof mr) < 0) {
      step = "setsockopt PACKET_ADD_MEMBERSHIP";
      goto fail;
    }
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
  set_bool_prop(env, res, "vnetHdr", vnet);
  set_bool_prop(env, res, "writeOnly", write_only);
  return res;
fail:
  return fail_close(env, fd, op, step);
}
