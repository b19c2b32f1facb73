/**
 * vnsnap on a real Xen, nested under QEMU TCG (docs/xen.md, "Testing"). On demand only: a boot of
 * the test bed alone takes 2–4 minutes on this class of machine (far more when it is loaded),
 * and the whole run ~8–15 minutes, well past the ~4-minute bar for `npm test`. Run it with
 *
 *   npm run test:xen            (VNSNAP_XEN=1; builds the cached test bed first if needed)
 *
 * Two tests: the driver alone against the real toolstack in dom0 (test/xen/dom0-smoke.ts: create,
 * `xl save -c`, live capture, restore), and the end-to-end run (test/xen/dom0-e2e.ts: coordinator
 * + agent in dom0, two PV guests streaming checked counters, live snapshot, destroy, restore,
 * every stream intact).
 */
import { strict as assert } from 'node:assert';
import { runDom0Program, testbedOrSkip } from '../xen/testbed';

describe('Xen (nested under QEMU TCG)', function () {
  this.timeout(60 * 60_000);
  let dir = '';
  before(async function () {
    dir = await testbedOrSkip(this);
  });

  it('driver against the real toolstack: create, xl save -c, live capture, restore', async () => {
    const { run: r, result: res } = await runDom0Program<{ ok?: boolean; error?: string; steps: string[] }>({ dir, program: 'dom0-smoke', result: 'smoke.json', timeoutMs: 30 * 60_000 });
    console.log(`      boot + run ${(r.bootToDoneMs / 1000).toFixed(0)} s\n      ${res?.steps.join('\n      ') ?? r.log.slice(-2000)}`);
    assert.equal(res?.error, undefined, res?.error);
    assert.equal(res?.ok, true, `see ${r.exchange}`);
  });

  it('end to end: live snapshot of two streaming PV guests, destroy, restore, streams intact', async () => {
    const { run: r, result: res } = await runDom0Program<{ ok?: boolean; error?: string; problems?: string[]; steps: string[] }>({ dir, program: 'dom0-e2e', result: 'e2e.json', timeoutMs: 45 * 60_000 });
    console.log(`      boot + run ${(r.bootToDoneMs / 1000).toFixed(0)} s\n      ${res?.steps.join('\n      ') ?? r.log.slice(-2000)}`);
    assert.equal(res?.error, undefined, res?.error);
    assert.deepEqual(res?.problems, []);
    assert.equal(res?.ok, true, `see ${r.exchange}`);
  });
});
