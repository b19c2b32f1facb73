/**
 * Proto3 JSON in and out, driven by the .proto schema (protobufjs reflection over
 * proto/vnsnap/v1, read from the build's JSON descriptor: proto/core/descriptor-json.ts), so the
 * CLI never keeps a hand-written copy of a message's fields.
 *
 * Reading (`readMessage`): what a person writes in a file. Field names in camelCase (the JSON
 * name) or snake_case (the .proto name); enums by name (or number); 64-bit integers as numbers
 * or decimal strings; `null` means unset; maps are objects; a oneof takes at most one member.
 * Every problem is reported with its path (`vms[1].driver.qemu.memory_mib`) and what was
 * expected, and unknown fields are errors (a typo must not be silently dropped). The result is
 * the camelCase object grpc-js serializes.
 *
 * Writing (`toJson`): a message object as grpc-js delivers it (defaults filled in) → plain proto3
 * JSON: camelCase names, enums as names, 64-bit integers as numbers, without proto-loader's
 * synthetic oneof-name properties (`kind`, `event`). What `vne show --json` prints is therefore
 * accepted back by `vne define`/`vne update`.
 */
import * as protobuf from 'protobufjs/light';
import { COORDINATOR_PROTO_NAMES_DESCRIPTOR, loadDescriptor } from '../../proto/core/descriptor-json';

/** The schema with the .proto's own field names: the build's JSON descriptor (descriptor-json.ts), not the .proto text parsed again. */
function schema(): protobuf.Root {
  return loadDescriptor(COORDINATOR_PROTO_NAMES_DESCRIPTOR);
}

export function messageType(fullName: string): protobuf.Type {
  return schema().lookupType(fullName);
}

export class ProtoJsonError extends Error {
  readonly path: string;
  constructor(p: string, message: string) {
    super(p ? `${p}: ${message}` : message);
    this.name = 'ProtoJsonError';
    this.path = p;
  }
}

const INT32 = new Set(['int32', 'sint32', 'sfixed32']);
const UINT32 = new Set(['uint32', 'fixed32']);
const INT64 = new Set(['int64', 'sint64', 'sfixed64']);
const UINT64 = new Set(['uint64', 'fixed64']);

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'an object';
  if (typeof v === 'string') return `"${v.length > 40 ? v.slice(0, 40) + '…' : v}"`;
  return String(v);
}

/** Edit distance, for "did you mean". */
function distance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min((prev[j] ?? 0) + 1, (cur[j - 1] ?? 0) + 1, (prev[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length] ?? 0;
}

function closest(key: string, known: readonly string[]): string | undefined {
  const norm = (s: string): string => s.replace(/_/g, '').toLowerCase();
  let best: string | undefined;
  let bestD = Infinity;
  for (const k of known) {
    const d = distance(norm(key), norm(k));
    if (d < bestD) {
      best = k;
      bestD = d;
    }
  }
  return bestD <= Math.max(1, Math.floor(key.length / 4)) ? best : undefined;
}

function join(p: string, key: string): string {
  return p ? `${p}.${key}` : key;
}

function readInteger(v: unknown, p: string, min: number, max: number, what: string): number {
  let n: number;
  if (typeof v === 'number') n = v;
  else if (typeof v === 'string' && /^-?\d+$/.test(v.trim())) n = Number(v.trim());
  else throw new ProtoJsonError(p, `expected ${what}, got ${describe(v)}`);
  if (!Number.isInteger(n)) throw new ProtoJsonError(p, `expected ${what}, got ${describe(v)}`);
  if (n < min || n > max) throw new ProtoJsonError(p, `${n} is out of range for ${what} (${min}..${max})`);
  return n;
}

function readScalar(type: string, v: unknown, p: string): unknown {
  if (type === 'string') {
    if (typeof v !== 'string') throw new ProtoJsonError(p, `expected a string, got ${describe(v)}`);
    return v;
  }
  if (type === 'bool') {
    if (typeof v !== 'boolean') throw new ProtoJsonError(p, `expected true or false, got ${describe(v)}`);
    return v;
  }
  if (INT32.has(type)) return readInteger(v, p, -(2 ** 31), 2 ** 31 - 1, 'an integer');
  if (UINT32.has(type)) return readInteger(v, p, 0, 2 ** 32 - 1, 'a non-negative integer');
  if (INT64.has(type)) return readInteger(v, p, Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER, 'an integer');
  if (UINT64.has(type)) return readInteger(v, p, 0, Number.MAX_SAFE_INTEGER, 'a non-negative integer');
  if (type === 'double' || type === 'float') {
    if (typeof v === 'number' && Number.isFinite(v)) return v;
    if (v === 'NaN' || v === 'Infinity' || v === '-Infinity') return Number(v);
    if (typeof v === 'string' && v.trim() !== '' && Number.isFinite(Number(v))) return Number(v);
    throw new ProtoJsonError(p, `expected a number, got ${describe(v)}`);
  }
  if (type === 'bytes') {
    if (typeof v !== 'string' || !/^[A-Za-z0-9+/_-]*={0,2}$/.test(v)) throw new ProtoJsonError(p, `expected base64 bytes, got ${describe(v)}`);
    return Buffer.from(v, 'base64');
  }
  throw new ProtoJsonError(p, `unsupported field type ${type}`);
}

function readEnum(e: protobuf.Enum, v: unknown, p: string): string {
  if (typeof v === 'string' && Object.prototype.hasOwnProperty.call(e.values, v)) return v;
  if (typeof v === 'number') {
    const name = e.valuesById[v];
    if (name !== undefined) return name;
  }
  const names = Object.keys(e.values).filter((n) => !n.endsWith('_UNSPECIFIED'));
  throw new ProtoJsonError(p, `expected one of ${names.join(', ')}, got ${describe(v)}`);
}

function readValue(field: protobuf.Field, v: unknown, p: string): unknown {
  const rt = field.resolvedType;
  if (rt instanceof protobuf.Type) return readMessageAt(rt, v, p);
  if (rt instanceof protobuf.Enum) return readEnum(rt, v, p);
  return readScalar(field.type, v, p);
}

function readMessageAt(type: protobuf.Type, v: unknown, p: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new ProtoJsonError(p, `expected an object (${type.name}), got ${describe(v)}`);
  }
  const out: Record<string, unknown> = {};
  const seen = new Map<string, string>();
  for (const [key, value] of Object.entries(v as Record<string, unknown>)) {
    const field = type.fields[key] ?? type.fieldsArray.find((f) => protobuf.util.camelCase(f.name) === key);
    if (!field) {
      const known = type.fieldsArray.map((f) => protobuf.util.camelCase(f.name));
      const close = closest(key, known);
      throw new ProtoJsonError(join(p, key), `unknown field of ${type.name}${close ? ` (did you mean "${close}"?)` : ''}; known fields: ${known.join(', ')}`);
    }
    const camel = protobuf.util.camelCase(field.name);
    const fp = join(p, key);
    if (seen.has(camel)) throw new ProtoJsonError(fp, `given twice (also as "${seen.get(camel)}")`);
    seen.set(camel, key);
    if (value === null) continue;
    if (field instanceof protobuf.MapField) {
      if (typeof value !== 'object' || Array.isArray(value)) throw new ProtoJsonError(fp, `expected an object (a map), got ${describe(value)}`);
      const m: Record<string, unknown> = {};
      for (const [k, mv] of Object.entries(value as Record<string, unknown>)) m[k] = readValue(field, mv, `${fp}["${k}"]`);
      out[camel] = m;
    } else if (field.repeated) {
      if (!Array.isArray(value)) throw new ProtoJsonError(fp, `expected a list, got ${describe(value)}`);
      out[camel] = value.map((item, i) => readValue(field, item, `${fp}[${i}]`));
    } else {
      out[camel] = readValue(field, value, fp);
    }
  }
  for (const oneof of type.oneofsArray) {
    const set = oneof.fieldsArray.map((f) => protobuf.util.camelCase(f.name)).filter((n) => out[n] !== undefined);
    if (set.length > 1) throw new ProtoJsonError(p, `only one of ${oneof.fieldsArray.map((f) => f.name).join(', ')} may be set, got ${set.join(' and ')}`);
  }
  return out;
}

/** Read proto3 JSON (camelCase or snake_case names) as message `fullName`; throws ProtoJsonError. */
export function readMessage(fullName: string, value: unknown): Record<string, unknown> {
  return readMessageAt(messageType(fullName), value, '');
}

function writeValue(field: protobuf.Field, v: unknown): unknown {
  const rt = field.resolvedType;
  if (rt instanceof protobuf.Type) return writeAt(rt, v);
  if (Buffer.isBuffer(v) || v instanceof Uint8Array) return Buffer.from(v).toString('base64');
  return v;
}

function writeAt(type: protobuf.Type, v: unknown): unknown {
  if (typeof v !== 'object' || v === null) return v;
  const src = v as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const field of type.fieldsArray) {
    const camel = protobuf.util.camelCase(field.name);
    const value = src[camel];
    if (value === undefined || value === null) continue;
    if (field instanceof protobuf.MapField) {
      const m: Record<string, unknown> = {};
      for (const [k, mv] of Object.entries(value as Record<string, unknown>)) m[k] = writeValue(field, mv);
      out[camel] = m;
    } else if (field.repeated && Array.isArray(value)) {
      out[camel] = value.map((item) => writeValue(field, item));
    } else {
      out[camel] = writeValue(field, value);
    }
  }
  return out;
}

/** A received message object → plain proto3 JSON value (see the top of this file). */
export function toJson(fullName: string, message: unknown): unknown {
  return writeAt(messageType(fullName), message);
}
