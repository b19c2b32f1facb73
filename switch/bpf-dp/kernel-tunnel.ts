/**
 * The kernel's side of the in-kernel data path's tunnel as the switch drives it: one ordinary
 * VXLAN device per VNI (no remote, GBP, learning off) and that device's FDB (MAC → peer), which
 * the agent makes and writes with system tools (agent/bpf-dp/rx-side.ts, VniDevices).
 *
 * Why it exists: a VXLAN device in external mode allocates a metadata dst for every packet it
 * receives, freed through a hurried RCU callback, which keeps the machine's RCU grace periods
 * running (docs/nic-offloads.md, "The external device's receive cost"); ordinary devices do not,
 * but one sends to a peer only through its own FDB. So vn_tx sends a VNI's frames to the VNI's
 * device (vn_vxdevs) and the FDB mirror (fdb-mirror.ts) writes every remote MAC into that
 * device's FDB before vn_fdb names the peer, so no frame the kernel counts as sent is dropped
 * for lack of an FDB entry. The switch (switch/) may not run processes itself, hence the interface.
 *
 * Guarantees asked of an implementation: operations take effect in the order they are called
 * (one queue); addVni resolves once the VNI's device is up with vn_rx on it and vn_vxdevs names
 * it (idempotent: a device an earlier agent left is adopted); removeVni resolves once vn_vxdevs
 * no longer names the VNI's device and the device is gone (with its FDB; quiet when it was not
 * there); setFdb resolves once the kernel's
 * entry sends that MAC to that peer (replacing any other); a failure rejects with a VnsnapError
 * and leaves the entry out.
 */
export interface KernelTunnel {
  addVni(vni: number): Promise<void>;
  removeVni(vni: number): Promise<void>;
  setFdb(vni: number, mac: string, peer: string): Promise<void>;
  removeFdb(vni: number, mac: string): Promise<void>;
  /** Resolves once every operation called before it has been made or has failed. */
  idle(): Promise<void>;
}
