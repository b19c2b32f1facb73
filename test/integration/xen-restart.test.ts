/**
 * Xen domains outlive the agent, on a real Xen nested under QEMU TCG (docs/agent-restart.md,
 * "Xen"; docs/xen.md, "Testing"). On demand only, with the rest of the Xen suite:
 *
 *   npm run test:xen            (VNSNAP_XEN=1; builds the cached test bed first if needed)
 *
 * One boot of the test bed runs test/xen/dom0-restart.ts in dom0: two PV guests streaming
 * checked counters, the agent SIGKILLed and SIGTERMed (kept down 5 s) and SIGKILLed with an
 * immediate start (3 rounds), each time the same domids, vifs re-bridged with the switch's
 * TAPs, streams intact, the VNE RUNNING; then a domain destroyed while the agent is down is
 * reported dead (VNE FAILED naming it) and the other adopted. About 10–20 minutes.
 */
import { strict as assert } from 'node:assert';
import { runDom0Program, testbedOrSkip } from '../xen/testbed';

interface RestartResult {
  ok?: boolean;
  error?: string;
  problems?: string[];
  steps: string[];
  rounds?: { signal: string; downMs: number; outageMs: number }[];
  outageMs?: { median: number; max: number };
  dead?: { state: string };
}

describe('Xen (nested under QEMU TCG): domains outlive the agent', function () {
  this.timeout(60 * 60_000);
  let dir = '';
  before(async function () {
    dir = await testbedOrSkip(this);
  });

  it('SIGKILL / SIGTERM of the agent: same domids, vifs re-attached, streams intact, VNE RUNNING; a domain destroyed meanwhile is reported dead', async () => {
    const { run: r, result: res } = await runDom0Program<RestartResult>({ dir, program: 'dom0-restart', result: 'restart.json', timeoutMs: 45 * 60_000 });
    console.log(`      boot + run ${(r.bootToDoneMs / 1000).toFixed(0)} s\n      ${res?.steps.join('\n      ') ?? r.log.slice(-2000)}`);
    assert.equal(res?.error, undefined, res?.error);
    assert.deepEqual(res?.problems, []);
    assert.deepEqual(res?.rounds?.map((x) => x.signal), ['SIGKILL', 'SIGTERM', 'SIGKILL', 'SIGKILL', 'SIGKILL']);
    assert.equal(res?.dead?.state, 'VNE_STATE_FAILED');
    assert.equal(res?.ok, true, `see ${r.exchange}`);
  });
});
