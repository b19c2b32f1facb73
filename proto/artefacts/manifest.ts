/**
 * The snapshot manifest on disk: a ManifestEnvelope (magic, format version, body, SHA-256 of
 * the body) wrapping a ManifestBody, both protobuf (proto/vnsnap/v1/manifest.proto).
 *
 * The format version is independent of the release. Readers accept any minor version of a
 * major they know and refuse a newer major with ERR_UNSUPPORTED_VERSION; a body whose checksum
 * does not match is ERR_CHECKSUM; sizes are capped before anything is parsed, so a hostile or
 * truncated file is an error, never a crash or a huge allocation.
 */
import { createHash } from 'node:crypto';
import * as path from 'node:path';
import * as protobuf from 'protobufjs';
import { VnsnapError } from '../core/errors';
import type { ManifestBody__Output } from '../gen/vnsnap/v1/ManifestBody';
import type { ManifestBody } from '../gen/vnsnap/v1/ManifestBody';
import { protoDir } from '../core/grpc';

export const MANIFEST_MAGIC = 'vnsnap-manifest';
export const MANIFEST_FORMAT_MAJOR = 1;
export const MANIFEST_FORMAT_MINOR = 0;
/** Manifests list artefacts, not data: anything bigger is not a manifest. */
export const MANIFEST_MAX_BYTES = 16 * 1024 * 1024;

let root: protobuf.Root | undefined;

function types(): { envelope: protobuf.Type; body: protobuf.Type } {
  if (!root) {
    const r = new protobuf.Root();
    const dir = protoDir();
    r.resolvePath = (_origin, target) => (path.isAbsolute(target) ? target : path.join(dir, target));
    r.loadSync('vnsnap/v1/manifest.proto', { keepCase: false });
    r.resolveAll();
    root = r;
  }
  return { envelope: root.lookupType('vnsnap.v1.ManifestEnvelope'), body: root.lookupType('vnsnap.v1.ManifestBody') };
}

export function sha256Hex(b: Uint8Array): string {
  return createHash('sha256').update(b).digest('hex');
}

/** Serialize a manifest body into an envelope of the current format version. */
export function encodeManifest(body: ManifestBody, format: { major: number; minor: number } = { major: MANIFEST_FORMAT_MAJOR, minor: MANIFEST_FORMAT_MINOR }): Buffer {
  const t = types();
  let bodyBytes: Uint8Array;
  try {
    // fromObject accepts enum names and converts; verify() would insist on enum numbers.
    bodyBytes = t.body.encode(t.body.fromObject(body)).finish();
  } catch (e) {
    throw new VnsnapError('ERR_INVALID_ARGUMENT', `manifest body is invalid: ${(e as Error).message}`, { cause: e });
  }
  const env = t.envelope.fromObject({ magic: MANIFEST_MAGIC, formatMajor: format.major, formatMinor: format.minor, body: bodyBytes, bodySha256: sha256Hex(bodyBytes) });
  return Buffer.from(t.envelope.encode(env).finish());
}

/** Parse and check a manifest file's bytes. */
export function decodeManifest(bytes: Uint8Array, source = 'manifest'): { body: ManifestBody__Output; formatMajor: number; formatMinor: number } {
  if (bytes.length > MANIFEST_MAX_BYTES) throw new VnsnapError('ERR_DATA_LOSS', `${source} is ${bytes.length} bytes, more than a manifest can be (${MANIFEST_MAX_BYTES})`);
  const t = types();
  let env: { magic: string; formatMajor: number; formatMinor: number; body: Uint8Array; bodySha256: string };
  try {
    env = t.envelope.toObject(t.envelope.decode(bytes), { defaults: true }) as typeof env;
  } catch (e) {
    throw new VnsnapError('ERR_DATA_LOSS', `${source} is not a vnsnap manifest (it does not parse)`, { cause: e });
  }
  if (env.magic !== MANIFEST_MAGIC) throw new VnsnapError('ERR_DATA_LOSS', `${source} is not a vnsnap manifest (magic "${env.magic.slice(0, 40)}")`);
  if (env.formatMajor > MANIFEST_FORMAT_MAJOR) {
    throw new VnsnapError('ERR_UNSUPPORTED_VERSION', `${source} has manifest format ${env.formatMajor}.${env.formatMinor}, newer than this vnsnap reads (${MANIFEST_FORMAT_MAJOR}.x): upgrade vnsnap to restore it`);
  }
  if (env.formatMajor < 1) throw new VnsnapError('ERR_UNSUPPORTED_VERSION', `${source} has manifest format ${env.formatMajor}.${env.formatMinor}, which no vnsnap release wrote`);
  if (sha256Hex(env.body) !== env.bodySha256) throw new VnsnapError('ERR_CHECKSUM', `${source} is corrupt or was modified: its body checksum does not match`);
  let body: ManifestBody__Output;
  try {
    body = t.body.toObject(t.body.decode(env.body), { ...toObjectOptions }) as ManifestBody__Output;
  } catch (e) {
    throw new VnsnapError('ERR_DATA_LOSS', `${source}: the manifest body does not parse`, { cause: e });
  }
  return { body, formatMajor: env.formatMajor, formatMinor: env.formatMinor };
}

const toObjectOptions: protobuf.IConversionOptions = {
  longs: Number,
  enums: String,
  defaults: true,
  arrays: true,
  objects: true,
  oneofs: true,
};

