/**
 * A frame's fate at its destination port: the frame rules (epoch-rules.ts) applied, and what
 * follows from the verdict — deliver (queue on the port's transmit batch), deliver and record
 * (a copy into every recording the port has passed and the frame is older than), or hold (a
 * copy, bounded per port by `holdBytesPerPort`, released by releaseHeld when the port's epoch
 * advances or its cut gate opens).
 *
 * The restore gate sits after the rules, at the port's transmit: while a restored port is gated
 * (attachPort with gated: true) every frame the switch delivers to it is kept (a copy, with its
 * virtio_net_hdr, bounded by `restoreGateBytes`, drops counted in `gateDrops`) instead of being
 * written to the VM. openGate() writes the recorded in-flight frames first, then the kept
 * frames, in order, and the port passes everything from then on.
 *
 * Offloads: a super-frame (virtio_net_hdr with GSO) reaching a port without offloads is cut
 * into its segments, each under the rules with the frame's epoch. One super-frame is one frame
 * to the rules: one epoch, held, delivered and recorded whole. Channel state keeps what the port
 * received: at a port with offloads a super-frame is recorded whole with its 10-byte
 * virtio_net_hdr (one `recorded`), at a port without it, its segments. At restore, inject()
 * writes a recorded super-frame whole into a port with offloads and as its segments into a port
 * without (the same rule as delivery), so channel state recorded at either kind of port can be
 * injected into either kind.
 *
 * Counters: `superFramesOut` counts super-frames a port accepted (delivered or injected whole);
 * the port's `superFramesIn` is counted where its frames are read (bridge/forwarding.ts).
 */
import { isSuperFrame, segmentFrame, VNET_HDR_LEN } from '../offload';
import type { SwitchCounters } from '../stats';
import type { HeldFrame, LocalPort } from '../tables';
import { classify, Verdict } from './epoch-rules';
import type { ChannelFrame } from './recording';

export interface DeliveryOptions {
  /** Bytes of future frames held per port before drops. */
  holdBytesPerPort: number;
  /** Bytes a restore gate keeps per port before drops. */
  restoreGateBytes: number;
}

export class Delivery {
  private readonly dirty: LocalPort[] = [];

  constructor(
    private readonly counters: SwitchCounters,
    private readonly opts: DeliveryOptions,
  ) {}

  /**
   * Apply the frame rules at destination port dp. m/moff: the virtio_net_hdr of a super-frame
   * (null for an ordinary frame); a port without offloads gets its segments instead, each under
   * the rules with the same epoch.
   */
  deliver(dp: LocalPort, slab: Buffer, off: number, len: number, epoch: number, m: Buffer | null, moff: number): void {
    if (m !== null && dp.txMeta === null) {
      const segs = segmentFrame(slab.subarray(off, off + len), m, moff, 0);
      if (segs === null) {
        this.counters.gsoErrors++;
        dp.stats.txDrops++;
        return;
      }
      for (const sg of segs) this.deliver(dp, sg, 0, sg.length, epoch, null, 0);
      return;
    }
    const verdict = classify(epoch, dp.epoch, dp.gated);
    if (verdict === Verdict.Hold) {
      this.hold(dp, Buffer.from(slab.subarray(off, off + len)), epoch, m === null ? null : Buffer.from(m.subarray(moff, moff + VNET_HDR_LEN)));
      return;
    }
    const frame = slab.subarray(off, off + len);
    if (verdict === Verdict.DeliverAndRecord) this.record(dp, frame, epoch, true, m, moff);
    this.enqueue(dp, frame, m, moff);
  }

  /** Deliver what the rules no longer hold (after an epoch advance or the end of a cut gate). */
  releaseHeld(dp: LocalPort): void {
    if (dp.held.length === 0 || dp.gated) return;
    const keep: HeldFrame[] = [];
    let keepBytes = 0;
    for (const h of dp.held) {
      const verdict = classify(h.epoch, dp.epoch, false);
      if (verdict === Verdict.Hold) {
        keep.push(h);
        keepBytes += h.frame.length;
        continue;
      }
      if (verdict === Verdict.DeliverAndRecord) this.record(dp, h.frame, h.epoch, false, h.meta, 0);
      this.enqueue(dp, h.frame, h.meta, 0);
    }
    dp.held = keep;
    dp.heldBytes = keepBytes;
  }

  /** Write every dirty port's transmit batch (or keep it behind the port's restore gate). */
  flush(): void {
    const dirty = this.dirty;
    for (let i = 0; i < dirty.length; i++) {
      const dp = dirty[i] as LocalPort;
      const n = dp.gate !== null ? this.keepBehindGate(dp, dp.tx, dp.txCount, dp.txMeta) : dp.port.send(dp.tx, dp.txCount, dp.txMeta);
      dp.stats.txFrames += n;
      if (dp.txMeta !== null) dp.stats.superFramesOut += countSuperFrames(dp.txMeta, n);
      dp.stats.txDrops += dp.txCount - n;
      dp.tx.length = 0;
      dp.txCount = 0;
      dp.dirty = false;
    }
    dirty.length = 0;
  }

  /**
   * Write recorded frames into a port, in order (restore); returns how many it accepted. A
   * super-frame goes whole to a port with offloads, as its segments to a port without (each
   * segment then counts as one frame).
   */
  inject(dp: LocalPort, recorded: readonly ChannelFrame[]): number {
    let frames: Buffer[];
    let metas: Buffer | null = null;
    if (dp.txMeta !== null) {
      frames = recorded.map((f) => f.frame);
      if (recorded.some((f) => f.vnetHdr !== null)) {
        metas = Buffer.alloc(recorded.length * VNET_HDR_LEN);
        recorded.forEach((f, i) => f.vnetHdr?.copy(metas as Buffer, i * VNET_HDR_LEN, 0, VNET_HDR_LEN));
      }
    } else {
      frames = [];
      for (const f of recorded) {
        if (f.vnetHdr === null) {
          frames.push(f.frame);
          continue;
        }
        const segs = segmentFrame(f.frame, f.vnetHdr, 0, 0);
        if (segs === null) {
          this.counters.gsoErrors++;
          dp.stats.txDrops++;
          continue;
        }
        for (const sg of segs) frames.push(sg);
      }
    }
    const n = dp.port.send(frames, frames.length, metas);
    dp.stats.injected += n;
    dp.stats.txDrops += frames.length - n;
    if (metas !== null) dp.stats.superFramesOut += countSuperFrames(metas, n);
    return n;
  }

  /**
   * Open the restore gate of dp: inject `frames` (the recorded channel state) first, then write
   * the frames kept behind the gate, then pass everything. Without a gate, only the injection.
   */
  openGate(dp: LocalPort, frames: readonly ChannelFrame[]): number {
    const gate = dp.gate;
    dp.gate = null;
    const injected = frames.length > 0 ? this.inject(dp, frames) : 0;
    if (gate === null || gate.frames.length === 0) return injected;
    const kept = gate.frames;
    let metas: Buffer | null = null;
    if (kept.some((h) => h.meta !== null)) {
      const mb = Buffer.alloc(kept.length * VNET_HDR_LEN);
      kept.forEach((h, i) => h.meta?.copy(mb, i * VNET_HDR_LEN));
      metas = mb;
    }
    dp.port.send(
      kept.map((h) => h.frame),
      kept.length,
      metas,
    );
    return injected;
  }

  /**
   * Record a delivered frame in every recording of dp it is older than: a copy (unless the
   * caller's buffer is already one), a super-frame whole with a copy of its virtio_net_hdr.
   */
  private record(dp: LocalPort, frame: Buffer, epoch: number, copy: boolean, m: Buffer | null, moff: number): void {
    if (dp.recordings.length === 0) {
      dp.stats.lateInFlight++;
      return;
    }
    let cf: ChannelFrame | undefined;
    for (const r of dp.recordings) {
      if (epoch < r.k) {
        cf ??= { frame: copy ? Buffer.from(frame) : frame, vnetHdr: m === null ? null : Buffer.from(m.subarray(moff, moff + VNET_HDR_LEN)) };
        let list = r.frames.get(dp.name);
        if (!list) {
          list = [];
          r.frames.set(dp.name, list);
        }
        list.push(cf);
        dp.stats.recorded++;
      }
    }
  }

  private hold(dp: LocalPort, frame: Buffer, epoch: number, meta: Buffer | null): void {
    if (dp.heldBytes + frame.length > this.opts.holdBytesPerPort) {
      dp.stats.holdDrops++;
      return;
    }
    dp.held.push({ frame, epoch, meta });
    dp.heldBytes += frame.length;
    dp.stats.held++;
  }

  private enqueue(dp: LocalPort, frame: Buffer, m: Buffer | null, moff: number): void {
    const i = dp.txCount++;
    dp.tx[i] = frame;
    let tm = dp.txMeta;
    if (tm !== null) {
      const at = i * VNET_HDR_LEN;
      if (at + VNET_HDR_LEN > tm.length) {
        const bigger = Buffer.alloc(tm.length * 2);
        tm.copy(bigger, 0, 0, at);
        dp.txMeta = tm = bigger;
      }
      if (m !== null) m.copy(tm, at, moff, moff + VNET_HDR_LEN);
      else tm.fill(0, at, at + VNET_HDR_LEN);
    }
    if (!dp.dirty) {
      dp.dirty = true;
      this.dirty.push(dp);
    }
  }

  /** The restore gate's send: keep copies (bounded); every frame counts as accepted. */
  private keepBehindGate(dp: LocalPort, frames: readonly Buffer[], count: number, metas: Buffer | null): number {
    const gate = dp.gate;
    if (gate === null) return 0;
    for (let i = 0; i < count; i++) {
      const f = frames[i] as Buffer;
      if (gate.bytes + f.length > this.opts.restoreGateBytes) {
        dp.stats.gateDrops++;
        continue;
      }
      const meta = metas ? Buffer.from(metas.subarray(i * VNET_HDR_LEN, (i + 1) * VNET_HDR_LEN)) : null;
      gate.frames.push({ frame: Buffer.from(f), meta });
      gate.bytes += f.length;
    }
    return count;
  }
}

/** How many of the first n entries of a virtio_net_hdr array describe super-frames. */
function countSuperFrames(metas: Buffer, n: number): number {
  let c = 0;
  for (let i = 0; i < n; i++) if (isSuperFrame(metas, i * VNET_HDR_LEN)) c++;
  return c;
}
