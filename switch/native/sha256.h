/*
 * sha256.h: SHA-256 for the addon's own C callers (ram_read.c), not a JS entry point. The SHA
 * extensions' code has one home, sha256x2.c; the portable code (sha256_portable.c) is the
 * fallback where this CPU lacks them. Both are plain functions: no N-API, no state, safe on any
 * thread (the libuv pool's included).
 */
#ifndef VNSNAP_SHA256_H
#define VNSNAP_SHA256_H

#include <stddef.h>
#include <stdint.h>

/* SHA-256's 64 round constants (FIPS 180-4 4.2.2), 16-byte aligned: defined in sha256_portable.c. */
extern const uint32_t vn_sha256_k[64] __attribute__((aligned(16)));
/* 1 when this CPU has the SHA extensions (and SSSE3, SSE4.1) vn_sha256_ni_two uses. */
int vn_sha256_ni_available(void);
/*
 * The SHA-256s of the len bytes at a and the len bytes at b (two messages of one length; b may
 * be NULL: a alone), their rounds interleaved. Only where vn_sha256_ni_available().
 */
void vn_sha256_ni_two(const uint8_t *a, const uint8_t *b, size_t len, uint8_t out_a[32], uint8_t out_b[32]);
/* The SHA-256 of the len bytes at p in portable C (any CPU; several times slower). */
void vn_sha256_portable(const uint8_t *p, size_t len, uint8_t out[32]);

#endif
