/*
 * sha256.h: SHA-256 for the addon's own C callers (ram_read.c's blocks, zstd.c's pack id), not a
 * JS entry point. The SHA extensions' code has one home, sha256x2.c (FIPS 180-4 byte for byte,
 * tested against node:crypto by test/unit/sha256x2.test.ts, ram-read.test.ts and
 * zstd-pack.test.ts); the portable code (sha256_portable.c) is the fallback where this CPU lacks
 * them. Plain functions: no N-API, no state but the caller's, safe on any thread (the libuv
 * pool's included).
 */
#ifndef VNSNAP_SHA256_H
#define VNSNAP_SHA256_H

#include <stddef.h>
#include <stdint.h>

/* SHA-256's 64 round constants (FIPS 180-4 4.2.2), 16-byte aligned: defined in sha256_portable.c. */
extern const uint32_t vn_sha256_k[64] __attribute__((aligned(16)));
/* 1 when this CPU has the SHA extensions (and SSSE3, SSE4.1) vn_sha256_ni_two and sha256_update use. */
int vn_sha256_ni_available(void);
/*
 * The SHA-256s of the len bytes at a and the len bytes at b (two messages of one length; b may
 * be NULL: a alone), their rounds interleaved. Only where vn_sha256_ni_available().
 */
void vn_sha256_ni_two(const uint8_t *a, const uint8_t *b, size_t len, uint8_t out_a[32], uint8_t out_b[32]);
/* The SHA-256 of the len bytes at p in portable C (any CPU; several times slower). */
void vn_sha256_portable(const uint8_t *p, size_t len, uint8_t out[32]);

/* One stream in pieces (zstd.c's pack id): a context is state, bytes so far, the partial block. */
typedef struct {
  uint32_t h[8];
  uint64_t len;
  uint32_t n;
  uint8_t buf[64];
} sha_ctx_t;

/* The stream functions below run only where vn_sha256_ni_available() and do nothing elsewhere
 * (the caller hashes another way). */
/* c := an empty SHA-256. */
void vn_sha256_init(sha_ctx_t *c);
/* len bytes at p into c. */
void vn_sha256_update(sha_ctx_t *c, const uint8_t *p, size_t len);
/* c's digest into out (big-endian); c starts again empty. */
void vn_sha256_final(sha_ctx_t *c, uint8_t out[32]);

#endif
