/*
 * zstd: Zstandard compression of the snapshot store's chunks (contract: proto/store/store-native.ts,
 * used by proto/store/chunk-codec.ts). Node 20's zlib has no zstd; libzstd (Debian's libzstd-dev)
 * compresses several times faster than DEFLATE at a better ratio and decompresses faster still.
 *
 *   zstdCompress(chunks: Buffer[], level): Promise<Buffer[]>     one zstd frame per chunk
 *   zstdDecompress(frames: Buffer[], sizes: number[]): Promise<Buffer[]>
 *   zstdPack(chunks: Buffer[], level, dest: Buffer): Promise<{ sizes: Uint32Array, sha256: Buffer | null }>
 *        a pack written straight into dest: the chunks back to back, each one the zstd frame
 *        zstdCompress makes of it when the chunk is at least PACK_MIN_COMPRESS bytes and the frame
 *        saves at least 1/16 of them (at most len - (len >> 4) bytes), else the chunk's own bytes;
 *        sizes[i] is chunk i's stored size (< its length: a frame, == its length: plain), and
 *        sha256 the SHA-256 of dest[0 .. sum of sizes), or null where this CPU has no SHA
 *        extensions (sha256.h; the caller then hashes). dest must hold the chunks' total length
 *        and overlap none of them.
 *
 * Why zstdPack: a pack sealed from zstdCompress's output took one new Buffer per chunk (a
 * pack's ~128 chunks of 64 KiB a tracked snapshot, V8 external memory that drove the agent's
 * full collections) and a copy of each into the pack, then the pack's SHA-256 on the event
 * loop; zstdPack writes each frame into the pack where it belongs and hashes it there, in the
 * same piece of thread-pool work (docs/storage.md, "Compression").
 *
 * Guarantees:
 *   - The work runs in libuv's thread pool (napi_async_work), never on the event loop; a batch
 *     (a pack's chunks, a ranged read's chunks) is one piece of work with one compression or
 *     decompression context, so a small chunk costs no thread hop of its own.
 *   - The inputs are referenced until the work is over; callers must not modify them meanwhile.
 *   - zstdDecompress yields exactly sizes[i] bytes for frame i or rejects with an Error whose code
 *     is 'ERR_ZSTD', whose `index` is the first frame that failed and whose message says why (not
 *     zstd, truncated, or another size than expected): nothing of a failed batch is handed out.
 *   - zstdPack's frames are byte for byte zstdCompress's (one home for the parameters: cctx_new;
 *     each frame is made with at least ZSTD_compressBound bytes of room, as zstdCompress gives it:
 *     zstd given only len - (len >> 4) bytes refuses a frame that would have fitted with up to
 *     8 bytes to spare (its bit streams write a word at a time; seen with libzstd 1.5.4), and
 *     that chunk would be stored plain here and compressed there), so a pack is the same
 *     whichever way it was sealed (proto/store/pack-format.ts; test/unit/zstd-pack.test.ts binds
 *     the keep rule to chunk-codec.ts keepIfSmaller). The frame is made in dest when dest has the
 *     room past it, else in a scratch buffer of the job and copied when kept.
 *   - Out of memory rejects with code 'ERR_NATIVE_IO' (ENOMEM); argument errors throw synchronously
 *     (TypeError/RangeError, code 'ERR_INVALID_ARGUMENT', napi_util.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "addon.h"
#include "napi_util.h"
#include "sha256.h"

/* Largest batch, and largest chunk either way (the store's chunks are at most a few MiB). */
#define ZSTD_MAX_ITEMS 65536
#define ZSTD_MAX_ITEM_BYTES (64u << 20)
/* zstdPack: chunks shorter than this are stored plain (chunk-codec.ts MIN_COMPRESS). */
#define PACK_MIN_COMPRESS 64

typedef enum { Z_COMPRESS, Z_DECOMPRESS, Z_PACK } zmode_t;

typedef struct {
  const uint8_t *src;
  size_t len;
  uint8_t *dst; /* compress: malloc'd, ZSTD_compressBound(len); decompress: the output Buffer's bytes */
  size_t cap;
  size_t out;   /* compress: the frame's size; pack: the stored size */
} zitem_t;

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  napi_ref inputs;  /* the input array: keeps its buffers alive */
  napi_ref outputs; /* decompress: the output array; pack: dest */
  zmode_t mode;
  int level;
  uint32_t n;
  zitem_t *items;
  uint8_t *dest; /* pack: dest's bytes, dest_len of them */
  size_t dest_len;
  uint8_t *scratch; /* pack: a frame's room when dest has not enough past it (malloc'd on demand) */
  size_t scratch_cap;
  int hashed; /* pack: digest holds the SHA-256 of the pack */
  uint8_t digest[32];
  int enomem;
  long failed; /* index of the first failed item, or -1 */
  char msg[192];
} zjob_t;

static void zjob_free(napi_env env, zjob_t *j) {
  if (!j) return;
  if (j->mode == Z_COMPRESS && j->items)
    for (uint32_t i = 0; i < j->n; i++) free(j->items[i].dst);
  free(j->items);
  free(j->scratch);
  if (j->inputs) napi_delete_reference(env, j->inputs);
  if (j->outputs) napi_delete_reference(env, j->outputs);
  if (j->work) napi_delete_async_work(env, j->work);
  free(j);
}

/* The compression context of every frame either entry point makes (one home for the
 * parameters); NULL with j->enomem set when there is no memory for it. */
static ZSTD_CCtx *cctx_new(zjob_t *j) {
  ZSTD_CCtx *cx = ZSTD_createCCtx();
  if (!cx) {
    j->enomem = 1;
    return NULL;
  }
  ZSTD_CCtx_setParameter(cx, ZSTD_c_compressionLevel, j->level);
  ZSTD_CCtx_setParameter(cx, ZSTD_c_checksumFlag, 0); /* the chunk's SHA-256 checks it */
  return cx;
}

/* Item i's frame into dst (cap bytes, at least ZSTD_compressBound); its size, or 0 (no frame is
 * empty) with j->failed set. */
static size_t compress_one(zjob_t *j, ZSTD_CCtx *cx, uint32_t i, uint8_t *dst, size_t cap) {
  size_t r = ZSTD_compress2(cx, dst, cap, j->items[i].src, j->items[i].len);
  if (!ZSTD_isError(r)) return r;
  j->failed = i;
  snprintf(j->msg, sizeof j->msg, "zstd cannot compress chunk %u: %s", i, ZSTD_getErrorName(r));
  return 0;
}

static void compress_execute(napi_env env, void *data) {
  (void)env;
  zjob_t *j = data;
  ZSTD_CCtx *cx = cctx_new(j);
  if (!cx) return;
  for (uint32_t i = 0; i < j->n; i++) {
    zitem_t *it = &j->items[i];
    it->cap = ZSTD_compressBound(it->len);
    if (!(it->dst = malloc(it->cap ? it->cap : 1))) {
      j->enomem = 1;
      break;
    }
    if (!(it->out = compress_one(j, cx, i, it->dst, it->cap))) break;
  }
  ZSTD_freeCCtx(cx);
}

/* Chunk it stored at `to` (room: bytes of dest from there on): its frame when kept, else its bytes. */
static int pack_one(zjob_t *j, ZSTD_CCtx *cx, uint32_t i, uint8_t *to, size_t room) {
  zitem_t *it = &j->items[i];
  it->out = it->len;
  if (it->len >= PACK_MIN_COMPRESS) {
    size_t bound = ZSTD_compressBound(it->len), keep = it->len - (it->len >> 4);
    uint8_t *dst = to;
    if (room < bound) {
      if (!j->scratch && !(j->scratch = malloc(j->scratch_cap))) {
        j->enomem = 1;
        return 0;
      }
      dst = j->scratch;
    }
    size_t r = compress_one(j, cx, i, dst, bound);
    if (!r) return 0;
    if (r <= keep) {
      if (dst != to) memcpy(to, dst, r);
      it->out = r;
      return 1;
    }
  }
  memcpy(to, it->src, it->len);
  return 1;
}

static void pack_execute(napi_env env, void *data) {
  (void)env;
  zjob_t *j = data;
  sha_ctx_t sha;
  j->hashed = vn_sha256_ni_available();
  if (j->hashed) vn_sha256_init(&sha);
  ZSTD_CCtx *cx = cctx_new(j);
  if (!cx) return;
  size_t at = 0;
  for (uint32_t i = 0; i < j->n; i++) {
    if (!pack_one(j, cx, i, j->dest + at, j->dest_len - at)) break;
    if (j->hashed) vn_sha256_update(&sha, j->dest + at, j->items[i].out); /* while it is in the cache */
    at += j->items[i].out;
  }
  if (j->hashed) vn_sha256_final(&sha, j->digest);
  ZSTD_freeCCtx(cx);
}

static void decompress_execute(napi_env env, void *data) {
  (void)env;
  zjob_t *j = data;
  ZSTD_DCtx *dx = ZSTD_createDCtx();
  if (!dx) {
    j->enomem = 1;
    return;
  }
  for (uint32_t i = 0; i < j->n; i++) {
    zitem_t *it = &j->items[i];
    size_t r = ZSTD_decompressDCtx(dx, it->dst, it->cap, it->src, it->len);
    if (ZSTD_isError(r)) {
      j->failed = i;
      snprintf(j->msg, sizeof j->msg, "it does not decompress to %zu bytes: %s", it->cap, ZSTD_getErrorName(r));
      break;
    }
    if (r != it->cap) {
      j->failed = i;
      snprintf(j->msg, sizeof j->msg, "it decompresses to %zu bytes, not %zu", r, it->cap);
      break;
    }
  }
  ZSTD_freeDCtx(dx);
}

/* zstdPack's result, { sizes, sha256 }; NULL when out of memory. */
static napi_value pack_result(napi_env env, zjob_t *j) {
  napi_value result, ab, sizes, sha;
  void *p;
  if (napi_create_object(env, &result) != napi_ok || napi_create_arraybuffer(env, (size_t)j->n * 4, &p, &ab) != napi_ok ||
      napi_create_typedarray(env, napi_uint32_array, j->n, ab, 0, &sizes) != napi_ok)
    return NULL;
  for (uint32_t i = 0; i < j->n; i++) ((uint32_t *)p)[i] = (uint32_t)j->items[i].out;
  if (!j->hashed) napi_get_null(env, &sha);
  else if (napi_create_buffer_copy(env, 32, j->digest, NULL, &sha) != napi_ok)
    return NULL;
  napi_set_named_property(env, result, "sizes", sizes);
  napi_set_named_property(env, result, "sha256", sha);
  return result;
}

static void complete(napi_env env, napi_status status, void *data) {
  zjob_t *j = data;
  napi_value result = NULL;
  if (status != napi_ok) {
    result = make_error(env, "ERR_NATIVE_IO", "zstd: the work was cancelled");
  } else if (j->enomem) {
    result = sys_error(env, j->mode == Z_DECOMPRESS ? "zstdDecompress" : j->mode == Z_PACK ? "zstdPack" : "zstdCompress", "malloc", 12 /* ENOMEM */);
  } else if (j->failed >= 0) {
    result = make_error(env, "ERR_ZSTD", j->msg);
    set_num_prop(env, result, "index", (double)j->failed);
  } else if (j->mode == Z_DECOMPRESS) {
    napi_get_reference_value(env, j->outputs, &result);
  } else if (j->mode == Z_PACK) {
    result = pack_result(env, j);
    if (!result) {
      result = sys_error(env, "zstdPack", "malloc", 12);
      j->failed = 0;
    }
  } else {
    napi_create_array_with_length(env, j->n, &result);
    for (uint32_t i = 0; i < j->n; i++) {
      napi_value b;
      if (napi_create_buffer_copy(env, j->items[i].out, j->items[i].dst, NULL, &b) != napi_ok) {
        result = sys_error(env, "zstdCompress", "malloc", 12);
        j->failed = 0;
        break;
      }
      napi_set_element(env, result, i, b);
    }
  }
  int ok = status == napi_ok && !j->enomem && j->failed < 0;
  if (ok) napi_resolve_deferred(env, j->deferred, result);
  else napi_reject_deferred(env, j->deferred, result);
  zjob_free(env, j);
}

/* A job over the Buffers of `arr` (n of them), referenced until it completes; NULL after throwing. */
static zjob_t *zjob_new(napi_env env, napi_value arr, const char *what, uint32_t *n_out) {
  uint32_t n;
  if (!arg_array(env, arr, &n, what)) return NULL;
  if (n > ZSTD_MAX_ITEMS) {
    throw_range(env, "%s holds %u chunks, at most %u", what, n, ZSTD_MAX_ITEMS);
    return NULL;
  }
  zjob_t *j = calloc(1, sizeof *j);
  if (!j || !(j->items = calloc(n ? n : 1, sizeof *j->items))) {
    free(j);
    throw_sys(env, what, "malloc", 12);
    return NULL;
  }
  j->n = n;
  j->failed = -1;
  for (uint32_t i = 0; i < n; i++) {
    napi_value b;
    uint8_t *p;
    size_t len;
    if (napi_get_element(env, arr, i, &b) != napi_ok || !arg_bytes(env, b, &p, &len, what)) goto fail;
    if (len > ZSTD_MAX_ITEM_BYTES) {
      throw_range(env, "%s[%u] holds %zu bytes, at most %u", what, i, len, ZSTD_MAX_ITEM_BYTES);
      goto fail;
    }
    j->items[i].src = p;
    j->items[i].len = len;
  }
  if (napi_create_reference(env, arr, 1, &j->inputs) != napi_ok) goto fail;
  *n_out = n;
  return j;
fail:
  zjob_free(env, j);
  return NULL;
}

/* Queue j; the promise it settles. */
static napi_value zjob_queue(napi_env env, zjob_t *j, napi_async_execute_callback exec, const char *name) {
  napi_value promise, res_name;
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &res_name);
  if (napi_create_promise(env, &j->deferred, &promise) != napi_ok || napi_create_async_work(env, NULL, res_name, exec, complete, j, &j->work) != napi_ok ||
      napi_queue_async_work(env, j->work) != napi_ok) {
    zjob_free(env, j);
    throw_io(env, "%s: cannot queue the work", name);
    return NULL;
  }
  return promise;
}

napi_value ZstdCompress(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  int64_t level;
  if (!arg_int(env, argv[1], ZSTD_minCLevel(), ZSTD_maxCLevel(), &level, "zstdCompress: level")) return NULL;
  uint32_t n;
  zjob_t *j = zjob_new(env, argv[0], "zstdCompress: chunks", &n);
  if (!j) return NULL;
  j->level = (int)level;
  return zjob_queue(env, j, compress_execute, "zstdCompress");
}

napi_value ZstdDecompress(napi_env env, napi_callback_info info) {
  GET_ARGS(2);
  uint32_t n, nsizes;
  if (!arg_array(env, argv[1], &nsizes, "zstdDecompress: sizes")) return NULL;
  zjob_t *j = zjob_new(env, argv[0], "zstdDecompress: frames", &n);
  if (!j) return NULL;
  j->mode = Z_DECOMPRESS;
  napi_value outs;
  if (nsizes != n) {
    throw_range(env, "zstdDecompress: %u frames but %u sizes", n, nsizes);
    goto fail;
  }
  if (napi_create_array_with_length(env, n, &outs) != napi_ok) goto fail;
  for (uint32_t i = 0; i < n; i++) {
    napi_value s, b;
    int64_t size;
    void *p;
    if (napi_get_element(env, argv[1], i, &s) != napi_ok || !arg_int(env, s, 0, ZSTD_MAX_ITEM_BYTES, &size, "zstdDecompress: sizes[i]")) goto fail;
    if (napi_create_buffer(env, (size_t)size, &p, &b) != napi_ok) {
      throw_sys(env, "zstdDecompress", "malloc", 12);
      goto fail;
    }
    napi_set_element(env, outs, i, b);
    j->items[i].dst = p;
    j->items[i].cap = (size_t)size;
  }
  if (napi_create_reference(env, outs, 1, &j->outputs) != napi_ok) goto fail;
  return zjob_queue(env, j, decompress_execute, "zstdDecompress");
fail:
  zjob_free(env, j);
  return NULL;
}

napi_value ZstdPack(napi_env env, napi_callback_info info) {
  GET_ARGS(3);
  int64_t level;
  uint8_t *dest;
  size_t dest_len;
  if (!arg_int(env, argv[1], ZSTD_minCLevel(), ZSTD_maxCLevel(), &level, "zstdPack: level") || !arg_bytes(env, argv[2], &dest, &dest_len, "zstdPack: dest")) return NULL;
  uint32_t n;
  zjob_t *j = zjob_new(env, argv[0], "zstdPack: chunks", &n);
  if (!j) return NULL;
  j->mode = Z_PACK;
  j->level = (int)level;
  j->dest = dest;
  j->dest_len = dest_len;
  size_t total = 0, longest = 0;
  for (uint32_t i = 0; i < n; i++) {
    const zitem_t *it = &j->items[i];
    if (it->len > 0 && it->src < dest + dest_len && dest < it->src + it->len) {
      throw_range(env, "zstdPack: chunks[%u] overlaps dest", i);
      goto fail;
    }
    total += it->len;
    if (it->len > longest) longest = it->len;
  }
  if (dest_len < total) {
    throw_range(env, "zstdPack: dest holds %zu bytes, the chunks %zu", dest_len, total);
    goto fail;
  }
  j->scratch_cap = ZSTD_compressBound(longest);
  if (napi_create_reference(env, argv[2], 1, &j->outputs) != napi_ok) goto fail;
  return zjob_queue(env, j, pack_execute, "zstdPack");
fail:
  zjob_free(env, j);
  return NULL;
}
