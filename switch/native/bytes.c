/*
 * bytes: a plain memcpy between buffers for the store's stream batches (contract:
 * proto/store/batch-pool.ts copyInto()).
 *
 *   copyBytes(dst: Uint8Array, at: number, src: Uint8Array): number   src into dst[at..], returns at + src.length
 *   keepFromChildren(buf: Uint8Array): number   madvise(MADV_DONTFORK) over the whole pages inside
 *        buf; returns the bytes covered (0 when buf spans no whole page)
 *
 * Why: a batch slot is shared memory (a SharedArrayBuffer the hashing worker reads in place), and
 * V8 copies into shared memory with relaxed atomic word moves (TypedArray.prototype.set and
 * Buffer.copy alike): a memory stream's one copy into its batches took about a quarter of the
 * event loop's time that way (docs/performance.md, "The memory stream: no buffer per read"). The
 * slot is the stream's alone while it fills (nothing reads it concurrently), so a memcpy is exact.
 *
 * keepFromChildren: a process that starts a child (the agent: qemu-img at every disk snapshot)
 * forks, and after a fork every page of the parent is write-protected until its next write
 * faults (copy-on-write, even once the child has exec'd): a stream's reused memory (the batch
 * pool, the held pages' slabs) then faults page by page once per fork. Pages not forked at all
 * (MADV_DONTFORK) never are; the child, which only execs, has no use for them.
 *
 * Only for memory the process keeps for its life (the batch pool's slabs): memory freed with
 * the mark still on could be handed out again by malloc for what a child needs between its fork
 * and its exec.
 *
 * Guarantees: dst[at .. at + src.length) must lie within dst, else a RangeError and nothing is
 * copied. Synchronous, allocation-free. keepFromChildren changes no byte and nothing of the
 * parent's use of the memory; a madvise failure is ERR_NATIVE_IO.
 */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "addon.h"
#include "napi_util.h"

napi_value CopyBytes(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  uint8_t *dst, *src;
  size_t dlen, slen;
  int64_t at;
  if (!arg_bytes(env, argv[0], &dst, &dlen, "copyBytes: dst") || !arg_int(env, argv[1], 0, (int64_t)dlen, &at, "copyBytes: at") || !arg_bytes(env, argv[2], &src, &slen, "copyBytes: src")) return NULL;
  if (slen > dlen - (size_t)at) {
    throw_range(env, "copyBytes: %zu bytes at %lld do not fit in %zu", slen, (long long)at, dlen);
    return NULL;
  }
  memmove(dst + at, src, slen);
  napi_value r;
  napi_create_double(env, (double)((size_t)at + slen), &r);
  return r;
}

napi_value KeepFromChildren(napi_env env, napi_callback_info info) {
  GET_ARGS(1);
  uint8_t *p;
  size_t len;
  if (!arg_bytes(env, argv[0], &p, &len, "keepFromChildren: buf")) return NULL;
  uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  uintptr_t from = ((uintptr_t)p + page - 1) & ~(page - 1), to = ((uintptr_t)p + len) & ~(page - 1);
  double covered = 0;
  if (to > from) {
    if (madvise((void *)from, to - from, MADV_DONTFORK) != 0) {
      throw_sys(env, "keepFromChildren", "madvise", errno);
      return NULL;
    }
    covered = (double)(to - from);
  }
  napi_value r;
  napi_create_double(env, covered, &r);
  return r;
}
