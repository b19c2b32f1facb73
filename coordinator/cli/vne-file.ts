/**
 * Reading a VNE definition file for `vne define` / `vne update`.
 *
 * The file holds a Vne in proto3 JSON (camelCase or snake_case field names), or a
 * DefineVneRequest wrapping one (`{"vne": {...}}`). What can be checked without the coordinator
 * is checked here and reported with the file name and the field's path; everything that needs
 * the coordinator's knowledge (which agents exist, whether the name is taken) is left to it.
 *
 * Checked locally: valid JSON; known fields of the right types (proto-json.ts); a name; VNI
 * within 24 bits; VM names present and unique; every VM has a host and exactly one driver;
 * MACs are unicast `xx:xx:xx:xx:xx:xx` and unique within the VNE; sim peers name VMs of the VNE.
 * Fields the coordinator owns (generation, epoch, state, timestamps, placement) may be present
 * (so `vne show --json` output can be edited and fed back) and are ignored by the coordinator.
 */
import * as fs from 'node:fs';
import type { Vne } from '../../proto/gen/vnsnap/v1/Vne';
import { CliError, EXIT } from './exit-codes';
import { ProtoJsonError, readMessage } from './proto-json';

export const MAX_VNI = 0xff_ffff;
const MAX_FILE_BYTES = 4 * 1024 * 1024;
const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

/** "at line L column C" for a JSON.parse error, whichever form V8 reported the position in. */
function jsonPosition(text: string, message: string): string {
  const lc = /line (\d+) column (\d+)/.exec(message);
  if (lc) return `line ${lc[1]} column ${lc[2]}`;
  const pos = /position (\d+)/.exec(message);
  if (!pos) return text.trim() === '' ? 'the file is empty' : 'at the end of the file';
  const before = text.slice(0, Number(pos[1]));
  const line = before.split('\n').length;
  const column = Number(pos[1]) - before.lastIndexOf('\n');
  return `line ${line} column ${column}`;
}

function jsonProblem(message: string): string {
  // V8: `Unexpected token } in JSON at position 42`, `Expected ',' or '}' after property value
  // in JSON at position 42 (line 3 column 5)`, `Unexpected end of JSON input`.
  return message
    .replace(/\s*\(line \d+ column \d+\)/, '')
    .replace(/,? ?"[^"]*"? is not valid JSON$/, '')
    .replace(/ in JSON at position \d+/, '')
    .replace(/ in JSON$/, '')
    .replace(/^Unexpected end of JSON input$/, 'unexpected end of input')
    .trim();
}

/** Parse JSON text, errors naming the file, the problem and where it is. */
export function parseJsonText(file: string, text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    const msg = (e as Error).message;
    const where = jsonPosition(text, msg);
    const problem = jsonProblem(msg);
    return fail(file, `not valid JSON: ${problem}${where === 'the file is empty' ? ' (the file is empty)' : ` at ${where}`}`);
  }
}

function fail(file: string, problem: string): never {
  throw new CliError(EXIT.USAGE, `${file}: ${problem}`, 'ERR_INVALID_ARGUMENT');
}

/** Check what a Vne must satisfy whatever the coordinator knows; returns the problems. */
export function vneProblems(vne: Vne): string[] {
  const problems: string[] = [];
  const name = vne.name ?? '';
  if (name.trim() === '') problems.push('name: a VNE needs a name');
  else if (/[\s/]/.test(name)) problems.push(`name: "${name}" must not contain spaces or "/"`);
  if ((vne.vni ?? 0) > MAX_VNI) problems.push(`vni: ${vne.vni} does not fit in 24 bits (at most ${MAX_VNI})`);
  const vms = vne.vms ?? [];
  const names = new Map<string, number>();
  const macs = new Map<string, string>();
  vms.forEach((vm, i) => {
    const at = `vms[${i}]`;
    const vmName = vm.name ?? '';
    if (vmName.trim() === '') problems.push(`${at}.name: every VM needs a name`);
    else if (names.has(vmName)) problems.push(`${at}.name: "${vmName}" is also the name of vms[${names.get(vmName)}]`);
    else names.set(vmName, i);
    if ((vm.host ?? '').trim() === '') problems.push(`${at}.host: every VM needs the agent id of its host`);
    (vm.macs ?? []).forEach((mac, j) => {
      const m = mac.toLowerCase();
      if (!MAC.test(m)) problems.push(`${at}.macs[${j}]: "${mac}" is not a MAC address (like 52:54:00:12:34:56)`);
      else if ((parseInt(m.slice(0, 2), 16) & 1) === 1) problems.push(`${at}.macs[${j}]: ${mac} is a multicast address; a vNIC needs a unicast one`);
      else if (macs.has(m)) problems.push(`${at}.macs[${j}]: ${mac} is also used by ${macs.get(m)}`);
      else macs.set(m, `${at} (${vmName})`);
    });
    const d = vm.driver ?? {};
    const kinds = (['sim', 'qemu', 'xen'] as const).filter((k) => d[k] !== undefined && d[k] !== null);
    if (kinds.length === 0) problems.push(`${at}.driver: give one of sim, qemu or xen`);
  });
  vms.forEach((vm, i) => {
    (vm.driver?.sim?.peers ?? []).forEach((peer, j) => {
      if (!names.has(peer)) problems.push(`vms[${i}].driver.sim.peers[${j}]: "${peer}" is not a VM of this VNE`);
      else if (peer === vm.name) problems.push(`vms[${i}].driver.sim.peers[${j}]: a VM cannot be its own peer`);
    });
  });
  return problems;
}

/** Parse and check a VNE definition given as text (`file` names it in messages). */
export function parseVneText(file: string, text: string): Vne {
  let value = parseJsonText(file, text);
  if (typeof value === 'object' && value !== null && !Array.isArray(value)) {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === 'vne') value = (value as { vne: unknown }).vne;
  }
  let vne: Vne;
  try {
    vne = readMessage('vnsnap.v1.Vne', value) as Vne;
  } catch (e) {
    if (e instanceof ProtoJsonError) fail(file, e.message);
    throw e;
  }
  const problems = vneProblems(vne);
  if (problems.length === 1) fail(file, problems[0] as string);
  if (problems.length > 1) fail(file, `${problems.length} problems: ${problems.join('; ')}`);
  return vne;
}

export function readVneFile(file: string): Vne {
  let text: string;
  try {
    const st = fs.statSync(file);
    if (st.isDirectory()) fail(file, 'is a directory, not a JSON file');
    if (st.size > MAX_FILE_BYTES) fail(file, `is ${st.size} bytes; a VNE definition is at most ${MAX_FILE_BYTES}`);
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if (e instanceof CliError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') fail(file, 'no such file');
    if (code === 'EACCES') fail(file, 'permission denied');
    fail(file, `cannot read it (${(e as Error).message})`);
  }
  return parseVneText(file, text);
}
