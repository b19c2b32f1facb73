#!/usr/bin/env node
/**
 * vnsnap-agent with the simulated driver: the product agent (agent/main.ts, same flags, same
 * configuration, same ready line) plus the driver "sim" of test/sim/driver.ts. Tests and benches
 * spawn this file (test/support/cluster.ts when its hosts run sim VMs); the product binary
 * (dist/agent/main.js) does not know the sim driver.
 *
 * The sim VM's parameters travel in the VM spec's `driver.sim` (SimDriverSpec of types.proto):
 * the wire format keeps that message so the coordinator, its catalog and the manifests carry sim
 * VNEs exactly as before; only the agent side is test-only.
 */
import { runAgentMain } from '../../agent/main';
import { SimDriver } from './driver';

if (require.main === module) {
  void runAgentMain([
    {
      name: 'sim',
      make: (log) => {
        log.warn('the sim driver is enabled: simulated VMs, for tests and scale runs only');
        return new SimDriver();
      },
    },
  ]);
}
