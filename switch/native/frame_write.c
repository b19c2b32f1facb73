/*
 * frame_write: writing frames to a TAP or a packet socket, one write per frame (the kernel has
 * no batched write for either): writeFrames, and writeFramesVnet for a TAP opened with
 * vnetHdr, where each frame goes out behind its virtio_net_hdr.
 *
 * Guarantees: never blocks (the fds are non-blocking); the first EAGAIN/EWOULDBLOCK/ENOBUFS ends
 * the call and the return value says how many frames were written (the caller counts the rest
 * as dropped). Any other error throws, with `written` set to the frames written before it; on a
 * vnet TAP a frame whose header the kernel refuses (EINVAL) is skipped and not counted.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <sys/uio.h>

#include "addon.h"
#include "napi_util.h"
#include "offload.h"

static const uint8_t zero_hdr[OFL_VNET_HDR_LEN] = {0};

/* The loop both entry points share. vnet: each frame behind metas[10i..] (or a zero header
 * when metas is NULL); otherwise the frame alone. name/syscall_name name the call in errors. */
static napi_value write_frames(napi_env env, int fd, napi_value frames, uint32_t count, int vnet, const uint8_t *metas, const char *name,
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
    struct iovec v[2] = {{(void *)(metas ? metas + (size_t)i * OFL_VNET_HDR_LEN : zero_hdr), OFL_VNET_HDR_LEN}, {data, len}};
    ssize_t w;
    do {
      w = writev(fd, vnet ? v : v + 1, vnet ? 2 : 1);
    } while (w < 0 && errno == EINTR);
    if (w < 0) {
      int e = errno;
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
  return write_frames(env, fd, argv[1], (uint32_t)count, 0, NULL, "writeFrames", "write");
}

/*
 * writeFramesVnet(fd, frames, count, metas?) -> number written: like writeFrames, for a TAP
 * opened with vnetHdr; frame i goes out behind metas[10*i .. 10*i+10) (a virtio_net_hdr), or
 * behind a zero header when metas is null/undefined.
 */
napi_value WriteFramesVnet(napi_env env, napi_callback_info info) {
  GET_ARGS(4);
  int fd;
  uint32_t n;
  int64_t count;
  uint8_t *metas = NULL;
  if (!arg_fd(env, argv[0], &fd)) return NULL;
  if (!arg_array(env, argv[1], &n, "writeFramesVnet: frames")) return NULL;
  if (!arg_int(env, argv[2], 0, n, &count, "writeFramesVnet: count")) return NULL;
  if (!arg_records(env, argv[3], count, OFL_VNET_HDR_LEN, &metas, "writeFramesVnet: metas", "frames")) return NULL;
  return write_frames(env, fd, argv[1], (uint32_t)count, 1, metas, "writeFramesVnet", "writev");
}
