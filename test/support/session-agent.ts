/**
 * A whole Agent (agent.ts) as the adoption tests need it: host h1 with the given drivers and
 * state directory, its session on a FakeSessionTransport, its tunnel on a FakeUdpNetwork and a
 * ManualClock at T0 — real composition, fake wire.
 */
import * as path from 'node:path';
import { Agent } from '../../agent/agent';
import type { HypervisorDriver } from '../../agent/drivers/driver';
import { ManualClock } from '../../proto/core/clock';
import { T0 } from './agent-parts';
import { FakeSessionTransport } from './fake-session';
import { FakeUdpNetwork } from '../../switch/tunnel/tunneltest/fake-transport';

/** A new agent h1 storing under dir/store, its records in stateDir. */
export function sessionAgent(dir: string, stateDir: string, driver: HypervisorDriver): { agent: Agent; transport: FakeSessionTransport } {
  const transport = new FakeSessionTransport();
  const agent = new Agent({
    id: 'h1',
    coordinator: 'coord:1',
    tunnel: { address: '10.0.0.1', port: 6081 },
    storeConfig: { kind: 'local', dir: path.join(dir, 'store') },
    stateDir,
    drivers: [driver],
    hostname: 'host-1',
    transport: new FakeUdpNetwork().endpoint(0x0a000001, 6081),
    session: transport.factory,
    clock: new ManualClock(T0),
  });
  return { agent, transport };
}
