/*
 * cdc: the store's content-defined chunker's inner loop (contract: proto/store/store-native.ts;
 * the reference, and the fallback when the addon lacks this entry point, is proto/store/chunker.ts).
 *
 *   cdcCuts(data: Buffer, state: Uint32Array[2], params: Uint32Array[5], out: Uint32Array): number
 *
 * state is [pos, h]: the bytes of the current chunk seen before `data` and the gear hash over
 * them; params is [min, avg, max, maskS, maskL]. The offsets in `data` just past every chunk that
 * closes in it are written to out (the count is returned) and state is left describing the chunk
 * still open at data's end, so the stream may arrive in any pieces.
 *
 * Guarantees: the boundaries are exactly those of chunker.ts's FastCDC (same gear table, same
 * masks, same min/avg/max rules) byte for byte — the store's format — so chunks cut here and
 * chunks cut by the JS chunker deduplicate against each other (test/unit/chunker-native.test.ts
 * compares the two). Synchronous and allocation-free: about a millisecond per MiB on the event loop.
 * out too small for the cuts (it needs data.length / min + 2 entries) is a RangeError before any
 * byte is scanned.
 */
#include <pthread.h>
#include <stdint.h>

#include "addon.h"
#include "napi_util.h"

/* The gear table: splitmix32 from the seed "vnsn" (chunker.ts's GEAR). */
static uint32_t gear[256];
static pthread_once_t gear_once = PTHREAD_ONCE_INIT;

static void gear_init(void) {
  uint32_t s = 0x766e736eu;
  for (int i = 0; i < 256; i++) {
    s += 0x9e3779b9u;
    uint32_t z = s;
    z = (z ^ (z >> 16)) * 0x85ebca6bu;
    z = (z ^ (z >> 13)) * 0xc2b2ae35u;
    gear[i] = z ^ (z >> 16);
  }
}

typedef struct {
  uint32_t min, avg, max, mask_s, mask_l;
} cdc_params_t;

/* Roll h over d[*i..end); 1 with *i just past the byte where (h & mask) == 0, else 0 with *i = end. */
static inline int roll(const uint8_t *d, size_t *i, size_t end, uint32_t mask, uint32_t *h) {
  uint32_t x = *h;
  for (size_t k = *i; k < end; k++) {
    x = (x << 1) + gear[d[k]];
    if ((x & mask) == 0) {
      *i = k + 1;
      *h = x;
      return 1;
    }
  }
  *i = end;
  *h = x;
  return 0;
}

static size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

/* The cuts in d[0..n) (chunker.ts's Chunker.scan() in a loop); *pos and *h carry the open chunk. */
static size_t cdc_cuts(const uint8_t *d, size_t n, uint32_t *pos_io, uint32_t *h_io, const cdc_params_t *p, uint32_t *out) {
  size_t count = 0, i = 0, pos = *pos_io;
  uint32_t h = *h_io;
  while (i < n) {
    if (pos < p->min) {
      size_t skip = min_sz(p->min - pos, n - i);
      i += skip;
      pos += skip;
      if (pos < p->min) break;
    }
    int cut = 0;
    if (pos < p->avg) {
      size_t from = i, end = min_sz(n, i + (p->avg - pos));
      cut = roll(d, &i, end, p->mask_s, &h);
      pos += i - from;
    }
    if (!cut && pos < p->max) {
      size_t from = i, end = min_sz(n, i + (p->max - pos));
      cut = roll(d, &i, end, p->mask_l, &h);
      pos += i - from;
    }
    if (!cut && pos < p->max) break; /* data ran out inside the chunk */
    out[count++] = (uint32_t)i;
    pos = 0;
    h = 0;
  }
  *pos_io = (uint32_t)pos;
  *h_io = h;
  return count;
}

static int arg_u32s(napi_env env, napi_value v, size_t want, uint32_t **data, const char *what) {
  size_t len;
  if (!arg_u32array(env, v, data, &len, what)) return 0;
  if (len < want) {
    throw_range(env, "%s holds %zu entries, %zu needed", what, len, want);
    return 0;
  }
  return 1;
}

napi_value CdcCuts(napi_env env, napi_callback_info info) {
  GET_ARGS(4);
  uint8_t *d;
  size_t n, cap;
  uint32_t *st, *pr, *out;
  if (!arg_bytes(env, argv[0], &d, &n, "cdcCuts: data") || !arg_u32s(env, argv[1], 2, &st, "cdcCuts: state") || !arg_u32s(env, argv[2], 5, &pr, "cdcCuts: params") ||
      !arg_u32array(env, argv[3], &out, &cap, "cdcCuts: out"))
    return NULL;
  cdc_params_t p = {pr[0], pr[1], pr[2], pr[3], pr[4]};
  if (p.min == 0 || p.min > p.avg || p.avg > p.max || st[0] > p.max) {
    throw_range(env, "cdcCuts: bad params %u/%u/%u or state %u", p.min, p.avg, p.max, st[0]);
    return NULL;
  }
  if (n > UINT32_MAX || cap < n / p.min + 2) {
    throw_range(env, "cdcCuts: %zu bytes need an out of %zu entries, got %zu", n, n / p.min + 2, cap);
    return NULL;
  }
  pthread_once(&gear_once, gear_init);
  size_t count = cdc_cuts(d, n, &st[0], &st[1], &p, out);
  napi_value r;
  napi_create_uint32(env, (uint32_t)count, &r);
  return r;
}
