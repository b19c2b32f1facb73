/**
 * The sim guest's state (everything an image holds but its memory), the host-side view of a sim
 * VM that inspect() returns, and the driver's options.
 */
import type { VmStatus } from '../../agent/drivers/driver';

export interface SimDriverOptions {
  /** Frames per batch handed to the switch (> 1 so the batch paths run). Default 32. */
  batchSize?: number;
  /** The VM's clock tick (sending, dirtying). Default 5 ms. */
  tickMs?: number;
  /** A pre-copy pass that copied at most this many bytes makes the VM ready. Default 256 KiB. */
  readyBytes?: number;
  /** Pause between pre-copy passes. Default 10 ms. */
  passIntervalMs?: number;
  /** HELLO retransmission while peers are unresolved. Default 100 ms. */
  helloMs?: number;
  /** Size of data frames (bytes, >= 64). Default 96. */
  frameBytes?: number;
  /** Frames a paused VM's NIC queues before dropping. Default 100000. */
  rxQueueMax?: number;
}

/** The guest state saved in images (everything but memory). */
export interface SimGuestState {
  name: string;
  epoch: number;
  /** Next sequence number to send, per destination VM. */
  sent: Record<string, number>;
  /** Next sequence number expected, per sender VM. */
  expected: Record<string, number>;
  /** Data frames received, per sender. */
  received: Record<string, number>;
  gaps: number;
  duplicates: number;
  orphans: number;
  framesSent: number;
  framesReceived: number;
  /** Peer name → MAC, learned from HELLOs (the guest's ARP table). */
  arp: Record<string, string>;
  /** Memory writes so far (also written into memory). */
  memWrites: number;
}

/** What inspect() returns: the guest state plus host-side diagnostics. */
export interface SimVmState extends SimGuestState {
  status: VmStatus;
  /** SHA-256 of the memory (lower-case hex). */
  memorySha256: string;
  /** Frames delivered while the VM was paused (queued at its NIC); not an error by itself. */
  framesWhilePaused: number;
  rxQueueDrops: number;
  /** Data frames addressed to another VM name (flooded to us). */
  misdelivered: number;
  /** Frames that are not sim frames. */
  foreign: number;
}

/** The guest part of an inspected state (what an image holds), with its memory hash. */
export function guestOf(s: SimVmState): SimGuestState & { memorySha256: string } {
  return {
    name: s.name,
    epoch: s.epoch,
    sent: s.sent,
    expected: s.expected,
    received: s.received,
    gaps: s.gaps,
    duplicates: s.duplicates,
    orphans: s.orphans,
    framesSent: s.framesSent,
    framesReceived: s.framesReceived,
    arp: s.arp,
    memWrites: s.memWrites,
    memorySha256: s.memorySha256,
  };
}

export function emptyState(name: string, epoch: number): SimGuestState {
  return { name, epoch, sent: {}, expected: {}, received: {}, gaps: 0, duplicates: 0, orphans: 0, framesSent: 0, framesReceived: 0, arp: {}, memWrites: 0 };
}

export function cloneState(s: SimGuestState): SimGuestState {
  return JSON.parse(JSON.stringify(s)) as SimGuestState;
}
