/*
 * frame_write: writing frames to a TAP or a packet socket, one write per frame (the kernel has
 * no batched write for either): writeFrames, and writeFramesVnet for a TAP opened with
 * vnetHdr, where each frame goes out behind its virtio_net_hdr.
 *
 * Guarantees: never blocks (the fds are non-blocking); the first EAGAIN/EWOULDBLOCK/ENOBUFS ends
 * the call and the return value says how many frames were written (the caller counts the rest
 * as dropped). Errors are told apart by what they belong to (frame_refused):
 *  - one frame: the kernel refuses that frame and would take the next one (EMSGSIZE: longer
 *    than the device's MTU without GSO; EINVAL: a header or length it rejects; ENOMEM: a GSO
 *    header the packet socket cannot build an skb for; EFAULT). The frame is skipped, not
 *    counted as written, and counted in opts.refused[0] when given; the batch goes on.
 *  - the socket or the device (ENXIO, ENETDOWN, EBADF, EIO, anything else): the rest of the
 *    batch would fail the same way, so the call throws, with `written` set to the frames written
 *    before it.
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
 * with ENOMEM), which would drop the frame.
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

/* 1 when errno e of a frame's write is that frame's own (see above): skip it, go on. */
static int frame_refused(int e) {
  return e == EMSGSIZE || e == EINVAL || e == ENOMEM || e == EFAULT;
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
 * when metas is NULL); otherwise the frame alone. refused (may be NULL): refused[0] += frames
 * skipped for an error of their own. name/syscall_name name the call in errors. */
static napi_value write_frames(napi_env env, int fd, napi_value frames, uint32_t count, int vnet, int split, const uint8_t *metas, uint32_t *refused,
                               const char *name, const char *syscall_name) {
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
      if (frame_refused(e)) {
        if (refused) refused[0]++;
        continue;
      }
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

/* opts.refused: a Uint32Array whose [0] counts frames skipped for an error of their own; NULL
 * when absent; 0 (thrown) when it is not a Uint32Array of at least one element. */
static int opt_refused(napi_env env, napi_value opts, const char *name, uint32_t **out) {
  napi_value v;
  *out = NULL;
  if (!opt_prop(env, opts, "refused", &v)) return 1;
  char what[48];
  snprintf(what, sizeof what, "%s: opts.refused", name);
  size_t n;
  if (!arg_u32array(env, v, out, &n, what)) return 0;
  if (n == 0) {
    throw_range(env, "%s must have at least one element", what);
    return 0;
  }
  return 1;
}

/* writeFrames(fd, frames, count, opts?) -> number written; opts.refused: see opt_refused. */
napi_value WriteFrames(napi_env env, napi_callback_info info) {
  GET_ARGS(4);
  int fd;
  uint32_t n;
  int64_t count;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  if (!arg_array(env, argv[1], &n, "writeFrames: frames")) return NULL;
  if (!arg_int(env, argv[2], 0, n, &count, "writeFrames: count")) return NULL;
  uint32_t *refused;
  if (!opt_refused(env, argv[3], "writeFrames", &refused)) return NULL;
  return write_frames(env, fd, argv[1], (uint32_t)count, 0, 0, NULL, refused, "writeFrames", "write");
}

/*
 * writeFramesVnet(fd, frames, count, metas?, opts?) -> number written: like writeFrames, for a TAP
 * opened with vnetHdr; frame i goes out behind metas[10*i .. 10*i+10) (a virtio_net_hdr), or
 * behind a zero header when metas is null/undefined. opts.splitFlushTail: see above;
 * opts.refused: see opt_refused.
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
  uint32_t *refused;
  if (!opt_refused(env, argv[4], "writeFramesVnet", &refused)) return NULL;
  return write_frames(env, fd, argv[1], (uint32_t)count, 1, opt_bool(env, argv[4], "splitFlushTail"), metas, refused, "writeFramesVnet", "writev");
}
