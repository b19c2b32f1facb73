/**
 * Does this kernel do UDP GSO and GRO for the tunnel? Asked once when an agent starts, so that
 * the tunnel's offloads can be on by default and off, with one reason, where the kernel lacks
 * them (a UdpTransport without offloads then sends and receives one datagram per syscall slot,
 * as before).
 *
 * The probe is the real thing on a throwaway socket bound to 127.0.0.1 (ephemeral port): it
 * asks for UDP_GRO (the answer udpOpen reports), then sends two equal datagrams to itself
 * through the offload send path, which coalesces them into one UDP_SEGMENT message; a kernel
 * that refuses UDP_SEGMENT makes the addon mark the socket (udpSocketStats().gsoBroken). The
 * datagrams are never read; closing the socket drops them. Nothing leaves the host.
 */
import { describeError } from '../../proto/core/errors';
import type { NativeIo } from '../native-io';
import { nativeIo, VNET_HDR_LEN } from '../native-io';

export type UdpOffloadProbe = { ok: true } | { ok: false; why: string };

const LOOPBACK = 0x7f000001;

export function probeUdpOffload(io: NativeIo = nativeIo()): UdpOffloadProbe {
  let fd = -1;
  try {
    const s = io.udpOpen('127.0.0.1', 0, { gro: true });
    fd = s.fd;
    if (s.gro !== true) return { ok: false, why: 'the kernel refused UDP_GRO' };
    if (io.udpSocketStats === undefined) return { ok: false, why: 'the native addon cannot report UDP_SEGMENT support' };
    const dgrams = [Buffer.alloc(64), Buffer.alloc(64)];
    const segs = new Uint32Array(2);
    io.udpSend(fd, dgrams, new Uint32Array([LOOPBACK, LOOPBACK]), new Uint32Array([s.port, s.port]), 2, Buffer.alloc(2 * VNET_HDR_LEN), segs, 1500);
    const st = io.udpSocketStats(fd);
    if (st.gsoBroken || st.gsoMessages === 0) return { ok: false, why: 'the kernel refused UDP_SEGMENT' };
    return { ok: true };
  } catch (e) {
    return { ok: false, why: `probing UDP offloads failed: ${describeError(e)}` };
  } finally {
    if (fd >= 0) io.close(fd);
  }
}
