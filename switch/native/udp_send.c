/*
 * udp_send: udpSend, the tunnel's transmit path: many datagrams per system call (sendmmsg),
 * TCP super-frames segmented here (offload.c) and handed to the kernel as UDP_SEGMENT
 * messages, and runs of equal-sized ordinary datagrams to one destination coalesced into one
 * UDP_SEGMENT message (one trip through the stack for up to 64).
 *
 * Guarantees:
 * - Never blocks: MSG_DONTWAIT; the first EAGAIN/ENOBUFS ends the call, and the return value
 *   says how many entries went out entirely (the caller counts the rest as dropped).
 * - GSO fallback per socket: when the kernel refuses a UDP_SEGMENT message (EIO, EINVAL,
 *   EOPNOTSUPP, EMSGSIZE) its segments are sent one datagram each and that socket (its
 *   udp_sock_t, not its fd number: see udp_sock.h) is marked so later calls build no
 *   UDP_SEGMENT message for it. Another socket, even one later given the same fd number,
 *   keeps GSO.
 * - All scratch memory is this environment's send arena (send_arena.h): safe from workers.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "addon.h"
#include "napi_util.h"
#include "offload.h"
#include "send_arena.h"
#include "sockopt.h"
#include "udp_sock.h"


#define GSO_MAX_SEGS 64
#define GSO_MAX_BYTES 65000

typedef struct {
  int fd;
  udp_sock_t *sock; /* NULL: fd is not open (sendmmsg reports it) */
  send_arena_t *ar;
  uint32_t nmsg, niov, nseg;
  uint32_t *segs_out; /* may be NULL */
  int stopped;        /* EAGAIN/ENOBUFS: nothing more goes out in this call */
  uint32_t stop_entry;
  int err;            /* another errno: thrown by the caller */
  uint32_t datagrams;
} sendctx_t;

static int gso_ok(const sendctx_t *c) { return !(c->sock && c->sock->gso_broken); }

static void credit_n(sendctx_t *c, uint32_t m, uint32_t k) {
  send_arena_t *ar = c->ar;
  if (c->segs_out) {
    if (ar->msg_run[m])
      for (uint32_t j = 0; j < k; j++) c->segs_out[ar->msg_entry[m] + j] += 1;
    else
      c->segs_out[ar->msg_entry[m]] += k;
  }
  c->datagrams += k;
}

static void credit(sendctx_t *c, uint32_t m) { credit_n(c, m, c->ar->msg_nseg[m]); }

/* Send one UDP_SEGMENT message's segments as separate datagrams (after the kernel refused GSO). */
static int send_split(sendctx_t *c, uint32_t m) {
  struct msghdr *h = &c->ar->msgs[m].msg_hdr;
  uint32_t per = c->ar->msg_run[m] ? 1 : 2;
  uint32_t k = (uint32_t)h->msg_iovlen / per;
  struct mmsghdr mm[GSO_MAX_SEGS];
  memset(mm, 0, sizeof mm);
  for (uint32_t j = 0; j < k; j++) {
    mm[j].msg_hdr.msg_name = h->msg_name;
    mm[j].msg_hdr.msg_namelen = h->msg_namelen;
    mm[j].msg_hdr.msg_iov = h->msg_iov + per * j;
    mm[j].msg_hdr.msg_iovlen = per;
  }
  uint32_t done = 0;
  while (done < k) {
    int r = sendmmsg(c->fd, mm + done, k - done, MSG_DONTWAIT);
    if (r < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      credit_n(c, m, done);
      return e;
    }
    done += (uint32_t)r;
  }
  credit(c, m);
  return 0;
}

static void stop_at(sendctx_t *c, uint32_t m, int e) {
  if (e == 0 || e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS)
    c->stopped = 1;
  else
    c->err = e;
  c->stop_entry = c->ar->msg_entry[m];
}

/* Send every message built so far; empties the batch. */
static void send_flush(sendctx_t *c) {
  send_arena_t *ar = c->ar;
  uint32_t m = 0;
  while (m < c->nmsg && !c->stopped && !c->err) {
    int r = sendmmsg(c->fd, ar->msgs + m, c->nmsg - m, MSG_DONTWAIT);
    if (r < 0) {
      int e = errno;
      if (e == EINTR) continue;
      int is_gso = ar->msgs[m].msg_hdr.msg_controllen > 0;
      if (is_gso && (e == EIO || e == EINVAL || e == EOPNOTSUPP || e == EMSGSIZE)) {
        if (c->sock) {
          c->sock->gso_broken = 1;
          c->sock->split_msgs++;
        }
        e = send_split(c, m);
        if (e == 0) {
          m++;
          continue;
        }
      }
      stop_at(c, m, e);
      break;
    }
    if (r == 0) {
      stop_at(c, m, 0);
      break;
    }
    for (int j = 0; j < r; j++) {
      credit(c, m + (uint32_t)j);
      if (c->sock && ar->msgs[m + (uint32_t)j].msg_hdr.msg_controllen > 0) c->sock->gso_msgs++;
    }
    m += (uint32_t)r;
  }
  c->nmsg = c->niov = c->nseg = 0;
}

static struct msghdr *add_msg(sendctx_t *c, uint32_t entry, const struct sockaddr_in *sa, uint32_t nseg) {
  send_arena_t *ar = c->ar;
  uint32_t m = c->nmsg++;
  ar->sa[m] = *sa;
  memset(&ar->msgs[m], 0, sizeof ar->msgs[m]);
  struct msghdr *h = &ar->msgs[m].msg_hdr;
  h->msg_name = &ar->sa[m];
  h->msg_namelen = sizeof ar->sa[m];
  h->msg_iov = ar->iov + c->niov;
  h->msg_iovlen = 0;
  ar->msg_entry[m] = entry;
  ar->msg_nseg[m] = nseg;
  ar->msg_run[m] = 0;
  return h;
}

static void set_segment_cmsg(send_arena_t *ar, struct msghdr *h, uint32_t m, uint32_t seg_size) {
  h->msg_control = ar->ctl[m].buf;
  h->msg_controllen = CMSG_SPACE(sizeof(uint16_t));
  struct cmsghdr *cm = CMSG_FIRSTHDR(h);
  cm->cmsg_level = SOL_UDP;
  cm->cmsg_type = UDP_SEGMENT;
  cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
  uint16_t gs = (uint16_t)seg_size;
  memcpy(CMSG_DATA(cm), &gs, sizeof gs);
}

static uint32_t seg_len(const ofl_seg_t *s) { return s->hdr_len + s->payload_len; }

/* Entry idx, a Geneve header of gl bytes then a TCP super-frame: segment it into the arena and
 * queue its segments, up to GSO_MAX_SEGS equal-sized ones (the last may be shorter) per
 * message. Returns 0, or -1 when a flush stopped the call. An unsegmentable frame is dropped. */
static int add_superframe(sendctx_t *c, uint32_t idx, const struct sockaddr_in *sa, const uint8_t *data, size_t len, uint32_t gl,
                          const ofl_vnet_t *vh, uint32_t max_frame) {
  send_arena_t *ar = c->ar;
  if (gl >= len) return 0; /* dropped: segs[idx] stays 0 */
  int k = ofl_segment(data, gl, data + gl, len - gl, vh, max_frame, ar->hdr + (size_t)c->nseg * OFL_SEG_HDR_MAX, ar->segs + c->nseg,
                      ARENA_SEGS - (int)c->nseg);
  if (k == -2 && c->nseg > 0) {
    send_flush(c);
    if (c->stopped || c->err) return -1;
    k = ofl_segment(data, gl, data + gl, len - gl, vh, max_frame, ar->hdr, ar->segs, ARENA_SEGS);
  }
  if (k <= 0) return 0; /* not segmentable: dropped */
  if (c->nmsg + (uint32_t)k > ARENA_MSGS || c->niov + 2 * (uint32_t)k > IOV_CAP) {
    /* keep the segments: move them to the arena's front after the flush */
    uint32_t first = c->nseg;
    send_flush(c);
    if (c->stopped || c->err) return -1;
    memmove(ar->hdr, ar->hdr + (size_t)first * OFL_SEG_HDR_MAX, (size_t)k * OFL_SEG_HDR_MAX);
    for (int j = 0; j < k; j++) ar->segs[j] = ar->segs[first + j], ar->segs[j].hdr = ar->hdr + (size_t)j * OFL_SEG_HDR_MAX;
  }
  ofl_seg_t *sg = ar->segs + c->nseg;
  c->nseg += (uint32_t)k;
  int use_gso = gso_ok(c);
  for (int j = 0; j < k;) {
    uint32_t seg_size = seg_len(&sg[j]);
    int take = 1;
    uint32_t bytes = seg_size;
    if (use_gso) {
      while (j + take < k && take < GSO_MAX_SEGS && bytes + seg_len(&sg[j + take]) <= GSO_MAX_BYTES && seg_len(&sg[j + take - 1]) == seg_size) {
        bytes += seg_len(&sg[j + take]);
        take++;
      }
      /* a shorter segment may only be the last one of a message */
      if (take > 1 && seg_len(&sg[j + take - 1]) > seg_size) take--;
    }
    struct msghdr *h = add_msg(c, idx, sa, (uint32_t)take);
    for (int q = 0; q < take; q++) {
      ar->iov[c->niov].iov_base = sg[j + q].hdr;
      ar->iov[c->niov++].iov_len = sg[j + q].hdr_len;
      ar->iov[c->niov].iov_base = (void *)sg[j + q].payload;
      ar->iov[c->niov++].iov_len = sg[j + q].payload_len;
    }
    h->msg_iovlen = (size_t)take * 2;
    if (take > 1) set_segment_cmsg(ar, h, c->nmsg - 1, seg_size);
    j += take;
  }
  return 0;
}

/* Entry idx, one ordinary datagram: appended to the previous message when that is a run to the
 * same destination it can join (UDP_SEGMENT), else a message of its own. Returns 0, or -1 when
 * a flush stopped the call. */
static int add_datagram(sendctx_t *c, uint32_t idx, const struct sockaddr_in *sa, uint8_t *data, size_t len) {
  send_arena_t *ar = c->ar;
  if (c->nmsg > 0 && gso_ok(c) && len > 0) {
    uint32_t pm = c->nmsg - 1;
    struct msghdr *ph = &ar->msgs[pm].msg_hdr;
    if (ar->msg_run[pm] && ar->msg_nseg[pm] < GSO_MAX_SEGS && ar->msg_last[pm] == ar->msg_seg_size[pm] && len <= ar->msg_seg_size[pm] &&
        ar->msg_bytes[pm] + len <= GSO_MAX_BYTES && ar->sa[pm].sin_addr.s_addr == sa->sin_addr.s_addr && ar->sa[pm].sin_port == sa->sin_port &&
        ph->msg_iov + ph->msg_iovlen == ar->iov + c->niov && c->niov < IOV_CAP) {
      ar->iov[c->niov].iov_base = data;
      ar->iov[c->niov++].iov_len = len;
      ph->msg_iovlen++;
      if (ar->msg_nseg[pm] == 1) set_segment_cmsg(ar, ph, pm, ar->msg_seg_size[pm]);
      ar->msg_nseg[pm]++;
      ar->msg_bytes[pm] += (uint32_t)len;
      ar->msg_last[pm] = (uint32_t)len;
      return 0;
    }
  }
  if (c->nmsg + 1 > ARENA_MSGS || c->niov >= IOV_CAP) {
    send_flush(c);
    if (c->stopped || c->err) return -1;
  }
  struct msghdr *h = add_msg(c, idx, sa, 1);
  ar->iov[c->niov].iov_base = data;
  ar->iov[c->niov++].iov_len = len;
  h->msg_iovlen = 1;
  uint32_t m = c->nmsg - 1;
  ar->msg_run[m] = 1;
  ar->msg_seg_size[m] = ar->msg_bytes[m] = ar->msg_last[m] = (uint32_t)len;
  return 0;
}

/*
 * udpSend(fd, frames, ips, ports, count, metas?, segs?, maxFrame?) -> entries sent.
 * Without metas: frames[i] to ips[i]:ports[i], one datagram each (sendmmsg). With metas (a
 * virtio_net_hdr per entry, 10 bytes each): an entry whose gso_type is TCPV4/TCPV6 is a tunnel
 * header (Geneve, its length from its first byte) followed by a TCP super-frame; it is cut into
 * segments of at most maxFrame bytes of Ethernet frame (each behind a copy of the tunnel
 * header, with its own IP/TCP headers and checksums) and sent with UDP_SEGMENT (up to 64
 * segments per message), or one datagram per segment if the socket refuses UDP_SEGMENT. An
 * entry with NEEDS_CSUM and no GSO gets its checksum completed first. segs[i] receives the
 * number of datagrams of entry i the kernel accepted. Returns how many entries were sent
 * entirely; stops at the first EAGAIN/ENOBUFS. A super-frame that cannot be segmented is
 * dropped (segs[i] = 0) and the call goes on.
 */
napi_value UdpSend(napi_env env, napi_callback_info info) {
  GET_ARGS(8);
  int fd;
  uint32_t n;
  uint32_t *ips, *ports, *segs_out = NULL;
  size_t nips, nports, nsegs_out = 0;
  int64_t count, max_frame = 0;
  uint8_t *metas = NULL;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  if (!arg_array(env, argv[1], &n, "udpSend: frames")) return NULL;
  if (!arg_u32array(env, argv[2], &ips, &nips, "udpSend: ips")) return NULL;
  if (!arg_u32array(env, argv[3], &ports, &nports, "udpSend: ports")) return NULL;
  int64_t max = n;
  if ((int64_t)nips < max) max = (int64_t)nips;
  if ((int64_t)nports < max) max = (int64_t)nports;
  if (!arg_int(env, argv[4], 0, max, &count, "udpSend: count (<= frames/ips/ports length)")) return NULL;
  if (!arg_records(env, argv[5], count, OFL_VNET_HDR_LEN, &metas, "udpSend: metas", "entries")) return NULL;
  if (arg_present(env, argv[5])) {
    if (!arg_u32array(env, argv[6], &segs_out, &nsegs_out, "udpSend: segs")) return NULL;
    if (nsegs_out < (size_t)count) {
      throw_range(env, "udpSend: segs must have at least count (%lld) elements", (long long)count);
      return NULL;
    }
    if (!arg_int(env, argv[7], 64, 65535, &max_frame, "udpSend: maxFrame")) return NULL;
    memset(segs_out, 0, (size_t)count * sizeof *segs_out);
  }
  send_arena_t *ar = addon_arena(env, "udpSend");
  if (!ar) return NULL;

  sendctx_t c = {.fd = fd, .sock = udp_sock_of(addon_get(env), fd), .ar = ar, .segs_out = segs_out};
  uint32_t total = (uint32_t)count;
  for (uint32_t idx = 0; idx < total && !c.stopped && !c.err; idx++) {
    napi_value el;
    uint8_t *data;
    size_t len;
    if (napi_get_element(env, argv[1], idx, &el) != napi_ok) return NULL;
    if (!arg_bytes(env, el, &data, &len, "udpSend: frames[i]")) return NULL;
    if (ports[idx] > 65535) {
      throw_range(env, "udpSend: ports[%u] = %u is not a port", idx, ports[idx]);
      return NULL;
    }
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(ips[idx]);
    sa.sin_port = htons((uint16_t)ports[idx]);
    ofl_vnet_t vh = {0};
    if (metas) ofl_vnet_get(metas + (size_t)idx * OFL_VNET_HDR_LEN, &vh);
    uint32_t gl = len > 0 ? 8 + (uint32_t)(data[0] & 0x3f) * 4 : 0;
    if (vh.gso_type != OFL_GSO_NONE) {
      if (add_superframe(&c, idx, &sa, data, len, gl, &vh, (uint32_t)max_frame) < 0) break;
    } else {
      if (metas && (vh.flags & OFL_F_NEEDS_CSUM) && gl < len) (void)ofl_complete_csum(data + gl, len - gl, &vh);
      if (add_datagram(&c, idx, &sa, data, len) < 0) break;
    }
  }
  if (!c.stopped && !c.err) send_flush(&c);
  uint32_t done = (c.stopped || c.err) ? c.stop_entry : total;
  if (c.err) {
    char op[64];
    snprintf(op, sizeof op, "udpSend(fd %d)", fd);
    napi_value err = sys_error(env, op, "sendmmsg", c.err);
    set_num_prop(env, err, "sent", done);
    napi_throw(env, err);
    return NULL;
  }
  napi_value res;
  napi_create_uint32(env, done, &res);
  return res;
}
