/**
 * Runs INSIDE the test bed's dom0 (test/integration/xen-e2e.test.ts): the whole product on a
 * real Xen. A coordinator and an agent (drivers ["xen"]) in dom0, a VNE of two PV guests whose
 * vnguest programs stream checked counters to each other over the agent's switch; a live
 * snapshot (precopy = xl migrate capture); the streams must go on unbroken; the VNE is
 * destroyed and restored; every stream must continue with no gap, duplicate or corruption
 * (vnguest: errors 0, reconnects 0, same nonce, bytes growing). Writes /vnxen/e2e.json.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import { parseArgs } from 'node:util';
import { xenNames } from '../../agent/drivers/xen/driver';
import { median } from '../bench/proc';
import { cli, type Cli, type Daemon, dom0Main, type Dom0Result, ENDS, flowing as flowing0, guestLog, intact, sh, startProduct, startVne, stepper, stopProduct } from './dom0-harness';
import { guestConfig, XEN_TEST_IMAGE_ROOTS, type GuestStatus } from './guest-config';
import { superFrames } from './super-frames';

const out: Dom0Result & Record<string, unknown> = { steps: [] };
const t0 = Date.now();
const step = stepper('e2e', out, t0);
const procs: ChildProcess[] = [];
let coordinator: Daemon | undefined;
let agent: Daemon | undefined;
/** --bench (test/bench/xen-bench.ts): heavier memory load, a live and an `xl save -c` snapshot, no restore. */
const { values: ARGS } = parseArgs({ options: { bench: { type: 'boolean' }, vms: { type: 'string' }, rounds: { type: 'string', default: '3' }, 'dom0-weight': { type: 'string', default: '0' } } });
const BENCH = ARGS.bench === true;
const RESULT = BENCH ? '/vnxen/bench.json' : '/vnxen/e2e.json';
/**
 * --vms N (bench only): 1 (the default) measures what issue 5 names, one 128 MiB PV guest under
 * load: the VNE is guest a alone, and the other end of its streams is a vnguest in a dom0
 * network namespace whose veth is on a's bridge (test bed only; the agent never sees it), so
 * only a is captured. 2: both ends are guests, captured at once (as in the e2e test).
 */
const GUESTS = BENCH ? Number(ARGS.vms ?? 1) : 2;
/** --rounds N (bench only): live + `xl save -c` snapshots per run; medians are reported. */
const ROUNDS = Number(ARGS.rounds);
/** --dom0-weight W (bench only): dom0's scheduler weight (guests keep 256), as Xen's tuning guides advise for a busy dom0. */
const DOM0_WEIGHT = Number(ARGS['dom0-weight']);
const PEER_NS = 'vnxbench';
const PEER_LOG = '/vnxen/peer-b.log';

const VMS = ENDS.slice(0, GUESTS);
const logOf = (vm: string): string => (VMS.some((v) => v.name === vm) ? guestLog(vm) : PEER_LOG);

/** The dom0 end of guest a's streams (GUESTS = 1): a namespace, a veth on a's bridge, vnguest. */
async function startPeer(): Promise<void> {
  const end = ENDS[1] as (typeof ENDS)[number];
  const bridge = xenNames('xenvne/a', 1).bridges[0] as string;
  await sh('modprobe', ['veth']).catch(() => undefined);
  await sh('ip', ['netns', 'add', PEER_NS]);
  await sh('ip', ['link', 'add', 'vnxbp0', 'type', 'veth', 'peer', 'name', 'vnxbp1', 'netns', PEER_NS]);
  await sh('ip', ['-n', PEER_NS, 'link', 'set', 'vnxbp1', 'address', end.mac, 'up']);
  await sh('ip', ['-n', PEER_NS, 'link', 'set', 'lo', 'up']);
  await sh('ip', ['-n', PEER_NS, 'addr', 'add', `${end.ip}/24`, 'dev', 'vnxbp1']);
  await sh('ip', ['link', 'set', 'vnxbp0', 'master', bridge, 'up']);
  const p = spawn('ip', ['netns', 'exec', PEER_NS, '/vnxen-img/vnguest', 'run', `name=${end.name}`, `peers=${end.peer}:7001`, 'rate=256', 'report=1', 'disk=none'], {
    stdio: ['ignore', fs.openSync(PEER_LOG, 'w'), fs.openSync('/vnxen/peer-b.err', 'w')],
  });
  procs.push(p);
}

async function stopPeer(): Promise<void> {
  await sh('ip', ['link', 'del', 'vnxbp0']).catch(() => undefined);
  await sh('ip', ['netns', 'del', PEER_NS]).catch(() => undefined);
}

const flowing = (after: Map<string, number>, marker: Map<string, number>, what: string): Promise<Map<string, GuestStatus>> =>
  flowing0({ ends: ENDS.map((e) => e.name), logOf, after, marker, what });

/** What crosses guest a's vNIC as super-frames for 5 s (super-frames.ts), recorded under out.superFrames[when]. */
async function probeSuperFrames(when: string): Promise<void> {
  const n = xenNames('xenvne/a', 1);
  const domid = (await sh('xl', ['domid', n.domName])).trim();
  const r = await superFrames(`vif${domid}.0`, n.veths[0]?.br as string, 5000).catch((e: unknown) => {
    step(`super-frames ${when}: the probe failed: ${(e as Error).message}`);
    return undefined;
  });
  if (!r) return;
  out.superFrames = { ...(out.superFrames as object | undefined), [when]: r };
  step(`super-frames ${when} (a, 5 s): from the guest ${r.fromGuest.superFrames}/${r.fromGuest.frames} max ${r.fromGuest.maxLen} B; toward the guest after GRO ${r.towardGuest.superFrames}/${r.towardGuest.frames} max ${r.towardGuest.maxLen} B; vif tx ${r.vifTx.packets} packets ${r.vifTx.bytesPerPacket} B each`);
}

async function main(): Promise<void> {
  if (!(GUESTS === 1 || GUESTS === 2)) throw new Error(`--vms must be 1 or 2, not ${ARGS.vms}`);
  if (!(Number.isInteger(ROUNDS) && ROUNDS >= 1)) throw new Error(`--rounds must be a whole number ≥ 1, not ${ARGS.rounds}`);
  ({ coordinator, agent } = await startProduct(XEN_TEST_IMAGE_ROOTS, step));
  step(`${GUESTS} guest(s) on the VNE${GUESTS < ENDS.length ? `, the other end of the streams in dom0 namespace ${PEER_NS}` : ''}`);
  await startVne(VMS, (v) => guestConfig({ name: v.name, ip: `${v.ip}/24`, peers: [`${v.peer}:7001`], rate: BENCH ? 256 : 64, memMib: 128, mem: 16, memrate: BENCH ? 8 : 4, report: 1 }));
  let r: Cli;
  step('VNE started');
  if (GUESTS < ENDS.length) await startPeer();
  if (DOM0_WEIGHT > 0) {
    await sh('xl', ['sched-credit2', '-d', '0', '-w', String(DOM0_WEIGHT)]).catch(() => sh('xl', ['sched-credit', '-d', '0', '-w', String(DOM0_WEIGHT)]));
    step(`dom0 scheduler weight ${DOM0_WEIGHT}`);
  }
  const zero = new Map<string, number>();
  const before = await flowing(zero, zero, 'streams flowing between the guests');
  for (const s of before.values()) {
    const p = intact(s);
    if (p) throw new Error(`before the snapshot: ${p}`);
  }
  step(`streams flowing: ${[...before.values()].map((s) => `${s.name} rx ${s.totals.received}`).join(', ')}`);
  if (!BENCH) await probeSuperFrames('before the snapshot');

  // Live snapshot.
  const ts = Date.now();
  r = await cli(['snapshot', 'create', 'xenvne', '--mode', 'precopy', '--json', '--deadline-ms', '120000', '--timeout-ms', '900000']);
  const events = r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { done?: { id: string; state: string; error: string; vms: { name: string; pauseMs: number }[] } });
  const done = events.find((e) => e.done)?.done;
  if (r.code !== 0 || !done || done.state !== 'SNAPSHOT_STATE_COMPLETE') throw new Error(`snapshot failed (${r.code}): ${done?.error ?? r.stderr}`);
  out.snapshot = { id: done.id, totalMs: Date.now() - ts, pauses: Object.fromEntries(done.vms.map((v) => [v.name, v.pauseMs])) };
  step(`live snapshot ${done.id} complete in ${Date.now() - ts} ms, pauses ${JSON.stringify((out.snapshot as { pauses: unknown }).pauses)}`);
  const afterSnap = await flowing(new Map([...before].map(([k, v]) => [k, v.totals.received])), zero, 'streams after the snapshot');
  const problems: string[] = [];
  for (const s of afterSnap.values()) {
    const p = intact(s);
    if (p) problems.push(`after the snapshot: ${p}`);
    if (s.nonce !== before.get(s.name)?.nonce) problems.push(`after the snapshot: ${s.name} restarted`);
  }
  step(`streams after the snapshot: ${[...afterSnap.values()].map((s) => `${s.name} rx ${s.totals.received} err ${s.totals.errors} rec ${s.totals.reconnects}`).join(', ')}`);
  out.afterSnapshot = Object.fromEntries([...afterSnap].map(([k, s]) => [k, s.totals]));

  if (BENCH) {
    // Round 1's live snapshot is the one above; each round adds an `xl save -c` snapshot, and
    // later rounds a live one first. Medians over the rounds (the nested machine is noisy).
    const livePause = [Math.max(...Object.values((out.snapshot as { pauses: Record<string, number> }).pauses))];
    const liveTotal = [(out.snapshot as { totalMs: number }).totalMs];
    const savePause: number[] = [];
    const saveTotal: number[] = [];
    let rx = new Map([...afterSnap].map(([k, v]) => [k, v.totals.received]));
    const oneSnapshot = async (mode: 'precopy' | 'background', what: string): Promise<void> => {
      const tb = Date.now();
      r = await cli(['snapshot', 'create', 'xenvne', '--mode', mode, '--json', '--deadline-ms', '120000', '--timeout-ms', '900000']);
      const d = r.stdout.trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as { done?: { id: string; state: string; error: string; vms: { name: string; pauseMs: number }[] } }).find((e) => e.done)?.done;
      if (r.code !== 0 || !d || d.state !== 'SNAPSHOT_STATE_COMPLETE') throw new Error(`${what} snapshot failed (${r.code}): ${d?.error ?? r.stderr}`);
      const totalMs = Date.now() - tb;
      (mode === 'precopy' ? livePause : savePause).push(Math.max(...d.vms.map((v) => v.pauseMs)));
      (mode === 'precopy' ? liveTotal : saveTotal).push(totalMs);
      step(`${what} snapshot ${d.id} in ${totalMs} ms, pauses ${JSON.stringify(d.vms.map((v) => [v.name, v.pauseMs]))}`);
      const after = await flowing(rx, zero, `streams after the ${what} snapshot`);
      for (const st of after.values()) {
        const p = intact(st);
        if (p) problems.push(`after the ${what} snapshot: ${p}`);
        if (st.nonce !== before.get(st.name)?.nonce) problems.push(`after the ${what} snapshot: ${st.name} restarted`);
      }
      rx = new Map([...after].map(([k, v]) => [k, v.totals.received]));
    };
    for (let round = 1; round <= ROUNDS; round++) {
      if (round > 1) await oneSnapshot('precopy', `live (round ${round})`);
      await oneSnapshot('background', `xl save -c (round ${round})`);
    }
    out.rounds = { livePauseMs: livePause, savePauseMs: savePause, liveTotalMs: liveTotal, saveTotalMs: saveTotal };
    out.bench = {
      pause_ms: { live: median(livePause) as number, save: median(savePause) as number },
      total_s: { live: (median(liveTotal) as number) / 1000, save: (median(saveTotal) as number) / 1000 },
      streams_intact: problems.length === 0,
    };
    out.problems = problems;
    out.ok = problems.length === 0;
    return;
  }

  // Destroy and restore.
  r = await cli(['vne', 'stop', 'xenvne', '--json']);
  if (r.code !== 0) throw new Error(`vne stop: ${r.stderr}`);
  step('VNE stopped (domains destroyed)');
  const marker = new Map(VMS.map((v) => [v.name, fs.existsSync(logOf(v.name)) ? fs.statSync(logOf(v.name)).size : 0]));
  const tr = Date.now();
  r = await cli(['restore', done.id, '--json', '--timeout-ms', '900000']);
  if (r.code !== 0) throw new Error(`restore failed (${r.code}): ${r.stderr.slice(-500)}`);
  out.restoreMs = Date.now() - tr;
  step(`restored in ${out.restoreMs} ms`);
  const snapRx = new Map(VMS.map((v) => [v.name, 0]));
  const afterRestore = await flowing(snapRx, marker, 'streams after the restore');
  for (const s of afterRestore.values()) {
    const p = intact(s);
    if (p) problems.push(`after the restore: ${p}`);
    if (s.nonce !== before.get(s.name)?.nonce) problems.push(`after the restore: ${s.name} has another nonce (rebooted, not restored)`);
  }
  step(`streams after the restore: ${[...afterRestore.values()].map((s) => `${s.name} rx ${s.totals.received} err ${s.totals.errors} rec ${s.totals.reconnects} nonce ${s.nonce}`).join(', ')}`);
  out.afterRestore = Object.fromEntries([...afterRestore].map(([k, s]) => [k, s.totals]));
  await probeSuperFrames('after the restore');
  out.problems = problems;
  out.ok = problems.length === 0;
}

void dom0Main({
  out,
  file: RESULT,
  t0,
  step,
  body: main,
  cleanup: async () => {
    await stopPeer();
    await stopProduct([agent, coordinator], procs);
  },
});
