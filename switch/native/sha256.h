/*
 * sha256: one SHA-256 stream for the addon's C files (zstd.c's pack id), from the code of
 * sha256x2.c, its one home (SHA extensions of x86-64; FIPS 180-4 byte for byte, tested against
 * node:crypto by test/unit/sha256x2.test.ts and test/unit/zstd-pack.test.ts).
 *
 * sha256_update and sha256_final run only where sha256_available() (this CPU has the SHA
 * extensions, SSSE3 and SSE4.1); elsewhere they do nothing, and the caller hashes another way.
 * Any thread; no state but the caller's context.
 */
#ifndef VNSNAP_SHA256_H
#define VNSNAP_SHA256_H

#include <stddef.h>
#include <stdint.h>

/* A context: state, bytes so far, the partial block. */
typedef struct {
  uint32_t h[8];
  uint64_t len;
  uint32_t n;
  uint8_t buf[64];
} sha_ctx_t;

int sha256_available(void);
/* c := an empty SHA-256. */
void sha256_init(sha_ctx_t *c);
/* len bytes at p into c. */
void sha256_update(sha_ctx_t *c, const uint8_t *p, size_t len);
/* c's digest into out (big-endian); c starts again empty. */
void sha256_final(sha_ctx_t *c, uint8_t out[32]);

#endif
