/*
 * vnsnap's in-kernel data path for VM NICs (`nic: 'tap-bpf'`, docs/nic-offloads.md "The
 * in-kernel data path"). Why it exists: a VM's TSO super-frames then cross the host in the
 * kernel, whole, from QEMU's TAP to the VNI's VXLAN device (an ordinary one: one per VNI, Group
 * Based Policy, no learning, GRO off; agent/bpf-dp/rx-side.ts) and from the far host's VXLAN
 * device to the receiving QEMU's TAP, never copied to user space; the switch stays the control
 * plane (it fills the maps and the devices' FDB) and handles what the rules below do not decide
 * here (punted to it). Ordinary devices, not one external (collect-metadata) device: an external
 * device allocates a metadata dst per received packet, freed through a hurried RCU callback, whose
 * grace periods cost latency-bound guests their throughput (docs/nic-offloads.md).
 *
 * Programs (tc clsact, direct action), compiled at install (switch/bpf/build.sh), loaded and
 * pinned per agent under /sys/fs/bpf/<prefix>/ (switch/bpf-dp/loader.ts):
 *   vn_tx  on a VM TAP's ingress (what QEMU sends). Port unknown: TC_ACT_OK (nothing of ours).
 *          Fast path off, group/broadcast destination, FDB miss → punted whole to the port's
 *          own device (`punt_ifindex`, the switch reads it as this port; with none, TC_ACT_OK:
 *          whatever is behind the TAP in the stack takes it). FDB hit, remote, the VNI's device
 *          named in vn_vxdevs: GBP = the port's epoch colour in skb->mark (what an ordinary
 *          device sends as GBP), counted per (VNI, peer, epoch, tx) by the datagrams it becomes
 *          (segments()), redirected to the VNI's device, whose own FDB sends it to that peer (the
 *          agent writes the kernel FDB entry before vn_fdb's, switch/bpf-dp/fdb-mirror.ts); no
 *          device for the VNI: punted. FDB hit, local port of the same epoch and generation:
 *          redirected to that TAP; else punted.
 *          The frame's GBP: the colour in the policy ID, the generation (mod 4) in the D and A bits.
 *   vn_rx  on each VNI device's ingress (decapsulated). The VNI, the GBP and the sending peer are
 *          read from the outer IPv4/UDP/VXLAN headers still in the skb's head (an ordinary device
 *          keeps no tunnel metadata). A sender that is no peer of the VNE (vn_peers) is punted
 *          UNKNOWN (the switch drops and counts it: unknownPeer). FDB (VNI, dst MAC) names
 *          a local port whose fast path is on, whose generation (mod 4) is the frame's and whose
 *          epoch colour equals the frame's: counted
 *          per (VNI, peer, epoch, rx) by the datagrams GRO merged into it, redirected to the TAP. Anything else is
 *          punted to the switch's punt device with a 16-byte header (struct vn_punt: magic,
 *          VNI, colour, reason, peer) in front of the Ethernet frame: colour < port epoch is
 *          LATE (the switch delivers and records it), colour > port epoch EARLY (the switch
 *          holds it until the port's cut), no local port UNKNOWN (the switch's own rules), and of
 *          another generation UNKNOWN too; the header's reason carries the frame's generation
 *          (mod 4) in its high byte, and the switch drops a frame of another generation.
 *   vn_rx_test  the rules of vn_rx with the tunnel metadata taken from skb->cb[] instead of the
 *          outer headers (cb[0] VNI, cb[1] GBP, cb[2] peer): what BPF_PROG_TEST_RUN can drive.
 *
 * Built for the A/B bench only (test/bench/vm-net-kernel.ts), the same maps' layout:
 * -DVN_FIXED_TUNNEL=<VNI> ('bpf-fixed'): one ordinary device with a fixed VNI and remote (vn_cfg's
 * vxlan_ifindex), vn_rx takes the GBP from skb->mark, the VNI from the build and counts under peer
 * 0. -DVN_EXTERNAL_TUNNEL ('bpf-external' and the split variants): the earlier product path, one
 * external device (vn_cfg's vxlan_ifindex) for every VNI and peer, vn_tx setting the tunnel key
 * and GBP option, vn_rx reading them; kept so the two receive sides compare in one session.
 *
 * Guarantees: no frame is dropped here (every path is a redirect or TC_ACT_OK; a helper that
 * fails punts the frame and counts ST_ERROR); a frame the kernel carries is counted exactly once
 * per side in `vn_counts`, under its VNI (so two VNEs between the same two hosts have their own
 * counts, as their markers need); the colour carried is the low 16 bits of the port's epoch (neighbouring
 * VMs' epochs differ by at most one during a snapshot, so a signed 16-bit difference orders them
 * exactly).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define VN_PUNT_MAGIC 0x564e5350u /* "VNSP" */
#define VN_FAST 1u                /* port flag: the kernel may carry its frames */
#define VN_GEN_SHIFT 8            /* port flags bits 8-9: the VNE's generation, modulo 4 */
#define GBP_DONT_LEARN (1u << 22) /* the kernel's VXLAN_GBP_DONT_LEARN: GBP's D bit, generation bit 0 */
#define GBP_POLICY_APPLIED (1u << 19) /* VXLAN_GBP_POLICY_APPLIED: GBP's A bit, generation bit 1 */

enum vn_reason { VN_UNKNOWN = 0, VN_LATE = 1, VN_EARLY = 2, VN_ERROR = 3 };
enum vn_stat { ST_TX_REMOTE, ST_TX_LOCAL, ST_TX_PUNT, ST_RX_FAST, ST_RX_PUNT, ST_ERROR, ST_N };

struct vn_port { __u32 vni; __u32 epoch; __u32 punt_ifindex; __u32 flags; };
struct vn_fdb_key { __u32 vni; __u8 mac[6]; __u8 pad[2]; };
struct vn_fdb_val { __u32 ifindex; __u32 peer; }; /* ifindex != 0: local port; else peer (IPv4, host order) */
struct vn_count_key { __u32 vni; __u32 peer; __u32 epoch; __u32 dir; }; /* dir 0 sent, 1 received */
struct vn_cfg { __u32 vxlan_ifindex; __u32 punt_ifindex; };
struct vn_punt { __u32 magic; __u32 vni; __u16 colour; __u16 reason; __u32 peer; }; /* network order */
struct vxlan_gbp { __u32 gbp; };

struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32); __type(value, struct vn_cfg); } vn_cfg SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 1024); __type(key, __u32); __type(value, struct vn_port); } vn_ports SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 65536); __type(key, struct vn_fdb_key); __type(value, struct vn_fdb_val); } vn_fdb SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 16384); __type(key, struct vn_count_key); __type(value, __u64); } vn_counts SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, ST_N); __type(key, __u32); __type(value, __u64); } vn_stats SEC(".maps");
/* (VNI, peer) present: that host is a peer of that VNE (the switch's configuration); vn_rx carries nothing from any other address. */
struct vn_peer_key { __u32 vni; __u32 peer; };
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 16384); __type(key, struct vn_peer_key); __type(value, __u32); } vn_peers SEC(".maps");
/* VNI -> the ifindex of that VNI's ordinary VXLAN device (agent/bpf-dp/rx-side.ts): where vn_tx sends its frames to peers. */
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 4096); __type(key, __u32); __type(value, __u32); } vn_vxdevs SEC(".maps");

/*
 * The kernel's sk_buff, only the two fields vn_rx reads (CO-RE: relocated against the running
 * kernel's BTF at load), and the kfunc that gives a tc program its skb as the kernel's.
 */
struct sk_buff { unsigned char *head; __u16 mac_header; } __attribute__((preserve_access_index));
extern void *bpf_cast_to_kern_ctx(void *obj) __ksym;

/* The outer headers an ordinary VXLAN device leaves in the skb's head in front of the inner frame. */
struct vn_outer {
  __u8 ver_ihl, tos; __u16 tot_len, id, frag; __u8 ttl, protocol; __u16 check; __u32 saddr, daddr; /* IPv4, no options */
  __u16 sport, dport, ulen, ucheck;                                                                  /* UDP */
  __u8 vx_flags, gbp_flags; __u16 policy; __u8 vni[3], vx_rsvd;                                      /* VXLAN (GBP) */
} __attribute__((packed));
#define VXLAN_HF_VNI 0x08 /* VXLAN flags: I (the VNI is valid) */
#define VXLAN_HF_GBP 0x80 /* VXLAN flags: G (Group Based Policy extension) */
#define VXLAN_GBP_D 0x40  /* GBP flags: D (don't learn) */
#define VXLAN_GBP_A 0x08  /* GBP flags: A (policy applied) */

/*
 * The VNE generation travels beside the colour in GBP's D and A flag bits (the policy ID's 16
 * bits are the colour): two bits, so generations are told apart modulo 4 — a restore in place
 * moves a VNE one generation on, and frames of the previous one still in flight are then refused.
 */
static __always_inline __u32 port_gen(const struct vn_port *p) { return (p->flags >> VN_GEN_SHIFT) & 3; }
static __always_inline __u32 gbp_gen(__u32 gbp) { return ((gbp & GBP_DONT_LEARN) ? 1 : 0) | ((gbp & GBP_POLICY_APPLIED) ? 2 : 0); }
static __always_inline __u32 gen_gbp(__u32 gen) { return ((gen & 1) ? GBP_DONT_LEARN : 0) | ((gen & 2) ? GBP_POLICY_APPLIED : 0); }

static __always_inline void stat(__u32 i) {
  __u64 *v = bpf_map_lookup_elem(&vn_stats, &i);
  if (v) __sync_fetch_and_add(v, 1);
}

/*
 * The datagrams a frame is or becomes on the wire: 1, or a super-frame's segments. A GRO-built
 * skb has gso_segs; one built from a virtio_net_hdr (QEMU's TAP) has gso_size but gso_segs 0
 * until its transmit computes it, so it is computed here the same way: the payload after the
 * Ethernet, IP and TCP/UDP headers, in gso_size pieces.
 */
static __always_inline __u64 segments(struct __sk_buff *skb) {
  if (skb->gso_segs > 1) return skb->gso_segs;
  __u32 mss = skb->gso_size;
  if (!mss) return 1;
  __u32 off = ETH_HLEN, l4 = 0;
  __u8 b[2];
  if (skb->protocol == bpf_htons(ETH_P_IP)) {
    if (bpf_skb_load_bytes(skb, off, b, 1) < 0) return 1;
    if (bpf_skb_load_bytes(skb, off + 9, &b[1], 1) < 0) return 1;
    l4 = b[1];
    off += (b[0] & 0x0f) * 4;
  } else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
    if (bpf_skb_load_bytes(skb, off + 6, &b[1], 1) < 0) return 1;
    l4 = b[1];
    off += 40;
  } else {
    return 1;
  }
  if (l4 == 6) {
    if (bpf_skb_load_bytes(skb, off + 12, b, 1) < 0) return 1;
    off += (b[0] >> 4) * 4;
  } else {
    off += 8;
  }
  if (skb->len <= off) return 1;
  __u32 n = (skb->len - off + mss - 1) / mss;
  return n > 1 ? n : 1;
}

static __always_inline void count(__u32 vni, __u32 peer, __u32 epoch, __u32 dir, struct __sk_buff *skb) {
  struct vn_count_key k = { .vni = vni, .peer = peer, .epoch = epoch, .dir = dir };
  __u64 n = segments(skb);
  __u64 *v = bpf_map_lookup_elem(&vn_counts, &k);
  if (v) { __sync_fetch_and_add(v, n); return; }
  if (bpf_map_update_elem(&vn_counts, &k, &n, BPF_NOEXIST) == 0) return;
  v = bpf_map_lookup_elem(&vn_counts, &k); /* another CPU made it first */
  if (v) __sync_fetch_and_add(v, n); else stat(ST_ERROR);
}

/* The destination MAC, or -1 when the frame is shorter than an Ethernet header. */
static __always_inline int dst_mac(struct __sk_buff *skb, struct vn_fdb_key *k) {
  return bpf_skb_load_bytes(skb, 0, k->mac, 6);
}

static __always_inline int punt_port(const struct vn_port *p) {
  stat(ST_TX_PUNT);
  return p->punt_ifindex ? bpf_redirect(p->punt_ifindex, BPF_F_INGRESS) : TC_ACT_OK;
}

SEC("tc")
int vn_tx(struct __sk_buff *skb) {
  __u32 ifi = skb->ingress_ifindex;
  struct vn_port *p = bpf_map_lookup_elem(&vn_ports, &ifi);
  if (!p) return TC_ACT_OK;
  struct vn_fdb_key k = { .vni = p->vni };
  if (!(p->flags & VN_FAST) || dst_mac(skb, &k) < 0 || (k.mac[0] & 1)) return punt_port(p);
  struct vn_fdb_val *d = bpf_map_lookup_elem(&vn_fdb, &k);
  if (!d) return punt_port(p);
  if (d->ifindex) {
    __u32 to = d->ifindex;
    struct vn_port *q = bpf_map_lookup_elem(&vn_ports, &to);
    if (!q || !(q->flags & VN_FAST) || q->epoch != p->epoch || port_gen(q) != port_gen(p)) return punt_port(p);
    stat(ST_TX_LOCAL);
    return bpf_redirect(to, 0);
  }
  __u32 zero = 0;
  struct vn_cfg *c = bpf_map_lookup_elem(&vn_cfg, &zero);
  struct vxlan_gbp md = { .gbp = (p->epoch & 0xffff) | gen_gbp(port_gen(p)) };
#ifdef VN_FIXED_TUNNEL
  if (!c) {
    stat(ST_ERROR);
    return punt_port(p);
  }
  __u32 out = c->vxlan_ifindex;
#elif defined(VN_EXTERNAL_TUNNEL)
  struct bpf_tunnel_key key = { .tunnel_id = p->vni, .remote_ipv4 = d->peer, .tunnel_ttl = 64 };
  if (!c || bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0 || bpf_skb_set_tunnel_opt(skb, &md, sizeof(md)) < 0) {
    stat(ST_ERROR);
    return punt_port(p);
  }
  __u32 out = c->vxlan_ifindex;
#else
  /* the VNI's ordinary device sends to the peer its FDB names (mirrored before vn_fdb's entry), with skb->mark as GBP */
  __u32 vni = p->vni;
  __u32 *dev = bpf_map_lookup_elem(&vn_vxdevs, &vni);
  if (!dev) return punt_port(p);
  __u32 out = *dev;
  (void)c;
#endif
#ifndef VN_EXTERNAL_TUNNEL
  skb->mark = md.gbp; /* an ordinary device sends skb->mark as the GBP */
#endif
  count(p->vni, d->peer, p->epoch, 0, skb);
  stat(ST_TX_REMOTE);
  return bpf_redirect(out, 0);
}

/* Hand the frame to the switch's punt device behind a struct vn_punt. */
static __always_inline int punt_rx(struct __sk_buff *skb, __u32 vni, __u32 gbp, __u32 peer, __u16 reason) {
  __u32 zero = 0;
  struct vn_cfg *c = bpf_map_lookup_elem(&vn_cfg, &zero);
  struct vn_punt h = { .magic = bpf_htonl(VN_PUNT_MAGIC), .vni = bpf_htonl(vni), .colour = bpf_htons(gbp & 0xffff), .reason = bpf_htons(reason | (gbp_gen(gbp) << 8)), .peer = bpf_htonl(peer) };
  stat(ST_RX_PUNT);
  if (!c || bpf_skb_change_head(skb, sizeof(h), 0) < 0 || bpf_skb_store_bytes(skb, 0, &h, sizeof(h), 0) < 0) {
    stat(ST_ERROR);
    return TC_ACT_OK; /* the frame goes on up the VXLAN device, where nothing takes it */
  }
  return bpf_redirect(c->punt_ifindex, BPF_F_INGRESS);
}

static __always_inline int rx_rules(struct __sk_buff *skb, __u32 vni, __u32 gbp, __u32 peer) {
  struct vn_fdb_key k = { .vni = vni };
  if (dst_mac(skb, &k) < 0 || (k.mac[0] & 1)) return punt_rx(skb, vni, gbp, peer, VN_UNKNOWN);
  struct vn_fdb_val *d = bpf_map_lookup_elem(&vn_fdb, &k);
  if (!d || !d->ifindex) return punt_rx(skb, vni, gbp, peer, VN_UNKNOWN);
  __u32 to = d->ifindex;
  struct vn_port *p = bpf_map_lookup_elem(&vn_ports, &to);
  if (!p || p->vni != vni || !(p->flags & VN_FAST) || gbp_gen(gbp) != port_gen(p)) return punt_rx(skb, vni, gbp, peer, VN_UNKNOWN);
  __s16 delta = (__s16)((__u16)gbp - (__u16)p->epoch);
  if (delta < 0) return punt_rx(skb, vni, gbp, peer, VN_LATE);
  if (delta > 0) return punt_rx(skb, vni, gbp, peer, VN_EARLY);
  count(vni, peer, p->epoch, 1, skb);
  stat(ST_RX_FAST);
  return bpf_redirect(to, 0);
}

SEC("tc")
int vn_rx(struct __sk_buff *skb) {
#ifdef VN_FIXED_TUNNEL
  return rx_rules(skb, VN_FIXED_TUNNEL, skb->mark, 0);
#elif defined(VN_EXTERNAL_TUNNEL)
  struct bpf_tunnel_key key = {};
  struct vxlan_gbp md = {};
  if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0) {
    stat(ST_ERROR);
    return punt_rx(skb, 0, 0, 0, VN_ERROR);
  }
  if (bpf_skb_get_tunnel_opt(skb, &md, sizeof(md)) < 0) md.gbp = 0; /* no GBP: not one of ours, colour 0 */
  return rx_rules(skb, key.tunnel_id, md.gbp, key.remote_ipv4);
#endif
  /*
   * An ordinary device keeps no tunnel metadata: the VNI, the GBP and the sending peer are read
   * from the outer IPv4/UDP/VXLAN headers still in the skb's head in front of the inner frame.
   * The device's GRO is off (rx-side.ts), so an skb holds the datagrams of one outer flow only
   * (the underlay's UDP tunnel GRO keys on the outer header): its peer is every datagram's peer.
   */
  struct sk_buff *k = bpf_cast_to_kern_ctx(skb);
  struct vn_outer o;
  if (bpf_probe_read_kernel(&o, sizeof(o), k->head + k->mac_header - sizeof(o)) < 0 || o.ver_ihl != 0x45 || o.protocol != 17 || !(o.vx_flags & VXLAN_HF_VNI)) {
    stat(ST_ERROR);
    return punt_rx(skb, 0, 0, 0, VN_ERROR);
  }
  __u32 vni = ((__u32)o.vni[0] << 16) | ((__u32)o.vni[1] << 8) | o.vni[2];
  __u32 gbp = 0; /* no GBP: not one of ours, colour 0 */
  if (o.vx_flags & VXLAN_HF_GBP) gbp = bpf_ntohs(o.policy) | ((o.gbp_flags & VXLAN_GBP_D) ? GBP_DONT_LEARN : 0) | ((o.gbp_flags & VXLAN_GBP_A) ? GBP_POLICY_APPLIED : 0);
  /* the tunnel's check (docs/security.md): only a peer of the VNE is carried; anything else goes to the switch, which counts and drops it */
  struct vn_peer_key pk = { .vni = vni, .peer = bpf_ntohl(o.saddr) };
  if (!bpf_map_lookup_elem(&vn_peers, &pk)) return punt_rx(skb, vni, gbp, pk.peer, VN_UNKNOWN);
  return rx_rules(skb, vni, gbp, pk.peer);
}

SEC("tc")
int vn_rx_test(struct __sk_buff *skb) {
  return rx_rules(skb, skb->cb[0], skb->cb[1], skb->cb[2]);
}

char LICENSE[] SEC("license") = "GPL";
