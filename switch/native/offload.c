/* offload: segmentation, coalescing and checksums for the switch's offloads (see offload.h). */
#include "offload.h"

#include <string.h>

#define TCP_FIN 0x01
#define TCP_PSH 0x08
#define TCP_URG 0x20
#define TCP_ACK 0x10
#define TCP_CWR 0x80

static inline uint16_t get16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t get32(const uint8_t *p) { return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3]; }
static inline void put16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}
static inline void put32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

void ofl_vnet_get(const uint8_t *p, ofl_vnet_t *h) {
  h->flags = p[0];
  h->gso_type = p[1];
  memcpy(&h->hdr_len, p + 2, 2);
  memcpy(&h->gso_size, p + 4, 2);
  memcpy(&h->csum_start, p + 6, 2);
  memcpy(&h->csum_offset, p + 8, 2);
}

void ofl_vnet_put(uint8_t *p, const ofl_vnet_t *h) {
  p[0] = h->flags;
  p[1] = h->gso_type;
  memcpy(p + 2, &h->hdr_len, 2);
  memcpy(p + 4, &h->gso_size, 2);
  memcpy(p + 6, &h->csum_start, 2);
  memcpy(p + 8, &h->csum_offset, 2);
}

/*
 * Sum of the buffer's big-endian 16-bit words, kept in 64 bits with end-around carry (8 bytes
 * at a time: 2^16 = 1 modulo 2^16 - 1, so wider words sum to the same folded value). A region
 * appended to a previous one must start at an even offset from the first region's start.
 */
/* acc + v with end-around carry. */
static inline uint64_t add_carry(uint64_t acc, uint64_t v) {
  acc += v;
  return acc + (acc < v);
}

uint64_t ofl_csum_acc(const uint8_t *p, size_t len, uint64_t acc) {
  while (len >= 32) {
    uint64_t v[4];
    memcpy(v, p, 32);
    for (int i = 0; i < 4; i++) acc = add_carry(acc, __builtin_bswap64(v[i]));
    p += 32;
    len -= 32;
  }
  while (len >= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    acc = add_carry(acc, __builtin_bswap64(v));
    p += 8;
    len -= 8;
  }
  if (len >= 4) {
    acc = add_carry(acc, get32(p));
    p += 4;
    len -= 4;
  }
  if (len >= 2) {
    acc = add_carry(acc, get16(p));
    p += 2;
    len -= 2;
  }
  if (len) acc = add_carry(acc, (uint64_t)p[0] << 8);
  return acc;
}

uint16_t ofl_csum_fold(uint64_t acc) {
  acc = (acc & 0xffffffffu) + (acc >> 32);
  acc = (acc & 0xffffffffu) + (acc >> 32);
  acc = (acc & 0xffffu) + (acc >> 16);
  acc = (acc & 0xffffu) + (acc >> 16);
  acc = (acc & 0xffffu) + (acc >> 16);
  return (uint16_t)acc;
}

int ofl_parse(const uint8_t *f, size_t len, ofl_pkt_t *pi) {
  if (len < 14 + 20) return 0;
  const uint8_t *ip = f + 14;
  uint16_t et = get16(f + 12);
  pi->l3 = 14;
  if (et == 0x0800) {
    if ((ip[0] >> 4) != 4) return 0;
    uint32_t ihl = (uint32_t)(ip[0] & 15) * 4;
    uint32_t tot = get16(ip + 2);
    if (ihl < 20 || tot < ihl || 14 + (size_t)tot > len) return 0;
    if ((ip[6] & 0x3f) || ip[7]) return 0; /* MF or a fragment offset */
    pi->v6 = 0;
    pi->proto = ip[9];
    pi->l4 = 14 + ihl;
    pi->ip_end = 14 + tot;
  } else if (et == 0x86dd) {
    if (len < 14 + 40 || (ip[0] >> 4) != 6) return 0;
    uint32_t pl = get16(ip + 4);
    if (14 + 40 + (size_t)pl > len) return 0;
    pi->v6 = 1;
    pi->proto = ip[6];
    pi->l4 = 14 + 40;
    pi->ip_end = 14 + 40 + pl;
  } else {
    return 0;
  }
  pi->thl = 0;
  if (pi->proto == 6) {
    if (pi->l4 + 20 > pi->ip_end) return 0;
    uint32_t thl = (uint32_t)(f[pi->l4 + 12] >> 4) * 4;
    if (thl < 20 || pi->l4 + thl > pi->ip_end) return 0;
    pi->thl = thl;
  } else if (pi->proto == 17) {
    if (pi->l4 + 8 > pi->ip_end) return 0;
  }
  return 1;
}

/* Pseudo-header sum (addresses, protocol, transport length). */
static uint64_t pseudo_acc(const uint8_t *f, const ofl_pkt_t *pi, uint32_t l4len) {
  uint64_t acc = pi->v6 ? ofl_csum_acc(f + 14 + 8, 32, 0) : ofl_csum_acc(f + 14 + 12, 8, 0);
  return acc + pi->proto + l4len;
}

int ofl_complete_csum(uint8_t *f, size_t len, const ofl_vnet_t *h) {
  size_t s = h->csum_start, o = h->csum_offset;
  if (s >= len || s + o + 2 > len) return -1;
  uint16_t c = (uint16_t)~ofl_csum_fold(ofl_csum_acc(f + s, len - s, 0));
  if (o == 6 && c == 0) c = 0xffff; /* UDP: 0 means "no checksum" */
  put16(f + s + o, c);
  return 0;
}

int ofl_segment(const uint8_t *prefix, uint32_t plen, const uint8_t *f, size_t len, const ofl_vnet_t *h, uint32_t max_frame,
                uint8_t *arena, ofl_seg_t *segs, int max_segs) {
  uint8_t gt = h->gso_type & (uint8_t)~OFL_GSO_ECN;
  if (gt != OFL_GSO_TCPV4 && gt != OFL_GSO_TCPV6) return -1;
  ofl_pkt_t pi;
  if (!ofl_parse(f, len, &pi) || pi.proto != 6 || pi.v6 != (gt == OFL_GSO_TCPV6)) return -1;
  uint32_t hdrs = pi.l4 + pi.thl;
  if (plen + hdrs > OFL_SEG_HDR_MAX) return -1;
  uint32_t total = pi.ip_end - hdrs;
  uint32_t mss = h->gso_size;
  if (max_frame && hdrs + mss > max_frame) {
    if (max_frame <= hdrs) return -1;
    mss = max_frame - hdrs;
  }
  if (mss == 0) return -1;
  int n = total == 0 ? 1 : (int)((total + mss - 1) / mss);
  if (n > max_segs) return -2;
  const uint8_t *th0 = f + pi.l4;
  uint32_t seq0 = get32(th0 + 4);
  uint8_t flags0 = th0[13];
  uint16_t id0 = pi.v6 ? 0 : get16(f + 14 + 4);
  uint32_t ihl = pi.l4 - 14;
  uint64_t addr_acc = pi.v6 ? ofl_csum_acc(f + 14 + 8, 32, 0) : ofl_csum_acc(f + 14 + 12, 8, 0);
  for (int i = 0; i < n; i++) {
    uint32_t poff = (uint32_t)i * mss;
    uint32_t pl = total - poff < mss ? total - poff : mss;
    uint8_t *hd = arena + (size_t)i * OFL_SEG_HDR_MAX;
    if (plen) memcpy(hd, prefix, plen);
    uint8_t *g = hd + plen;
    memcpy(g, f, hdrs);
    uint8_t *ip = g + 14;
    if (!pi.v6) {
      put16(ip + 2, (uint16_t)(hdrs - 14 + pl));
      put16(ip + 4, (uint16_t)(id0 + i));
      ip[10] = ip[11] = 0;
      put16(ip + 10, (uint16_t)~ofl_csum_fold(ofl_csum_acc(ip, ihl, 0)));
    } else {
      put16(ip + 4, (uint16_t)(hdrs - pi.l4 + pl));
    }
    uint8_t *th = g + pi.l4;
    put32(th + 4, seq0 + poff);
    uint8_t fl = flags0;
    if (i < n - 1) fl &= (uint8_t)~(TCP_FIN | TCP_PSH);
    if (i > 0) fl &= (uint8_t)~TCP_CWR;
    th[13] = fl;
    th[16] = th[17] = 0;
    uint64_t a = addr_acc + 6 + pi.thl + pl;
    a = ofl_csum_acc(th, pi.thl, a);
    a = ofl_csum_acc(f + hdrs + poff, pl, a);
    put16(th + 16, (uint16_t)~ofl_csum_fold(a));
    segs[i].hdr = hd;
    segs[i].hdr_len = plen + hdrs;
    segs[i].payload = f + hdrs + poff;
    segs[i].payload_len = pl;
  }
  return n;
}

/* One piece of a split super-frame: f's headers for pl payload bytes, the IPv4 id advanced by
 * id_add and the TCP sequence number by seq_add, TCP flags `flags`, and a partial checksum. */
static void put_piece(uint8_t *g, const uint8_t *f, const ofl_pkt_t *pi, uint32_t hdrs, uint32_t pl, uint16_t id_add, uint32_t seq_add, uint8_t flags) {
  memcpy(g, f, hdrs);
  uint8_t *ip = g + 14;
  if (!pi->v6) {
    put16(ip + 2, (uint16_t)(hdrs - 14 + pl));
    put16(ip + 4, (uint16_t)(get16(ip + 4) + id_add));
    ip[10] = ip[11] = 0;
    put16(ip + 10, (uint16_t)~ofl_csum_fold(ofl_csum_acc(ip, pi->l4 - 14, 0)));
  } else {
    put16(ip + 4, (uint16_t)(hdrs - pi->l4 + pl));
  }
  uint8_t *th = g + pi->l4;
  put32(th + 4, get32(th + 4) + seq_add);
  th[13] = flags;
  put16(th + 16, ofl_csum_fold(pseudo_acc(g, pi, pi->thl + pl)));
}

int ofl_split_tail(const uint8_t *f, size_t len, const ofl_vnet_t *h, uint8_t *body_hdr, uint8_t *tail_hdr, uint32_t *body_len, uint32_t *tail_len, ofl_vnet_t *tail) {
  uint8_t gt = h->gso_type & (uint8_t)~OFL_GSO_ECN;
  if ((gt != OFL_GSO_TCPV4 && gt != OFL_GSO_TCPV6) || !(h->flags & OFL_F_NEEDS_CSUM) || h->gso_size == 0) return -1;
  ofl_pkt_t pi;
  if (!ofl_parse(f, len, &pi) || pi.proto != 6 || pi.v6 != (gt == OFL_GSO_TCPV6)) return -1;
  uint32_t hdrs = pi.l4 + pi.thl;
  if (hdrs > OFL_SEG_HDR_MAX || h->csum_start != pi.l4 || h->csum_offset != 16) return -1;
  uint8_t flags = f[pi.l4 + 13];
  uint32_t total = pi.ip_end - hdrs, mss = h->gso_size;
  if (!(flags & (TCP_FIN | TCP_PSH | TCP_URG)) || total <= mss) return 0;
  uint32_t n = (total + mss - 1) / mss, bl = (n - 1) * mss;
  put_piece(body_hdr, f, &pi, hdrs, bl, 0, 0, (uint8_t)(flags & ~(TCP_FIN | TCP_PSH)));
  put_piece(tail_hdr, f, &pi, hdrs, total - bl, (uint16_t)(n - 1), bl, (uint8_t)(flags & ~TCP_CWR));
  *body_len = bl;
  *tail_len = total - bl;
  memset(tail, 0, sizeof *tail);
  tail->flags = OFL_F_NEEDS_CSUM;
  tail->csum_start = (uint16_t)pi.l4;
  tail->csum_offset = 16;
  return (int)hdrs;
}

int ofl_demote_single(const uint8_t *f, size_t len, ofl_vnet_t *h) {
  uint8_t gt = h->gso_type & (uint8_t)~OFL_GSO_ECN;
  if (gt != OFL_GSO_TCPV4 && gt != OFL_GSO_TCPV6) return 0;
  ofl_pkt_t pi;
  if (!ofl_parse(f, len, &pi) || pi.proto != 6) return 0;
  return ofl_demote_payload(h, pi.ip_end - (pi.l4 + pi.thl));
}

int ofl_demote_payload(ofl_vnet_t *h, uint32_t payload) {
  if (h->gso_size == 0 || payload > h->gso_size) return 0;
  h->gso_type = OFL_GSO_NONE;
  h->gso_size = 0;
  h->hdr_len = 0;
  return 1;
}

/* ---------------------------------------------------------------------------------------- */
/* receive side                                                                             */

typedef struct {
  uint8_t *head; /* entry start (tunnel header) */
  uint32_t gl;   /* tunnel header length */
  ofl_pkt_t pi;
  uint32_t len; /* entry bytes so far */
  uint32_t next_seq, gso, last_pl;
  int psh;
  int nseg;
} run_t;

/* A Geneve data datagram carrying a TCP segment with payload, only ACK (+PSH), valid IPv4
 * header and TCP checksums: a coalescing candidate. */
static int tcp_candidate(const uint8_t *d, uint32_t dlen, uint32_t *gl_out, ofl_pkt_t *pi) {
  if (dlen < 8 || (d[0] >> 6) != 0 || (d[1] & 0x80) || get16(d + 2) != 0x6558) return 0;
  uint32_t gl = 8 + (uint32_t)(d[0] & 0x3f) * 4;
  if (gl >= dlen) return 0;
  const uint8_t *f = d + gl;
  uint32_t fl = dlen - gl;
  if (!ofl_parse(f, fl, pi) || pi->proto != 6 || pi->ip_end != fl) return 0;
  if (!pi->v6 && pi->l4 != 14 + 20) return 0; /* IPv4 options: not coalesced */
  uint8_t flags = f[pi->l4 + 13];
  if (flags != TCP_ACK && flags != (TCP_ACK | TCP_PSH)) return 0;
  if (fl == pi->l4 + pi->thl) return 0; /* no payload */
  if (!pi->v6 && ofl_csum_fold(ofl_csum_acc(f + 14, 20, 0)) != 0xffff) return 0;
  uint64_t a = pseudo_acc(f, pi, fl - pi->l4);
  if (ofl_csum_fold(ofl_csum_acc(f + pi->l4, fl - pi->l4, a)) != 0xffff) return 0;
  *gl_out = gl;
  return 1;
}

/* May datagram d (a candidate with headers gl/pi) be appended to run r? */
static int can_append(const run_t *r, const uint8_t *d, uint32_t dlen, uint32_t gl, const ofl_pkt_t *pi) {
  if (r->psh || r->last_pl != r->gso) return 0;
  if (gl != r->gl || pi->v6 != r->pi.v6 || pi->l4 != r->pi.l4 || pi->thl != r->pi.thl) return 0;
  if (memcmp(d, r->head, gl) != 0) return 0; /* VNI, epoch, generation, options */
  const uint8_t *f = d + gl, *h = r->head + r->gl;
  if (memcmp(f, h, 14) != 0) return 0;
  const uint8_t *ip = f + 14, *hip = h + 14;
  if (!pi->v6) {
    if (ip[1] != hip[1] || (ip[6] & 0xe0) != (hip[6] & 0xe0) || ip[8] != hip[8] || memcmp(ip + 12, hip + 12, 8) != 0) return 0;
  } else {
    if (memcmp(ip, hip, 4) != 0 || ip[7] != hip[7] || memcmp(ip + 8, hip + 8, 32) != 0) return 0;
  }
  const uint8_t *th = f + pi->l4, *hth = h + r->pi.l4;
  if (memcmp(th, hth, 4) != 0 || memcmp(th + 8, hth + 8, 4) != 0) return 0; /* ports, ack */
  if (memcmp(th + 14, hth + 14, 2) != 0 || memcmp(th + 18, hth + 18, 2) != 0) return 0; /* window, urgent */
  if (pi->thl > 20 && memcmp(th + 20, hth + 20, pi->thl - 20) != 0) return 0; /* options */
  if (get32(th + 4) != r->next_seq) return 0;
  uint32_t pl = dlen - gl - pi->l4 - pi->thl;
  if (pl > r->gso) return 0;
  uint32_t iplen = r->len - r->gl - 14 + pl; /* IPv4 total length */
  if (pi->v6) iplen -= 40;                  /* IPv6 payload length */
  if (iplen > 65535) return 0;
  return 1;
}

static void finish_run(run_t *r, ofl_entry_t *e) {
  e->len = r->len;
  e->segs = (uint32_t)r->nseg;
  memset(&e->vnet, 0, sizeof e->vnet);
  if (r->nseg < 2) return;
  uint8_t *f = r->head + r->gl;
  uint32_t flen = r->len - r->gl;
  uint8_t *ip = f + 14;
  if (!r->pi.v6) {
    put16(ip + 2, (uint16_t)(flen - 14));
    ip[10] = ip[11] = 0;
    put16(ip + 10, (uint16_t)~ofl_csum_fold(ofl_csum_acc(ip, 20, 0)));
  } else {
    put16(ip + 4, (uint16_t)(flen - 14 - 40));
  }
  uint8_t *th = f + r->pi.l4;
  if (r->psh) th[13] |= TCP_PSH;
  /* NEEDS_CSUM: the field holds the (uncomplemented) pseudo-header sum. */
  put16(th + 16, ofl_csum_fold(pseudo_acc(f, &r->pi, flen - r->pi.l4)));
  e->vnet.flags = OFL_F_NEEDS_CSUM;
  e->vnet.gso_type = r->pi.v6 ? OFL_GSO_TCPV6 : OFL_GSO_TCPV4;
  e->vnet.hdr_len = (uint16_t)(r->pi.l4 + r->pi.thl);
  e->vnet.gso_size = (uint16_t)r->gso;
  e->vnet.csum_start = (uint16_t)r->pi.l4;
  e->vnet.csum_offset = 16;
}

int ofl_gro_split(uint8_t *buf, uint32_t len, uint32_t gso, ofl_entry_t *out, int max_entries, uint32_t *dropped) {
  if (gso == 0 || gso > len) gso = len;
  int n = 0;
  run_t r;
  int have = 0, active = 0;
  for (uint32_t pos = 0; pos < len; pos += gso) {
    uint32_t dlen = len - pos < gso ? len - pos : gso;
    uint8_t *d = buf + pos;
    uint32_t gl = 0;
    ofl_pkt_t pi;
    int cand = tcp_candidate(d, dlen, &gl, &pi);
    if (have && active && cand && can_append(&r, d, dlen, gl, &pi)) {
      uint32_t hdrs = pi.l4 + pi.thl;
      uint32_t pl = dlen - gl - hdrs;
      if (d[gl + pi.l4 + 13] & TCP_PSH) r.psh = 1; /* before the move: it may overwrite d's headers */
      memmove(r.head + r.len, d + gl + hdrs, pl);
      r.len += pl;
      r.next_seq += pl;
      r.last_pl = pl;
      r.nseg++;
      continue;
    }
    if (have) finish_run(&r, &out[n - 1]);
    have = 0;
    if (n == max_entries) {
      (*dropped)++;
      continue;
    }
    out[n].off = pos;
    n++;
    have = 1;
    memset(&r, 0, sizeof r);
    r.head = d;
    r.len = dlen;
    r.nseg = 1;
    active = cand;
    if (cand) {
      r.gl = gl;
      r.pi = pi;
      uint32_t pl = dlen - gl - pi.l4 - pi.thl;
      r.gso = pl;
      r.last_pl = pl;
      r.next_seq = get32(d + gl + pi.l4 + 4) + pl;
      r.psh = (d[gl + pi.l4 + 13] & TCP_PSH) != 0;
    }
  }
  if (have) finish_run(&r, &out[n - 1]);
  return n;
}
