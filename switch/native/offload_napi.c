/*
 * offload_napi: the N-API faces of offload.c that tests and the switch's slow paths call
 * directly: gsoSegment (cut a TCP super-frame into segments, as udpSend does) and groSplit
 * (what a GRO poller does with one received buffer). Scratch memory is this environment's
 * send arena, so both are safe from worker threads.
 */
#define _GNU_SOURCE
#include <string.h>

#include "addon.h"
#include "napi_util.h"
#include "offload.h"
#include "send_arena.h"

/*
 * gsoSegment(dgram, meta, metaOff, maxFrame, prefixLen?) -> Buffer[]: the segments of the TCP
 * super-frame at dgram[prefixLen..] (virtio_net_hdr at meta[metaOff..+10]) as new buffers,
 * each = dgram[0..prefixLen) + one segment (prefixLen 0: plain Ethernet frames). A frame
 * without GSO comes back as one copy (its checksum completed if NEEDS_CSUM). Returns null
 * when the frame cannot be segmented.
 */
napi_value GsoSegment(napi_env env, napi_callback_info info) {
  GET_ARGS(5);
  uint8_t *data, *meta;
  size_t len, mlen;
  int64_t moff, max_frame, plen = 0;
  if (!arg_bytes(env, argv[0], &data, &len, "gsoSegment: dgram")) return NULL;
  if (!arg_bytes(env, argv[1], &meta, &mlen, "gsoSegment: meta")) return NULL;
  if (!arg_int(env, argv[2], 0, mlen >= OFL_VNET_HDR_LEN ? (int64_t)(mlen - OFL_VNET_HDR_LEN) : -1, &moff, "gsoSegment: metaOff")) return NULL;
  if (!arg_int(env, argv[3], 0, 65535, &max_frame, "gsoSegment: maxFrame")) return NULL;
  napi_valuetype t4 = napi_undefined;
  if (argv[4]) napi_typeof(env, argv[4], &t4);
  if (t4 != napi_undefined && !arg_int(env, argv[4], 0, (int64_t)len, &plen, "gsoSegment: prefixLen")) return NULL;
  ofl_vnet_t vh;
  ofl_vnet_get(meta + moff, &vh);
  napi_value arr, nul;
  napi_get_null(env, &nul);
  if (vh.gso_type == OFL_GSO_NONE) {
    napi_value b;
    void *p;
    if (napi_create_buffer_copy(env, len, data, &p, &b) != napi_ok) return NULL;
    if ((vh.flags & OFL_F_NEEDS_CSUM) && ofl_complete_csum((uint8_t *)p + plen, len - (size_t)plen, &vh) < 0) return nul;
    napi_create_array_with_length(env, 1, &arr);
    napi_set_element(env, arr, 0, b);
    return arr;
  }
  send_arena_t *ar = addon_arena(env, "gsoSegment");
  if (!ar) return NULL;
  ofl_seg_t *segs = ar->segs;
  int k = ofl_segment(data, (uint32_t)plen, data + plen, len - (size_t)plen, &vh, (uint32_t)max_frame, ar->hdr, segs, ARENA_SEGS);
  if (k <= 0) return nul;
  napi_create_array_with_length(env, (size_t)k, &arr);
  for (int j = 0; j < k; j++) {
    napi_value b;
    void *p;
    if (napi_create_buffer(env, segs[j].hdr_len + segs[j].payload_len, &p, &b) != napi_ok) return NULL;
    memcpy(p, segs[j].hdr, segs[j].hdr_len);
    memcpy((uint8_t *)p + segs[j].hdr_len, segs[j].payload, segs[j].payload_len);
    napi_set_element(env, arr, (uint32_t)j, b);
  }
  return arr;
}

/*
 * groSplit(buf, len, gsoSize, offs, lens, segs, metas) -> entry count: what the GRO-enabled
 * UDP poller does to each received buffer (exposed for tests): buf[0..len) holds datagrams of
 * gsoSize bytes (the last may be shorter); entries are written to offs/lens/segs and their
 * virtio_net_hdr to metas[10*i..]. buf is modified in place (coalescing).
 */
napi_value GroSplit(napi_env env, napi_callback_info info) {
  GET_ARGS(7);
  uint8_t *buf, *metas;
  size_t blen, noffs, nlens, nsegs, mlen;
  int64_t len, gso;
  uint32_t *offs, *lens, *segs;
  if (!arg_bytes(env, argv[0], &buf, &blen, "groSplit: buf")) return NULL;
  if (!arg_int(env, argv[1], 0, (int64_t)blen, &len, "groSplit: len")) return NULL;
  if (!arg_int(env, argv[2], 0, 65535, &gso, "groSplit: gsoSize")) return NULL;
  if (!arg_u32array(env, argv[3], &offs, &noffs, "groSplit: offs")) return NULL;
  if (!arg_u32array(env, argv[4], &lens, &nlens, "groSplit: lens")) return NULL;
  if (!arg_u32array(env, argv[5], &segs, &nsegs, "groSplit: segs")) return NULL;
  if (!arg_bytes(env, argv[6], &metas, &mlen, "groSplit: metas")) return NULL;
  size_t cap = noffs;
  if (nlens < cap) cap = nlens;
  if (nsegs < cap) cap = nsegs;
  if (mlen / OFL_VNET_HDR_LEN < cap) cap = mlen / OFL_VNET_HDR_LEN;
  if (cap > GRO_SPLIT_MAX) cap = GRO_SPLIT_MAX;
  send_arena_t *ar = addon_arena(env, "groSplit");
  if (!ar) return NULL;
  ofl_entry_t *ents = ar->ents;
  uint32_t dropped = 0;
  int k = ofl_gro_split(buf, (uint32_t)len, (uint32_t)gso, ents, (int)cap, &dropped);
  for (int j = 0; j < k; j++) {
    offs[j] = ents[j].off;
    lens[j] = ents[j].len;
    segs[j] = ents[j].segs;
    ofl_vnet_put(metas + (size_t)j * OFL_VNET_HDR_LEN, &ents[j].vnet);
  }
  napi_value res;
  napi_create_uint32(env, (uint32_t)k, &res);
  return res;
}
