/**
 * The contract as JSON descriptors: protobufjs's JSON form of a parsed set of .proto files, written
 * by the build (`npm run build` runs gen-descriptors.ts) into proto/gen/json/, so that a process
 * started per command (the CLI) neither parses .proto text at its start nor loads the parser
 * (protobufjs's light build reads the JSON; docs/performance.md, branch `wallstart`).
 *
 * Guarantees:
 *  - a descriptor is used only while it was built from exactly the .proto files there now: each
 *    file's SHA-256 is in the descriptor and checked at load; a descriptor missing, unreadable or
 *    older than a .proto file (edited after the build) makes loadDescriptor() parse the .proto
 *    files themselves, so what a caller gets is always the contract in proto/;
 *  - loadDescriptor() returns a resolved Root equal to what parsing the descriptor's files with its
 *    keepCase gives (test/unit/descriptor-json.test.ts compares the two).
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as protobuf from 'protobufjs/light';
import { protoDir } from './proto-dir';

/** One descriptor: the .proto files it holds (with what they import) and how fields are named. */
export interface DescriptorSpec {
  name: string;
  files: readonly string[];
  /** true: fields named as in the .proto (snake_case); false: camelCase, as @grpc/proto-loader's keepCase false. */
  keepCase: boolean;
}

/** The CoordinatorService with camelCase fields, for its grpc-js client (coordinator-client.ts). */
export const COORDINATOR_DESCRIPTOR: DescriptorSpec = { name: 'coordinator', files: ['vnsnap/v1/coordinator.proto'], keepCase: false };

/** coordinator.proto and types.proto with the .proto's own field names, for the CLI's proto3 JSON (coordinator/cli/proto-json.ts). */
export const COORDINATOR_PROTO_NAMES_DESCRIPTOR: DescriptorSpec = { name: 'coordinator-proto-names', files: ['vnsnap/v1/types.proto', 'vnsnap/v1/coordinator.proto'], keepCase: true };

/** Every descriptor the build writes. */
export const DESCRIPTORS: readonly DescriptorSpec[] = [COORDINATOR_DESCRIPTOR, COORDINATOR_PROTO_NAMES_DESCRIPTOR];

/** A descriptor file: the .proto files it was built from (path under proto/ → SHA-256), keepCase, the Root as JSON. */
interface DescriptorJson {
  sources: Record<string, string>;
  keepCase: boolean;
  root: protobuf.INamespace;
}

/** Where the build writes a descriptor. */
export function descriptorFile(spec: DescriptorSpec, dir = protoDir()): string {
  return path.join(dir, 'gen', 'json', `${spec.name}.json`);
}

function sha256(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/**
 * The descriptor's .proto files parsed (with protobufjs's full build, loaded only here: the build
 * and a stale descriptor need it) and resolved, with the SHA-256 of every file read.
 */
export function parseProtos(spec: DescriptorSpec, dir = protoDir()): { root: protobuf.Root; sources: Record<string, string> } {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const full = require('protobufjs') as typeof import('protobufjs');
  const root = new full.Root();
  root.resolvePath = (_origin, target) => (path.isAbsolute(target) ? target : path.join(dir, target));
  root.loadSync([...spec.files], { keepCase: spec.keepCase });
  root.resolveAll();
  const sources: Record<string, string> = {};
  for (const f of [...root.files].sort()) sources[path.relative(dir, f)] = sha256(f);
  return { root, sources };
}

/** Write one descriptor (to a temporary name, then renamed: a reader never sees part of one). */
export function writeDescriptor(spec: DescriptorSpec, dir = protoDir()): string {
  const { root, sources } = parseProtos(spec, dir);
  const file = descriptorFile(spec, dir);
  const json: DescriptorJson = { sources, keepCase: spec.keepCase, root: root.toJSON() };
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(json));
  fs.renameSync(tmp, file);
  return file;
}

/** The built descriptor when it is there and built from the .proto files as they are now; else undefined. */
function fromBuild(spec: DescriptorSpec, dir: string): protobuf.Root | undefined {
  let j: DescriptorJson;
  try {
    j = JSON.parse(fs.readFileSync(descriptorFile(spec, dir), 'utf8')) as DescriptorJson;
  } catch {
    return undefined;
  }
  if (j.keepCase !== spec.keepCase || typeof j.sources !== 'object' || j.sources === null || !j.root) return undefined;
  const files = Object.keys(j.sources);
  if (!spec.files.every((f) => files.includes(f))) return undefined;
  for (const f of files) {
    try {
      if (sha256(path.join(dir, f)) !== j.sources[f]) return undefined;
    } catch {
      return undefined;
    }
  }
  const root = protobuf.Root.fromJSON(j.root);
  root.resolveAll();
  return root;
}

const loaded = new Map<string, protobuf.Root>();

/** The descriptor's Root, resolved: from the build's JSON when it is current, else parsed from the .proto files (module comment). */
export function loadDescriptor(spec: DescriptorSpec, dir = protoDir()): protobuf.Root {
  const key = `${dir}\0${spec.name}`;
  let root = loaded.get(key);
  if (!root) {
    root = fromBuild(spec, dir) ?? parseProtos(spec, dir).root;
    loaded.set(key, root);
  }
  return root;
}

/** Whether the build's descriptor is current (for tests and the build's own check). */
export function descriptorIsCurrent(spec: DescriptorSpec, dir = protoDir()): boolean {
  return fromBuild(spec, dir) !== undefined;
}
