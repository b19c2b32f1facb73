/*
 * offload: the per-byte work behind the switch's TAP/UDP offloads (no N-API here; the
 * wrappers live in offload_napi.c).
 *
 * - A TAP opened with IFF_VNET_HDR + TUNSETOFFLOAD(CSUM|TSO4|TSO6) prefixes every frame with a
 *   10-byte struct virtio_net_hdr (native byte order) and may hand over TCP super-frames of up
 *   to 64 KiB (gso_type TCPV4/TCPV6, gso_size = MSS) with a partial checksum
 *   (VIRTIO_NET_HDR_F_NEEDS_CSUM: the field holds the pseudo-header sum).
 * - ofl_segment() cuts such a super-frame into MSS-sized TCP segments, each with its own
 *   IPv4/IPv6 and TCP header (IP length/id/checksum, TCP seq/flags/checksum) behind a
 *   caller-given prefix (the Geneve header); payloads are referenced, not copied.
 * - ofl_gro_split() takes one UDP_GRO buffer (datagrams of `gso` bytes, the last maybe shorter)
 *   and turns it into entries: runs of consecutive datagrams that carry the same Geneve header
 *   and consecutive segments of one TCP flow (valid checksums, only ACK/PSH flags) are
 *   coalesced in place into one super-frame with a virtio_net_hdr for a vnet_hdr TAP;
 *   everything else stays one datagram per entry.
 */
#ifndef VNSNAP_OFFLOAD_H
#define VNSNAP_OFFLOAD_H

#include <stddef.h>
#include <stdint.h>

#define OFL_VNET_HDR_LEN 10
#define OFL_F_NEEDS_CSUM 1
#define OFL_F_DATA_VALID 2
#define OFL_GSO_NONE 0
#define OFL_GSO_TCPV4 1
#define OFL_GSO_UDP 3
#define OFL_GSO_TCPV6 4
#define OFL_GSO_UDP_L4 5
#define OFL_GSO_ECN 0x80

/* struct virtio_net_hdr, decoded (native byte order on the wire of a legacy vnet_hdr TAP). */
typedef struct {
  uint8_t flags;
  uint8_t gso_type;
  uint16_t hdr_len;
  uint16_t gso_size;
  uint16_t csum_start;
  uint16_t csum_offset;
} ofl_vnet_t;

void ofl_vnet_get(const uint8_t *p, ofl_vnet_t *h);
void ofl_vnet_put(uint8_t *p, const ofl_vnet_t *h);

/* One's-complement arithmetic. */
uint64_t ofl_csum_acc(const uint8_t *p, size_t len, uint64_t acc);
uint16_t ofl_csum_fold(uint64_t acc);

/* Parsed Ethernet + IP + TCP/UDP headers of an untagged frame. */
typedef struct {
  uint32_t l3;    /* 14 */
  uint32_t l4;    /* start of the transport header */
  uint32_t thl;   /* TCP header length (0 if not TCP) */
  uint32_t ip_end; /* end of the IP datagram per its length field (<= frame length) */
  uint8_t v6;
  uint8_t proto;
} ofl_pkt_t;

/* Returns 1 when f[0..len) is an untagged IPv4 (no fragment) / IPv6 (no extension header)
 * frame whose headers fit; fills pi. */
int ofl_parse(const uint8_t *f, size_t len, ofl_pkt_t *pi);

/*
 * Complete a partial checksum in place (VIRTIO_NET_HDR_F_NEEDS_CSUM, no GSO): the field at
 * csum_start + csum_offset holds the pseudo-header sum. Returns 0, or -1 if out of bounds.
 */
int ofl_complete_csum(uint8_t *f, size_t len, const ofl_vnet_t *h);

/* A segment produced by ofl_segment: hdr (prefix + headers, in the caller's arena) + payload. */
typedef struct {
  uint8_t *hdr;
  uint32_t hdr_len;
  const uint8_t *payload;
  uint32_t payload_len;
} ofl_seg_t;

#define OFL_SEG_HDR_MAX 512

/*
 * Segment the super-frame f[0..len) described by h (gso TCPV4/TCPV6) into TCP segments of at
 * most min(gso_size, max_frame - headers) payload bytes. Each segment's header = prefix[0..plen)
 * + its own Ethernet/IP/TCP headers, written to arena + i * OFL_SEG_HDR_MAX (arena holds
 * max_segs slots). Returns the number of segments, or -1 if the frame is not a segmentable TCP
 * super-frame, or -2 if it needs more than max_segs segments. f is not modified.
 */
int ofl_segment(const uint8_t *prefix, uint32_t plen, const uint8_t *f, size_t len, const ofl_vnet_t *h, uint32_t max_frame,
                uint8_t *arena, ofl_seg_t *segs, int max_segs);

/*
 * Split the TCP super-frame f[0..len) described by h (TCPV4/TCPV6, NEEDS_CSUM) whose TCP flags
 * include FIN, PSH or URG into a super-frame of its first n-1 segments and its last segment,
 * cut as the kernel's segmentation cuts them (FIN/PSH only on the last, CWR only on the first,
 * IPv4 ids and sequence numbers advanced), so that GRO downstream coalesces the first part
 * without a flush-flagged segment overtaking it. Writes both headers (the returned number of
 * bytes each, <= OFL_SEG_HDR_MAX, with partial checksums); the payloads stay in f: the first
 * part's is f[hdrs, hdrs + *body_len), the last segment's the *tail_len bytes after it. The
 * first part keeps h as its virtio_net_hdr (of two segments, the first part is one: write it
 * with an ordinary header, ofl_demote_single); *tail receives the last segment's (NEEDS_CSUM, no
 * GSO). Returns the header length (> 0), 0 when nothing needs splitting (one segment, or none
 * of those flags), or -1 when f is not a TCP super-frame this can cut.
 */
int ofl_split_tail(const uint8_t *f, size_t len, const ofl_vnet_t *h, uint8_t *body_hdr, uint8_t *tail_hdr, uint32_t *body_len, uint32_t *tail_len, ofl_vnet_t *tail);

/*
 * A GSO header (TCPV4/TCPV6) on the TCP frame f[0..len) whose payload is at most one segment
 * (<= gso_size) is made an ordinary header in place: gso_type NONE, gso_size and hdr_len 0,
 * flags and csum_start/csum_offset kept (a partial checksum stays partial). A packet socket
 * refuses such a "super-frame" of one segment (sendmsg fails with ENOMEM on this kernel) where
 * it accepts the same frame with an ordinary header. Returns 1 when h was changed, else 0.
 */
int ofl_demote_single(const uint8_t *f, size_t len, ofl_vnet_t *h);

/* The same rule when the TCP payload length is already known (a split's first part): 1 when h
 * was made an ordinary header. */
int ofl_demote_payload(ofl_vnet_t *h, uint32_t payload);

/* An entry produced by ofl_gro_split. */
typedef struct {
  uint32_t off;  /* from the start of the buffer */
  uint32_t len;
  uint32_t segs; /* datagrams it stands for */
  ofl_vnet_t vnet; /* gso_type NONE unless coalesced */
} ofl_entry_t;

/*
 * Split buf[0..len) (UDP_GRO: datagrams of gso bytes each, the last maybe shorter; gso == 0 or
 * >= len: one datagram) into entries, coalescing in place as described above. Each datagram is
 * `prefix` bytes of tunnel header (8 + 4 * (buf[0] & 0x3f) for Geneve) then an Ethernet frame.
 * Returns the number of entries written (at most max_entries; datagrams beyond are dropped and
 * counted in *dropped).
 */
int ofl_gro_split(uint8_t *buf, uint32_t len, uint32_t gso, ofl_entry_t *out, int max_entries, uint32_t *dropped);

#endif
