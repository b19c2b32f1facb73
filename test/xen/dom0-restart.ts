/**
 * Runs INSIDE the test bed's dom0 (test/integration/xen-restart.test.ts): Xen domains outlive
 * the agent (docs/agent-restart.md, "Xen"). A coordinator and an agent in dom0, a VNE of two PV
 * guests streaming checked counters to each other through the agent's switch (as dom0-e2e.ts).
 * Rounds, each: the agent is killed (SIGKILL; SIGTERM; then SIGKILL with an immediate start,
 * for the outage figures), kept down, started again. Checked per round:
 *  - while the agent is down: both domains exist under their domids and are not paused (`xl
 *    list`), the switch's packet sockets on the vNICs' veth pairs are gone (they died with the
 *    agent) while the vifs and the pairs stay in the bridges, the guests keep running (their status lines keep coming on the console), and
 *    (agent down 5 s) the coordinator shows the VNE DEGRADED, both VMs unmanaged;
 *  - after: the same domids, the same guest runs (nonce), each bridge holds the domain's vif and
 *    the pair's bridge end, the switch's two sockets are on the pair's switch end again, every stream moved on with 0 errors and 0 reconnects, the VNE RUNNING without
 *    any command;
 *  - the outage the guests saw: the longest `idle_ms` (time since a stream last received a byte)
 *    in the guests' status lines, which come once a second (so it is exact to about 1 s).
 * Last: the agent killed, guest b's domain destroyed meanwhile, the agent started: the VNE is
 * FAILED with a reason naming b, `vne show` lists a RUNNING and b DEAD, b's state record is
 * gone, a is adopted (same domid, the switch's sockets on its pair again) and keeps running. Writes
 * /vnxen/restart.json.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { xenNames } from '../../agent/drivers/xen/driver';
import { median } from '../bench/proc';
import { sleep, until } from '../support/wait';
import { type Daemon, type Dom0Result, dom0Main, ENDS, flowing, guestLog, intact, sh, startProduct, startVne, statusesAfter, stepper, stopProduct, VAR, VNE, vmStates, vneShow } from './dom0-harness';
import { guestConfig, XEN_TEST_IMAGE_ROOTS, type GuestStatus } from './guest-config';

const out: Dom0Result & { rounds: RoundResult[]; problems: string[]; outageMs?: { median: number; max: number }; dead?: unknown } = { steps: [], rounds: [], problems: [] };
const t0 = Date.now();
const step = stepper('restart', out, t0);
/** --rounds N: SIGKILL + immediate start rounds after the SIGKILL and SIGTERM ones (outage figures). */
const { values: ARGS } = parseArgs({ options: { rounds: { type: 'string', default: '3' }, 'down-ms': { type: 'string', default: '5000' } } });
const ROUNDS = Number(ARGS.rounds);
const DOWN_MS = Number(ARGS['down-ms']);
const NAMES = ENDS.map((e) => e.name);
const names = (vm: string): ReturnType<typeof xenNames> => xenNames(`${VNE}/${vm}`, 1);

interface RoundResult {
  signal: string;
  downMs: number;
  /** Kill to the VNE RUNNING again. */
  runningAfterMs: number;
  /** Kill to every guest having received 192 KiB (3 s of its streams) beyond what it had at the kill. */
  movingAfterMs: number;
  /** Longest idle_ms of a stream seen in the guests' status lines. */
  outageMs: number;
  /** Status lines each guest printed while the agent was down. */
  linesWhileDown: Record<string, number>;
}

interface DomInfo {
  domid: number;
  state: string;
}

/** `xl list`: name → domid and state letters. */
async function xlList(): Promise<Map<string, DomInfo>> {
  const text = await sh('xl', ['list']);
  const m = new Map<string, DomInfo>();
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length >= 5) m.set(f[0] as string, { domid: Number(f[1]), state: f[4] as string });
  }
  return m;
}

/** The interfaces enslaved to a bridge. */
async function bridgePorts(bridge: string): Promise<string[]> {
  const text = await sh('ip', ['-o', 'link', 'show', 'master', bridge]);
  return [...text.matchAll(/^\d+:\s+([^:@\s]+)/gm)].map((m) => m[1] as string);
}

const logSizes = (): Map<string, number> => new Map(NAMES.map((vm) => [vm, fs.existsSync(guestLog(vm)) ? fs.statSync(guestLog(vm)).size : 0]));

/** How many packet sockets are bound to interface `ifname` (/proc/net/packet: the Iface column is the ifindex). */
function packetSockets(ifname: string): number {
  const idx = fs.existsSync(`/sys/class/net/${ifname}/ifindex`) ? fs.readFileSync(`/sys/class/net/${ifname}/ifindex`, 'utf8').trim() : '-';
  return fs.readFileSync('/proc/net/packet', 'utf8').split('\n').slice(1).filter((l) => l.trim().split(/\s+/)[4] === idx).length;
}

/** Problems with a domain's plumbing: its vif and its veth pair's bridge end in its bridge; the switch's read and write sockets on the pair's switch end if `agentUp`, none if not. */
async function plumbing(vm: string, domid: number, agentUp: boolean): Promise<string[]> {
  const n = names(vm);
  const v = n.veths[0] as { sw: string; br: string };
  const ports = await bridgePorts(n.bridges[0] as string);
  const p: string[] = [];
  if (!ports.includes(`vif${domid}.0`)) p.push(`${vm}: vif${domid}.0 is not in bridge ${n.bridges[0]} (${ports.join(' ')})`);
  if (!ports.includes(v.br)) p.push(`${vm}: the veth end ${v.br} is not in bridge ${n.bridges[0]} (${ports.join(' ')})`);
  const socks = fs.existsSync(`/sys/class/net/${v.sw}`) ? packetSockets(v.sw) : -1;
  if (socks !== (agentUp ? 2 : 0)) p.push(`${vm}: ${socks < 0 ? `the switch's veth end ${v.sw} is gone` : `${socks} packet sockets on ${v.sw}, expected ${agentUp ? 2 : 0}`}`);
  return p;
}

async function round(agent: Daemon, signal: NodeJS.Signals, downMs: number, domids: Map<string, number>, before: Map<string, GuestStatus>): Promise<void> {
  const label = `${signal}${downMs ? `, down ${downMs / 1000} s` : ', immediate start'}`;
  const problems: string[] = [];
  const marker = logSizes();
  // What each guest had received when the agent went: the streams count as moving again once they are past it.
  const atKill = new Map(NAMES.map((vm) => [vm, statusesAfter(guestLog(vm)).pop()?.totals.received ?? 0]));
  const tk = Date.now();
  await agent.kill(signal);
  step(`${label}: agent killed`);
  // While it is down: domains there and running, the switch's sockets gone, vifs and pairs still bridged.
  const listed = await xlList();
  for (const vm of NAMES) {
    const d = listed.get(names(vm).domName);
    if (!d) problems.push(`${label}: ${vm}'s domain is gone while the agent is down`);
    else {
      if (d.domid !== domids.get(vm)) problems.push(`${label}: ${vm}'s domid is ${d.domid}, was ${domids.get(vm)}`);
      if (d.state.includes('p')) problems.push(`${label}: ${vm}'s domain is paused while the agent is down (${d.state})`);
      problems.push(...(await plumbing(vm, d.domid, false)).map((x) => `${label}, agent down: ${x}`));
    }
  }
  if (downMs) {
    await sleep(Math.max(0, downMs - (Date.now() - tk))); // kept: the agent's absence being tested
    // The coordinator's view meanwhile: DEGRADED, both VMs unmanaged (they may well run), host unreachable.
    const shown = await vneShow();
    const seen = vmStates(shown);
    step(`${label}: while the agent is down the VNE reads ${shown.state} (${shown.stateReason ?? ''}): ${seen}`);
    if (shown.state !== 'VNE_STATE_DEGRADED') problems.push(`${label}: the VNE reads ${shown.state} while the agent is down, not DEGRADED`);
    if (seen !== 'a UNMANAGED (host unreachable), b UNMANAGED (host unreachable)') problems.push(`${label}: the VMs read "${seen}" while the agent is down`);
  }
  const down = logSizes();
  const linesWhileDown = Object.fromEntries(NAMES.map((vm) => [vm, statusesAfter(guestLog(vm), marker.get(vm)).length - statusesAfter(guestLog(vm), down.get(vm)).length]));
  await agent.start();
  step(`${label}: agent started ${Date.now() - tk} ms after the kill`);
  await until('the VNE RUNNING again', async () => {
    agent.check();
    return (await vneShow()).state === 'VNE_STATE_RUNNING' ? true : null;
  }, { timeoutMs: 600_000, everyMs: 500 });
  const runningAfterMs = Date.now() - tk;
  const after = await flowing({ ends: NAMES, logOf: guestLog, after: atKill, marker, minGrowth: 192 * 1024, what: `streams moving after ${label}`, timeoutMs: 600_000, check: () => agent.check() });
  const movingAfterMs = Date.now() - tk;
  await sleep(3000); // kept: the window in which every stream must keep moving and none break
  const listedAfter = await xlList();
  let outageMs = 0;
  for (const vm of NAMES) {
    const lines = statusesAfter(guestLog(vm), marker.get(vm));
    const last = lines[lines.length - 1] ?? (after.get(vm) as GuestStatus);
    const p = intact(last);
    if (p) problems.push(`after ${label}: ${p}`);
    if (last.nonce !== before.get(vm)?.nonce) problems.push(`after ${label}: ${vm} is another guest run (nonce ${last.nonce}, was ${before.get(vm)?.nonce})`);
    if (last.totals.received <= (after.get(vm) as GuestStatus).totals.received) problems.push(`after ${label}: ${vm}'s streams did not move`);
    const d = listedAfter.get(names(vm).domName);
    if (!d || d.domid !== domids.get(vm)) problems.push(`after ${label}: ${vm}'s domid is ${d?.domid}, was ${domids.get(vm)}`);
    else problems.push(...(await plumbing(vm, d.domid, true)).map((x) => `after ${label}: ${x}`));
    for (const s of lines) for (const i of s.in) outageMs = Math.max(outageMs, i.idle_ms);
    before.set(vm, last);
  }
  if (downMs) for (const vm of NAMES) if ((linesWhileDown[vm] ?? 0) < Math.floor(downMs / 1000) - 1) problems.push(`${label}: ${vm} printed ${linesWhileDown[vm]} status lines while the agent was down ${downMs} ms (it stopped running?)`);
  out.rounds.push({ signal, downMs, runningAfterMs, movingAfterMs, outageMs, linesWhileDown });
  out.problems.push(...problems);
  step(`${label}: VNE RUNNING ${runningAfterMs} ms, streams moving ${movingAfterMs} ms after the kill; longest stream gap ${outageMs} ms; ${problems.length ? problems.join('; ') : 'intact'}`);
}

/** The agent killed, domain b destroyed meanwhile, the agent started: b reported dead, a adopted. */
async function deadWhileAway(agent: Daemon, domids: Map<string, number>): Promise<void> {
  const problems: string[] = [];
  await agent.kill('SIGKILL');
  await sh('xl', ['destroy', names('b').domName]);
  step('agent killed, domain of b destroyed');
  await agent.start();
  const shown = await until('the VNE FAILED', async () => {
    agent.check();
    const v = await vneShow();
    return v.state === 'VNE_STATE_FAILED' ? v : null;
  }, { timeoutMs: 600_000, everyMs: 500 });
  step(`after the agent's start the VNE reads ${shown.state} (${shown.stateReason ?? ''}): ${vmStates(shown)}`);
  if (!/\bb\b/.test(shown.stateReason ?? '')) problems.push(`the VNE's reason does not name VM b: ${JSON.stringify(shown.stateReason)}`);
  if (vmStates(shown) !== 'a RUNNING, b DEAD') problems.push(`the VMs read "${vmStates(shown)}", not "a RUNNING, b DEAD"`);
  const records = fs.existsSync(path.join(VAR, 'vms')) ? fs.readdirSync(path.join(VAR, 'vms')).sort() : [];
  if (records.join(',') !== `${VNE}_a`) problems.push(`state records: ${records.join(',')} (want only ${VNE}_a)`);
  const listed = await xlList();
  const a = listed.get(names('a').domName);
  if (!a || a.domid !== domids.get('a')) problems.push(`a's domid is ${a?.domid}, was ${domids.get('a')}`);
  else {
    if (a.state.includes('p')) problems.push(`a is paused (${a.state})`);
    problems.push(...(await plumbing('a', a.domid, true)));
  }
  if (listed.has(names('b').domName)) problems.push('a domain of b exists again');
  const marker = logSizes().get('a') ?? 0;
  await until('a prints status lines', () => (statusesAfter(guestLog('a'), marker).length >= 2 ? true : null), { timeoutMs: 120_000, everyMs: 500 });
  out.dead = { state: shown.state, reason: shown.stateReason, vms: vmStates(shown), records, problems };
  out.problems.push(...problems.map((p) => `dead while away: ${p}`));
  step(`dead while away: ${problems.length ? problems.join('; ') : 'b reported dead, a adopted and running'}`);
}

let product: { coordinator: Daemon; agent: Daemon } | undefined;

async function main(): Promise<void> {
  if (!(Number.isInteger(ROUNDS) && ROUNDS >= 0)) throw new Error(`--rounds must be a whole number, not ${ARGS.rounds}`);
  product = await startProduct(XEN_TEST_IMAGE_ROOTS, step);
  await startVne(ENDS, (v) => guestConfig({ name: v.name, ip: `${v.ip}/24`, peers: [`${v.peer}:7001`], rate: 64, memMib: 128, mem: 16, memrate: 4, report: 1 }));
  step('VNE started');
  const zero = new Map<string, number>();
  const before = await flowing({ ends: NAMES, logOf: guestLog, after: zero, marker: zero, what: 'streams flowing between the guests' });
  for (const s of before.values()) {
    const p = intact(s);
    if (p) throw new Error(`before the first restart: ${p}`);
  }
  const listed = await xlList();
  const domids = new Map(NAMES.map((vm) => [vm, listed.get(names(vm).domName)?.domid ?? -1]));
  step(`streams flowing; domids ${JSON.stringify(Object.fromEntries(domids))}`);
  for (const vm of NAMES) out.problems.push(...(await plumbing(vm, domids.get(vm) as number, true)).map((x) => `before: ${x}`));
  await round(product.agent, 'SIGKILL', DOWN_MS, domids, before);
  await round(product.agent, 'SIGTERM', DOWN_MS, domids, before);
  for (let i = 0; i < ROUNDS; i++) await round(product.agent, 'SIGKILL', 0, domids, before);
  const quick = out.rounds.filter((r) => r.downMs === 0).map((r) => r.outageMs);
  if (quick.length) out.outageMs = { median: median(quick) as number, max: Math.max(...quick) };
  await deadWhileAway(product.agent, domids);
  out.ok = out.problems.length === 0;
}

void dom0Main({ out, file: '/vnxen/restart.json', t0, step, body: main, cleanup: () => stopProduct([product?.agent, product?.coordinator]) });
