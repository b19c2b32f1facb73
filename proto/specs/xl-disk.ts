/**
 * A strict reader and writer of xl's disk specification strings (xl-disk-configuration(5)), so
 * the Xen spec policy sees every parameter xl would act on, in particular `script=` (a program
 * dom0 runs as root) and the deprecated `<word>:` target prefixes (xl turns an unknown prefix
 * into `script=block-<word>`), and the Xen driver writes a disk back with only the parameters
 * that were read and judged.
 *
 * Syntax: comma-separated `key=value` pairs, bare flags and positional parameters; positional
 * ones fill target, format, vdev, access in that order (an empty one keeps its default);
 * `target=` takes the rest of the string, commas included, so it comes last. Each parameter at
 * most once. A positional target may carry one of the deprecated prefixes raw:, file:, aio:,
 * tap:aio:, tap2:aio:, phy:, qcow:, qcow2:, vhd: (read as its format or backend type, and then,
 * as in xl's old syntax, the positional parameters after it are vdev, access); any other prefix
 * is refused. Keys other than KNOWN_KEYS and flags other than KNOWN_FLAGS are returned in
 * `other` for the policy to refuse by name.
 *
 * Guarantees: formatDiskSpec writes `format=…, vdev=…, access=…, [devtype=…, backendtype=…,
 * flags…,] target=…` (target last), which parseDiskSpec reads back to the same DiskSpec.
 */
import { VnsnapError } from '../core/errors';

export interface DiskSpec {
  target: string;
  format?: string;
  vdev?: string;
  access?: string;
  devtype?: string;
  backendtype?: string;
  /** Bare flags among KNOWN_FLAGS (cdrom becomes devtype=cdrom). */
  flags: string[];
  /** Every other `key=value` or bare word, as given: the policy refuses them by name. */
  other: string[];
}

const POSITIONAL = ['target', 'format', 'vdev', 'access'] as const;
export const KNOWN_KEYS = ['target', 'format', 'vdev', 'access', 'devtype', 'backendtype'] as const;
export const KNOWN_FLAGS = ['direct-io-safe', 'discard', 'no-discard', 'trusted', 'untrusted'] as const;
type Known = (typeof KNOWN_KEYS)[number];

/** Deprecated target prefixes xl still reads: what each means. */
const PREFIXES: Record<string, { format?: string; backendtype?: string }> = {
  'raw:': { format: 'raw' },
  'file:': { format: 'raw' },
  'aio:': { format: 'raw' },
  'tap:aio:': { format: 'raw', backendtype: 'tap' },
  'tap2:aio:': { format: 'raw', backendtype: 'tap' },
  'phy:': { format: 'raw', backendtype: 'phy' },
  'qcow:': { format: 'qcow' },
  'qcow2:': { format: 'qcow2' },
  'vhd:': { format: 'vhd' },
};

function invalid(field: string, msg: string): VnsnapError {
  return new VnsnapError('ERR_INVALID_ARGUMENT', `${field}: ${msg}`);
}

/** Split off a deprecated prefix of a positional target; refuse an unknown one. */
function unprefix(field: string, target: string, into: Partial<Record<Known, string>>): string {
  if (target === '' || target.startsWith('/')) return target;
  const p = Object.keys(PREFIXES)
    .sort((a, b) => b.length - a.length)
    .find((k) => target.startsWith(k));
  if (!p) {
    const word = /^[^:/]*:/.exec(target)?.[0];
    throw invalid(field, word ? `target prefix "${word}" is not accepted (xl would run the block script it names)` : `target ${JSON.stringify(target.slice(0, 64))} is not an absolute path`);
  }
  const meaning = PREFIXES[p] as { format?: string; backendtype?: string };
  if (meaning.format && into.format === undefined) into.format = meaning.format;
  if (meaning.backendtype && into.backendtype === undefined) into.backendtype = meaning.backendtype;
  return target.slice(p.length);
}

/** Parse one disk specification; `field` names it in messages (e.g. `xen.config disk[0]`). */
export function parseDiskSpec(field: string, spec: string): DiskSpec {
  const set: Partial<Record<Known, string>> = {};
  const flags: string[] = [];
  const other: string[] = [];
  const put = (k: Known, v: string): void => {
    if (set[k] !== undefined) throw invalid(field, `${k} is given twice`);
    set[k] = v;
  };
  let rest = spec;
  let next = 0; // next positional slot
  while (rest.length > 0 || next === 0) {
    const lead = rest.replace(/^\s+/, '');
    if (lead.startsWith('target=')) {
      put('target', lead.slice('target='.length).trim());
      break;
    }
    const comma = rest.indexOf(',');
    const param = (comma < 0 ? rest : rest.slice(0, comma)).trim();
    rest = comma < 0 ? '' : rest.slice(comma + 1);
    const eq = param.indexOf('=');
    if (eq > 0) {
      const k = param.slice(0, eq).trim();
      const v = param.slice(eq + 1).trim();
      if ((KNOWN_KEYS as readonly string[]).includes(k)) put(k as Known, v);
      else other.push(param);
    } else if (param === 'cdrom') put('devtype', 'cdrom');
    else if ((KNOWN_FLAGS as readonly string[]).includes(param)) {
      if (flags.includes(param)) throw invalid(field, `${param} is given twice`);
      flags.push(param);
    } else if (/^[A-Za-z][A-Za-z0-9_-]*$/.test(param) && next >= POSITIONAL.length) other.push(param);
    else {
      const slot = POSITIONAL[next++];
      if (slot === undefined) throw invalid(field, `too many positional parameters (${JSON.stringify(param.slice(0, 64))})`);
      if (param !== '' && slot === 'target') {
        const bare = unprefix(field, param, set);
        put(slot, bare);
        if (bare !== param) next++; // deprecated form: PREFIX:target,vdev,access (no format slot)
      } else if (param !== '') put(slot, param);
    }
    if (comma < 0) break;
  }
  const target = set.target ?? '';
  if (target !== '' && !target.startsWith('/')) set.target = unprefix(field, target, set);
  const out: DiskSpec = { target: set.target ?? '', flags, other };
  for (const k of ['format', 'vdev', 'access', 'devtype', 'backendtype'] as const) if (set[k] !== undefined) out[k] = set[k];
  return out;
}

/** The canonical text of a disk: named parameters, target last. */
export function formatDiskSpec(d: DiskSpec): string {
  const parts: string[] = [];
  for (const k of ['format', 'vdev', 'access', 'devtype', 'backendtype'] as const) if (d[k] !== undefined) parts.push(`${k}=${d[k]}`);
  parts.push(...d.flags, `target=${d.target}`);
  return parts.join(', ');
}
