/*
 * frame_write: writing frames to a TAP or a packet socket, one write per frame (the kernel has
 * no batched write for either): writeFrames, and writeFramesVnet for a TAP opened with
 * vnetHdr, where each frame goes out behind its virtio_net_hdr.
 *
 * Guarantees: never blocks (the fds are non-blocking); the first EAGAIN/EWOULDBLOCK/ENOBUFS ends
 * the call and the return value says how many frames were written (the caller counts the rest
 * as dropped). Any other error throws, with `written` set to the frames written before it; on a
 * vnet TAP a frame whose header the kernel refuses (EINVAL) is skipped and not counted.
 *
 * writeFramesVnet's splitFlushTail (a packet socket on a veth whose peer coalesces with GRO, the
 * way super-frames reach a QEMU TAP whole): a TCP super-frame whose flags include FIN, PSH or
 * URG goes out as two writes, its first n-1 segments as one super-frame, then its last segment
 * (ofl_split_tail). Why: the kernel segments a super-frame written to a packet socket (its skb is
 * SKB_GSO_DODGY) and hands the socket's ownership to the last segment (skb_segment), so GRO on
 * the peer never merges that segment (its skb->sk differs) and, when it carries PSH/FIN/URG,
 * delivers it at once, ahead of the segments GRO still holds: the guest would see every such
 * super-frame's end before its body. Written on its own, the last segment arrives in the next
 * NAPI poll, after the body. A frame counts as written only when both writes went out.
 *
 * A GSO header on a frame of one segment (its payload at most gso_size, e.g. the body of a
 * two-segment super-frame split as above) is written as an ordinary header with its partial
 * checksum (ofl_demote_single): a packet socket refuses a GSO skb of one segment (sendmsg fails
 * with ENOMEM), which would throw and drop the rest of the port's batch.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <sys/uio.h>

#include "addon.h"
#include "napi_util.h"
#include "offload.h"

static const uint8_t zero_hdr[OFL_VNET_HDR_LEN] = {0};

/* One writev, retried on EINTR: 0, or the errno. */
static int write_iov(int fd, struct iovec *v, int n) {
  ssize_t w;
  do {
    w = writev(fd, v, n);
  } while (w < 0 && errno == EINTR);
  return w < 0 ? errno : 0;
}

/* A super-frame split before its flush-flagged last segment (see above): 0 when both parts went
 * out, the errno of the failed write, or -1 when the frame needs no split. */
static int write_split(int fd, uint8_t *data, size_t len, const uint8_t *meta) {
  ofl_vnet_t h, tail;
  ofl_vnet_get(meta, &h);
  if (h.gso_type == OFL_GSO_NONE) return -1;
  uint8_t body_hdr[OFL_SEG_HDR_MAX], tail_hdr[OFL_SEG_HDR_MAX], tail_meta[OFL_VNET_HDR_LEN];
  uint32_t body_len, tail_len;
  int hdrs = ofl_split_tail(data, len, &h, body_hdr, tail_hdr, &body_len, &tail_len, &tail);
  if (hdrs <= 0) return -1;
  ofl_vnet_put(tail_meta, &tail);
  /* Two segments: the body is one segment, written with an ordinary header (see above). */
  ofl_demote_payload(&h, body_len);
  uint8_t body_meta[OFL_VNET_HDR_LEN];
  ofl_vnet_put(body_meta, &h);
  uint8_t *pay = data + hdrs;
  struct iovec b[3] = {{body_meta, OFL_VNET_HDR_LEN}, {body_hdr, (size_t)hdrs}, {pay, body_len}};
  int e = write_iov(fd, b, 3);
  if (e) return e;
  struct iovec t[3] = {{tail_meta, OFL_VNET_HDR_LEN}, {tail_hdr, (size_t)hdrs}, {pay + body_len, tail_len}};
  return write_iov(fd, t, 3);
}

/* The loop both entry points share. vnet: each frame behind metas[10i..] (or a zero header
 * when metas is NULL); otherwise the frame alone. name/syscall_name name the call in errors. */
static napi_value write_frames(napi_env env, int fd, napi_value frames, uint32_t count, int vnet, int split, const uint8_t *metas, const char *name,
                               const char *syscall_name) {
  char what[48];
  snprintf(what, sizeof what, "%s: frames[i]", name);
  uint32_t written = 0;
  for (uint32_t i = 0; i < count; i++) {
    napi_value el;
    uint8_t *data;
    size_t len;
    if (napi_get_element(env, frames, i, &el) != napi_ok) return NULL;
    if (!arg_bytes(env, el, &data, &len, what)) return NULL;
    const uint8_t *meta = metas ? metas + (size_t)i * OFL_VNET_HDR_LEN : zero_hdr;
    uint8_t single[OFL_VNET_HDR_LEN];
    if (metas && meta[1] != OFL_GSO_NONE) {
      ofl_vnet_t h;
      ofl_vnet_get(meta, &h);
      if (ofl_demote_single(data, len, &h)) {
        ofl_vnet_put(single, &h);
        meta = single;
      }
    }
    struct iovec v[2] = {{(void *)meta, OFL_VNET_HDR_LEN}, {data, len}};
    int e = split && metas ? write_split(fd, data, len, meta) : -1;
    if (e < 0) e = write_iov(fd, vnet ? v : v + 1, vnet ? 2 : 1);
    if (e > 0) {
      if (e == EAGAIN || e == EWOULDBLOCK || e == ENOBUFS) break;
      if (vnet && e == EINVAL) continue; /* a header the kernel refuses: drop this frame only */
      char op[64];
      snprintf(op, sizeof op, "%s(fd %d)", name, fd);
      napi_value err = sys_error(env, op, syscall_name, e);
      set_num_prop(env, err, "written", written);
      napi_throw(env, err);
      return NULL;
    }
    written++;
  }
  napi_value res;
  napi_create_uint32(env, written, &res);
  return res;
}

/* writeFrames(fd, frames, count) -> number written */
napi_value WriteFrames(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  int fd;
  uint32_t n;
  int64_t count;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  if (!arg_array(env, argv[1], &n, "writeFrames: frames")) return NULL;
  if (!arg_int(env, argv[2], 0, n, &count, "writeFrames: count")) return NULL;
  return write_frames(env, fd, argv[1], (uint32_t)count, 0, 0, NULL, "writeFrames", "write");
}

/*
 * writeFramesVnet(fd, frames, count, metas?, opts?) -> number written: like writeFrames, for a TAP
 * opened with vnetHdr; frame i goes out behind metas[10*i .. 10*i+10) (a virtio_net_hdr), or
 * behind a zero header when metas is null/undefined. opts.splitFlushTail: see above.
 */
napi_value WriteFramesVnet(napi_env env, napi_callback_info info) {
  GET_ARGS(5);
  int fd;
  uint32_t n;
  int64_t count;
  uint8_t *metas = NULL;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  if (!arg_array(env, argv[1], &n, "writeFramesVnet: frames")) return NULL;
  if (!arg_int(env, argv[2], 0, n, &count, "writeFramesVnet: count")) return NULL;
  if (!arg_records(env, argv[3], count, OFL_VNET_HDR_LEN, &metas, "writeFramesVnet: metas", "frames")) return NULL;
  return write_frames(env, fd, argv[1], (uint32_t)count, 1, opt_bool(env, argv[4], "splitFlushTail"), metas, "writeFramesVnet", "writev");
}
