/**
 * The qcow2 format of every overlay the QEMU driver creates (the boot overlay over a spec's
 * base, each snapshot's next overlay, a restore's new top), in one place.
 *
 * Overlays use 4 KiB clusters instead of qcow2's default 64 KiB because an overlay becomes a
 * snapshot's disk layer, uploaded whole (docs/storage.md, "Incremental disks"): with 64 KiB
 * clusters a guest's 4 KiB write into a fresh cluster copies the other 60 KiB up from the backing
 * layer, so 400 scattered 4 KiB writes made a 17 MiB layer; with 4 KiB clusters the layer holds
 * the 1.6 MiB written (measured with qemu-io on a 32 MiB disk; docs/qemu.md). The same copy-up is
 * what a guest's scattered writes no longer pay. The cost is metadata: 16 times the L2 entries
 * and refcounts per byte, which matters for large sequential writes into fresh space, not for
 * the overlays of a snapshot series.
 */
export const OVERLAY_CLUSTER_BYTES = 4096;

/** qemu-img create options for an overlay. */
export const OVERLAY_CREATE_OPTIONS: readonly string[] = ['-o', `cluster_size=${OVERLAY_CLUSTER_BYTES}`];
