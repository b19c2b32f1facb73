/**
 * A VNE of several switches joined by a FakeUdpNetwork, with fake VM ports: the unit tests'
 * world. Time is manual (`env.now`), and `env.tick()` runs every switch's timers.
 */
import { fakePortPair, FakePort } from '../../switch/port/porttest/fake-port';
import { FakeUdpNetwork } from '../../switch/tunnel/tunneltest/fake-transport';
import { Switch } from '../../switch/switch';

export interface EnvSpec {
  /** Switch name → VM names on it. */
  switches: Record<string, string[]>;
  vne?: string;
  vni?: number;
  batchSize?: number;
  holdBytesPerPort?: number;
  recordingGraceMs?: number;
  autoNetwork?: boolean;
  /** VMs whose ports carry offloads (super-frames with a virtio_net_hdr). */
  offload?: readonly string[];
  /** The tunnel has UDP GSO/GRO (FakeUdpNetwork's offload model). */
  tunnelOffload?: boolean;
}

export class FakeEnv {
  now = 1_000_000;
  readonly net: FakeUdpNetwork;
  readonly switches = new Map<string, Switch>();
  readonly ports = new Map<string, FakePort>();
  /** VM name → switch name. */
  readonly hostOf = new Map<string, string>();
  readonly vne: string;

  constructor(spec: EnvSpec) {
    this.vne = spec.vne ?? 'blue';
    this.net = new FakeUdpNetwork({ batchSize: spec.batchSize ?? 8, auto: spec.autoNetwork ?? false, offload: spec.tunnelOffload ?? false });
    const names = Object.keys(spec.switches);
    names.forEach((name, i) => {
      const sw = new Switch({
        id: name,
        now: () => this.now,
        holdBytesPerPort: spec.holdBytesPerPort ?? 1 << 30,
        recordingGraceMs: spec.recordingGraceMs ?? 1000,
      });
      const peers = names.map((peer, j) => ({ name: peer, address: `10.0.0.${j + 1}`, port: 6081 })).filter((p) => p.name !== name);
      sw.configureVne({ name: this.vne, vni: spec.vni ?? 100, peers });
      sw.attachTunnel(this.net.endpoint(0x0a000001 + i, 6081));
      for (const vm of spec.switches[name] ?? []) {
        const { port } = fakePortPair(vm, { batchSize: spec.batchSize ?? 8, offload: spec.offload?.includes(vm) ?? false });
        sw.attachPort(this.vne, port);
        this.ports.set(vm, port);
        this.hostOf.set(vm, name);
      }
      this.switches.set(name, sw);
    });
  }

  sw(name: string): Switch {
    const s = this.switches.get(name);
    if (!s) throw new Error(`no switch ${name}`);
    return s;
  }

  port(vm: string): FakePort {
    const p = this.ports.get(vm);
    if (!p) throw new Error(`no VM ${vm}`);
    return p;
  }

  switchOf(vm: string): Switch {
    return this.sw(this.hostOf.get(vm) as string);
  }

  tick(advanceMs = 0): void {
    this.now += advanceMs;
    for (const s of this.switches.values()) s.tick();
  }

  /** Pump every VM and deliver every datagram until nothing moves. */
  settle(): void {
    for (let i = 0; i < 100; i++) {
      let moved = 0;
      for (const p of this.ports.values()) moved += p.vm.pumpAll();
      moved += this.net.inFlight.length;
      this.net.deliverAll();
      if (moved === 0) return;
    }
    throw new Error('network did not settle');
  }
}
