/*
 * poller_read: one batch of reads for a poller (see poller.h), by kind:
 * - 'frames' (TAP, packet socket) and 'vnet' (TAP with IFF_VNET_HDR): one read per frame.
 *   A TAP read spills into this environment's scratch tail, so a frame longer than the slot is
 *   detected and dropped (counted as truncated), never delivered cut short; a packet socket
 *   says the real length through MSG_TRUNC. On a vnet TAP a single frame's partial checksum is
 *   completed here and its header zeroed, so only TCP super-frames carry a header further on;
 *   any other GSO type is dropped (gsoDrops).
 * - 'udp': one recvmmsg; each datagram's source goes to ips/ports. With GRO, each received
 *   buffer is split into entries (ofl_gro_split: coalesced TCP segments become one
 *   super-frame with its virtio_net_hdr); without, truncated datagrams are squeezed out so the
 *   delivered ones sit in slots 0..n-1.
 * Never blocks and never throws: errors end the batch and are counted.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include "poller.h"
#include "sockopt.h"

/* A vnet frame of r bytes at buf with its header at m: 1 to deliver it, 0 to drop it. */
static int vnet_accept(poller_t *p, uint8_t *buf, size_t r, uint8_t *m) {
  ofl_vnet_t h;
  ofl_vnet_get(m, &h);
  uint8_t gt = h.gso_type & (uint8_t)~OFL_GSO_ECN;
  if (gt == OFL_GSO_NONE) {
    /* A partial checksum on a single frame: complete it now, so only super-frames
     * carry a header further on. */
    if ((h.flags & OFL_F_NEEDS_CSUM) && ofl_complete_csum(buf, r, &h) < 0) {
      p->gso_drops++;
      return 0;
    }
    memset(m, 0, OFL_VNET_HDR_LEN);
  } else if (gt != OFL_GSO_TCPV4 && gt != OFL_GSO_TCPV6) {
    p->gso_drops++;
    return 0;
  }
  return 1;
}

/* 'frames' and 'vnet': read() until EAGAIN or a full batch. */
static uint32_t read_frames(poller_t *p, int *err) {
  const uint32_t cap = p->slot - p->headroom;
  const int vnet = p->kind == KIND_VNET;
  uint8_t *scratch = p->addon->rx_scratch;
  uint32_t n = 0, attempts = 0;
  while (n < p->max_batch && attempts < 2 * p->max_batch) {
    attempts++;
    uint8_t *buf = p->slab + (size_t)n * p->slot + p->headroom;
    uint8_t *m = vnet ? p->meta + (size_t)n * OFL_VNET_HDR_LEN : NULL;
    ssize_t r;
    if (vnet) {
      struct iovec v[3] = {{m, OFL_VNET_HDR_LEN}, {buf, cap}, {scratch, RX_SCRATCH_BYTES}};
      r = readv(p->fd, v, 3);
    } else if (p->is_socket) {
      /* MSG_TRUNC: the return value is the real length even when it does not fit. */
      r = recv(p->fd, buf, cap, MSG_TRUNC | MSG_DONTWAIT);
    } else {
      struct iovec v[2] = {{buf, cap}, {scratch, RX_SCRATCH_BYTES}};
      r = readv(p->fd, v, 2);
    }
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) *err = errno;
      break;
    }
    if (vnet) {
      if (r <= OFL_VNET_HDR_LEN) continue;
      r -= OFL_VNET_HDR_LEN;
    } else if (r == 0) {
      continue;
    }
    if ((size_t)r > cap) {
      p->truncated++;
      continue;
    }
    if (vnet && !vnet_accept(p, buf, (size_t)r, m)) continue;
    p->lens[n++] = (uint32_t)r;
  }
  return n;
}

/* Source of received datagram j, host byte order (0:0 when not IPv4). */
static void source_of(poller_t *p, int j, uint32_t *ip, uint32_t *port) {
  *ip = *port = 0;
  if (p->msgs[j].msg_hdr.msg_namelen >= sizeof(struct sockaddr_in) && p->addrs[j].sin_family == AF_INET) {
    *ip = ntohl(p->addrs[j].sin_addr.s_addr);
    *port = ntohs(p->addrs[j].sin_port);
  }
}

/* GRO: split received buffer j into entries n.. ; returns the new n. */
static uint32_t gro_entries(poller_t *p, int j, uint32_t n) {
  struct mmsghdr *m = &p->msgs[j];
  int gso = 0;
  for (struct cmsghdr *cm = CMSG_FIRSTHDR(&m->msg_hdr); cm; cm = CMSG_NXTHDR(&m->msg_hdr, cm)) {
    if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO && cm->cmsg_len >= CMSG_LEN(sizeof(int))) memcpy(&gso, CMSG_DATA(cm), sizeof gso);
  }
  uint32_t ip, port;
  source_of(p, j, &ip, &port);
  size_t base = (size_t)j * p->slot + p->headroom;
  uint32_t dropped = 0;
  uint32_t room = p->max_entries - n < GRO_MAX_ENTS ? p->max_entries - n : GRO_MAX_ENTS;
  int k = ofl_gro_split(p->slab + base, m->msg_len, gso > 0 ? (uint32_t)gso : 0, p->ents, (int)room, &dropped);
  p->gro_dropped += dropped;
  for (int e = 0; e < k; e++) {
    p->offs[n] = (uint32_t)(base + p->ents[e].off);
    p->lens[n] = p->ents[e].len;
    p->segs[n] = p->ents[e].segs;
    p->ips[n] = ip;
    p->ports[n] = port;
    ofl_vnet_put(p->meta + (size_t)n * OFL_VNET_HDR_LEN, &p->ents[e].vnet);
    n++;
  }
  return n;
}

/* 'udp': one recvmmsg. */
static uint32_t read_udp(poller_t *p, int *err) {
  uint32_t n = 0;
  int r;
  for (uint32_t j = 0; j < p->max_batch; j++) {
    p->msgs[j].msg_hdr.msg_namelen = sizeof(struct sockaddr_in);
    p->msgs[j].msg_hdr.msg_flags = 0;
    p->msgs[j].msg_len = 0;
    if (p->gro) {
      p->msgs[j].msg_hdr.msg_control = p->ctrl + (size_t)j * GRO_CTRL_LEN;
      p->msgs[j].msg_hdr.msg_controllen = GRO_CTRL_LEN;
    }
  }
  do {
    r = recvmmsg(p->fd, p->msgs, p->max_batch, MSG_DONTWAIT, NULL);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK) *err = errno;
    r = 0;
  }
  for (int j = 0; j < r; j++) {
    struct mmsghdr *m = &p->msgs[j];
    if (m->msg_hdr.msg_flags & MSG_TRUNC) {
      p->truncated++;
      continue;
    }
    if (p->gro) {
      n = gro_entries(p, j, n);
      continue;
    }
    if (n != (uint32_t)j) {
      memmove(p->slab + (size_t)n * p->slot + p->headroom, p->slab + (size_t)j * p->slot + p->headroom, m->msg_len);
    }
    p->lens[n] = m->msg_len;
    source_of(p, j, &p->ips[n], &p->ports[n]);
    n++;
  }
  return n;
}

uint32_t poller_read_batch(poller_t *p) {
  int err = 0;
  uint32_t n = p->kind == KIND_UDP ? read_udp(p, &err) : read_frames(p, &err);
  if (err) {
    p->errors++;
    p->last_errno = err;
    if (n == 0) p->consecutive_errors++;
  } else {
    p->consecutive_errors = 0;
  }
  if (n > 0) {
    p->frames += n;
    p->batches++;
  }
  return n;
}
