/**
 * One namespaced host of the in-kernel data path's integration test
 * (test/integration/bpf-dp-switch.test.ts), run inside its network namespace with
 * `ip netns exec` (which also gives it its own /sys and so its own bpf file system, mounted by
 * the loader): a switch on a real UDP tunnel, the agent's data path wired into it as the agent
 * wires it (wireDataPath), and one VM port opened as the QEMU driver opens a `nic: 'tap-bpf'` TAP
 * (openTapPort) on a TAP whose character side the test holds.
 *
 * Speaks JSON lines: argv[2] is the host's set-up; each stdin line {id, op, ...} is answered on
 * stdout by {id, ok: result} or {id, error}. Ops: stats, cut {k}, channel {k}. Prints {ready:
 * true} once the port is attached and the kernel tunnel's writes (the VNI's device, its FDB) are made.
 */
import * as readline from 'node:readline';
import { wireDataPath } from '../../agent/bpf-dp/host-dp';
import { ipv4ToNum } from '../../switch/bpf-dp/layout';
import { openTapPort } from '../../agent/drivers/qemu/vm-veth';
import { describeError } from '../../proto/core/errors';
import { Switch } from '../../switch/switch';
import { UdpTransport } from '../../switch/tunnel/udp';
import { parseFrame } from './frames';

interface HostSetup {
  id: string;
  ip: string;
  peer: { name: string; ip: string };
  vni: number;
  tap: string;
  mac: string;
  peerMac: string;
  prefix: string;
  vxlanPort: number;
  /** The port's epoch at attach (an agent that restarted adopts its VM at the VNE's epoch); default the VNE's. */
  epoch?: number;
}

async function main(): Promise<void> {
  const s = JSON.parse(process.argv[2] as string) as HostSetup;
  const sw = new Switch({ id: s.id });
  sw.attachTunnel(new UdpTransport(s.ip, 6081, { offload: true }));
  sw.configureVne({ name: 'blue', vni: s.vni, peers: [{ name: s.peer.name, address: s.peer.ip, port: 6081 }], macs: [{ mac: s.peerMac, peer: s.peer.name }] });
  const w = await wireDataPath(sw, s.prefix, s.vxlanPort);
  sw.attachPort('blue', await openTapPort('vm', s.tap, 'tap-bpf', s.prefix), { mac: s.mac, ...(s.epoch !== undefined ? { epoch: s.epoch } : {}) });
  sw.start();
  const ops: Record<string, (r: { k?: number }) => Promise<unknown> | unknown> = {
    stats: () => ({
      kernel: w.maps.stats(),
      counts: Object.fromEntries([0, 1, 2].flatMap((e) => (['sent', 'received'] as const).map((d) => [`${e}/${d}`, w.maps.count(s.vni, s.peer.ip, e, d)]))),
      // What the markers of snapshot 1 sum (KernelCounts.below): exact after the tick folded epoch 0 out of the map.
      below1: Object.fromEntries((['sent', 'received'] as const).map((d) => [d, w.counts.below(s.vni, ipv4ToNum(s.peer.ip), 1, d)])),
      port: sw.stats().ports['vm'],
      wiring: w.stats(),
      fast: w.isFast('vm'),
    }),
    cut: async (r) => {
      await sw.cutPorts(['vm'], r.k as number);
      return sw.portEpoch('vm');
    },
    channel: async (r) => {
      const c = await sw.channelState('blue', r.k as number, 20_000);
      return { seqs: (c.ports.get('vm') ?? []).map((f) => parseFrame(f.frame)?.seq ?? -1), lostFrames: c.lostFrames };
    },
  };
  readline.createInterface({ input: process.stdin }).on('line', (line) => {
    const r = JSON.parse(line) as { id: number; op: string; k?: number };
    Promise.resolve()
      .then(() => (ops[r.op] as (x: { k?: number }) => unknown)(r))
      .then(
        (ok) => process.stdout.write(`${JSON.stringify({ id: r.id, ok })}\n`),
        (e: unknown) => process.stdout.write(`${JSON.stringify({ id: r.id, error: describeError(e) })}\n`),
      );
  });
  process.on('SIGTERM', () => {
    sw.stop();
    process.exit(0);
  });
  await w.settled(); // the VNI's VXLAN device made and the peer's MAC in its FDB, as vn_fdb then names it
  process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
}

main().catch((e: unknown) => {
  process.stderr.write(`bpf-dp-host: ${describeError(e)}\n`);
  process.exit(1);
});
