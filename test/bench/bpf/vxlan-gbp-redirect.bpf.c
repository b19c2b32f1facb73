/*
 * A prototype of vnsnap's in-kernel data path (docs/nic-offloads.md, "The remaining gap"), for
 * `npm run bench:vm-net -- --bpf-prototype` only: not part of the product yet.
 *
 * Two tc programs (clsact, direct action) on a host of the bench's kernel path, in place of the
 * Linux bridge:
 *   tc_out  on the VM's TAP ingress (frames QEMU sends): sets the tunnel metadata (VNI, the
 *           other host's underlay address) and the VXLAN Group Based Policy field — the carrier
 *           of the sender's epoch colour — and redirects the frame, super-frames whole, to a
 *           VXLAN device in external (collect_md) mode with GBP, which encapsulates, segments
 *           (GSO) and sends it as the kernel's own VXLAN does.
 *   tc_in   on that VXLAN device's ingress (frames decapsulated, GRO-merged): reads the VNI and
 *           the colour and, when the colour is the receiving port's epoch, redirects the frame
 *           to the VM's TAP (to QEMU). A frame of another epoch is counted and dropped here;
 *           the design hands it to the switch (channel state or a held frame).
 * One VM per host and one peer, given at compile time (-DVNI, -DREMOTE as a host-order IPv4,
 * -DEPOCH, -DVXIF and -DPORTIF as interface indexes): what a measurement needs, no FDB.
 * The stats map counts per program: 0 frames sent, 1 delivered, 2 wrong colour, 3 errors;
 * super-frames count once (their gso_segs would give per-datagram counts for markers).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

struct vxlan_gbp { __u32 gbp; };

struct {
  __uint(type, BPF_MAP_TYPE_ARRAY);
  __uint(max_entries, 4);
  __type(key, __u32);
  __type(value, __u64);
} stats SEC(".maps");

static __always_inline void count(__u32 i) {
  __u64 *v = bpf_map_lookup_elem(&stats, &i);
  if (v) __sync_fetch_and_add(v, 1);
}

SEC("tc_out")
int to_tunnel(struct __sk_buff *skb) {
  struct bpf_tunnel_key key = {};
  struct vxlan_gbp md = { .gbp = EPOCH };
  key.tunnel_id = VNI;
  key.remote_ipv4 = REMOTE;
  key.tunnel_ttl = 64;
  if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) < 0 || bpf_skb_set_tunnel_opt(skb, &md, sizeof(md)) < 0) {
    count(3);
    return TC_ACT_SHOT;
  }
  count(0);
  return bpf_redirect(VXIF, 0);
}

SEC("tc_in")
int from_tunnel(struct __sk_buff *skb) {
  struct bpf_tunnel_key key = {};
  struct vxlan_gbp md = {};
  if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0 || key.tunnel_id != VNI) return TC_ACT_OK;
  if (bpf_skb_get_tunnel_opt(skb, &md, sizeof(md)) < 0 || (md.gbp & 0xffff) != EPOCH) {
    count(2);
    return TC_ACT_SHOT;
  }
  count(1);
  return bpf_redirect(PORTIF, 0);
}

char LICENSE[] SEC("license") = "GPL";
