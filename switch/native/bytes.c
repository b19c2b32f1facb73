/*
 * bytes: a plain memcpy between buffers for the store's stream batches (contract:
 * proto/store/batch-pool.ts copyInto()).
 *
 *   copyBytes(dst: Uint8Array, at: number, src: Uint8Array): number   src into dst[at..], returns at + src.length
 *
 * Why: a batch slot is shared memory (a SharedArrayBuffer the hashing worker reads in place), and
 * V8 copies into shared memory with relaxed atomic word moves (TypedArray.prototype.set and
 * Buffer.copy alike): a memory stream's one copy into its batches took about a quarter of the
 * event loop's time that way (docs/performance.md, "The memory stream off the event loop"). The
 * slot is the stream's alone while it fills (nothing reads it concurrently), so a memcpy is exact.
 *
 * Guarantees: dst[at .. at + src.length) must lie within dst, else a RangeError and nothing is
 * copied. Synchronous, allocation-free.
 */
#include <string.h>

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
