import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { StoreManifests } from '../../coordinator/manifest-store';
import { CasStore } from '../../proto/store/cas-store';
import { LocalDirStore } from '../../proto/store/local-dir';
import { LocalObjects } from '../../proto/store/local-objects';
import { ERROR_CODES, isVnsnapError, VnsnapError } from '../../proto/core/errors';
import { fromServiceError, GRPC_STATUS, toServiceError } from '../../proto/core/grpc-status';
import { loadVnsnap } from '../../proto/core/grpc';
import { decodeManifest, encodeManifest, MANIFEST_MAX_BYTES, sha256Hex } from '../../proto/artefacts/manifest';
import type { ServiceError } from '@grpc/grpc-js';

const body = {
  snapshotId: 'snap-1',
  vne: { name: 'blue', vni: 100, generation: 2, epoch: 3, vms: [{ name: 'vm1', host: 'h1', macs: ['52:54:00:00:00:01'], driver: { sim: { memoryMib: 4, dirtyRateMibS: 1, frameRateHz: 10, peers: ['vm2'] } } }] },
  epoch: 3,
  mode: 'SNAPSHOT_MODE_PRECOPY',
  createdUnixMs: 1_795_420_000_000,
  vms: [{ name: 'vm1', host: 'h1', pauseMs: 4.5, cutUnixUs: 1_795_420_000_000_123 }],
  artefacts: [{ path: 'snapshots/snap-1/vm1.mem', size: 4194304, sha256: 'ab'.repeat(32), kind: 'ARTEFACT_KIND_MEMORY', owner: 'vm1' }],
  vnsnapVersion: '0.1.0',
};

describe('manifest', () => {
  it('round-trips through the versioned, checksummed envelope', () => {
    const bytes = encodeManifest(body as never);
    const m = decodeManifest(bytes);
    assert.equal(m.formatMajor, 1);
    assert.equal(m.body.snapshotId, 'snap-1');
    assert.equal(m.body.vne?.vms[0]?.driver?.sim?.memoryMib, 4);
    assert.equal(m.body.vne?.vms[0]?.driver?.kind, 'sim');
    assert.equal(m.body.vms[0]?.cutUnixUs, 1_795_420_000_000_123);
    assert.equal(m.body.artefacts[0]?.kind, 'ARTEFACT_KIND_MEMORY');
    assert.equal(m.body.mode, 'SNAPSHOT_MODE_PRECOPY');
  });

  it('accepts a newer minor version and refuses a newer major version with a clear error', () => {
    assert.equal(decodeManifest(encodeManifest(body as never, { major: 1, minor: 7 })).formatMinor, 7);
    assert.throws(
      () => decodeManifest(encodeManifest(body as never, { major: 2, minor: 0 }), 'snap-1/manifest.pb'),
      (e) => isVnsnapError(e, 'ERR_UNSUPPORTED_VERSION') && (e as Error).message === 'snap-1/manifest.pb has manifest format 2.0, newer than this vnsnap reads (1.x): upgrade vnsnap to restore it',
    );
  });

  it('detects a tampered body, garbage and oversized input', () => {
    const bytes = encodeManifest(body as never);
    const i = bytes.indexOf(Buffer.from('snapshots/snap-1/vm1.mem'));
    const tampered = Buffer.from(bytes);
    tampered[i + 10] = 'X'.charCodeAt(0);
    assert.throws(() => decodeManifest(tampered), (e) => isVnsnapError(e, 'ERR_CHECKSUM'));
    assert.throws(() => decodeManifest(Buffer.from('hello world, not a manifest')), (e) => isVnsnapError(e, 'ERR_DATA_LOSS'));
    assert.throws(() => decodeManifest(Buffer.alloc(17 * 1024 * 1024)), (e) => isVnsnapError(e, 'ERR_DATA_LOSS'));
    assert.equal(sha256Hex(Buffer.from('abc')), 'ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  });
});

describe('gRPC contract', () => {
  it('loads both services from the .proto files', () => {
    const pkg = loadVnsnap();
    assert.deepEqual(Object.keys(pkg.vnsnap.v1.CoordinatorService.service).sort().slice(0, 4), ['CollectGarbage', 'CreateSnapshot', 'DefineVne', 'DeleteSchedule']);
    assert.deepEqual(Object.keys(pkg.vnsnap.v1.AgentService.service), ['Session']);
  });

  it('maps every error code to a gRPC status through one table, and back', () => {
    for (const c of ERROR_CODES) assert.ok(GRPC_STATUS[c] !== undefined, c);
    const se = toServiceError(new VnsnapError('ERR_VNE_UNKNOWN', 'unknown VNE "x"'));
    assert.equal(se.code, 5); // NOT_FOUND
    const back = fromServiceError({ ...se, message: '', name: 'Error' } as ServiceError);
    assert.equal(back.code, 'ERR_VNE_UNKNOWN');
    assert.equal(back.message, 'unknown VNE "x"');
    assert.equal(toServiceError(new Error('boom')).code, 13);
  });
});

describe('the coordinator\'s manifest store (over the whole-file store)', () => {
  let dir: string;
  let manifests: StoreManifests;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-manifests-'));
    manifests = new StoreManifests(new LocalDirStore(dir));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('writes atomically, reads back, refuses what is absent or too big to be a manifest', async () => {
    const bytes = encodeManifest(body as never);
    await manifests.write('snapshots/snap-1/manifest.pb', bytes);
    assert.deepEqual(fs.readdirSync(path.join(dir, 'snapshots/snap-1')), ['manifest.pb'], 'no temporary file left');
    assert.deepEqual(await manifests.read('snapshots/snap-1/manifest.pb'), bytes);
    await assert.rejects(manifests.read('snapshots/snap-2/manifest.pb'), (e) => isVnsnapError(e, 'ERR_NOT_FOUND') && (e as Error).message === 'manifest snapshots/snap-2/manifest.pb does not exist in the store');
    fs.truncateSync(path.join(dir, 'snapshots/snap-1/manifest.pb'), MANIFEST_MAX_BYTES + 1);
    await assert.rejects(
      manifests.read('snapshots/snap-1/manifest.pb'),
      (e) => isVnsnapError(e, 'ERR_DATA_LOSS') && (e as Error).message === `snapshots/snap-1/manifest.pb is ${MANIFEST_MAX_BYTES + 1} bytes, more than a manifest can be (${MANIFEST_MAX_BYTES})`,
    );
    await assert.rejects(manifests.write('../outside.pb', bytes), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT'));
    assert.equal(fs.existsSync(path.join(dir, '..', 'outside.pb')), false);
  });

  it('remove deletes the manifest and its directory once nothing else is in it; it is idempotent', async () => {
    await manifests.write('snapshots/a/manifest.pb', Buffer.from('m'));
    fs.writeFileSync(path.join(dir, 'snapshots/a/vm1.mem'), 'artefact');
    await manifests.remove('snapshots/a/manifest.pb');
    assert.deepEqual(fs.readdirSync(path.join(dir, 'snapshots/a')), ['vm1.mem']);
    fs.rmSync(path.join(dir, 'snapshots/a/vm1.mem'));
    await manifests.write('snapshots/a/manifest.pb', Buffer.from('m'));
    await manifests.remove('snapshots/a/manifest.pb');
    await manifests.remove('snapshots/a/manifest.pb');
    assert.deepEqual(fs.readdirSync(path.join(dir, 'snapshots')), []);
  });
});

describe('the coordinator\'s manifest store (over the content-addressed store)', () => {
  let dir: string;
  let store: CasStore;
  let manifests: StoreManifests;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-manifests-cas-'));
    store = new CasStore(new LocalObjects(dir));
    manifests = new StoreManifests(store);
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('writes, reads back, refuses what is absent or too big, removes idempotently', async () => {
    const bytes = encodeManifest(body as never);
    await manifests.write('snapshots/snap-1/manifest.pb', bytes);
    assert.deepEqual(await manifests.read('snapshots/snap-1/manifest.pb'), bytes);
    assert.deepEqual(await store.list('snapshots/'), ['snapshots/snap-1/manifest.pb']);
    await assert.rejects(manifests.read('snapshots/snap-2/manifest.pb'), (e) => isVnsnapError(e, 'ERR_NOT_FOUND') && (e as Error).message === 'manifest snapshots/snap-2/manifest.pb does not exist in the store');
    await store.put('snapshots/big/manifest.pb', Buffer.alloc(MANIFEST_MAX_BYTES + 1, 1));
    await assert.rejects(
      manifests.read('snapshots/big/manifest.pb'),
      (e) => isVnsnapError(e, 'ERR_DATA_LOSS') && (e as Error).message === `snapshots/big/manifest.pb is ${MANIFEST_MAX_BYTES + 1} bytes, more than a manifest can be (${MANIFEST_MAX_BYTES})`,
    );
    await assert.rejects(manifests.write('../outside.pb', bytes), (e) => isVnsnapError(e, 'ERR_INVALID_ARGUMENT'));
    await manifests.remove('snapshots/snap-1/manifest.pb');
    await manifests.remove('snapshots/snap-1/manifest.pb');
    assert.deepEqual(await store.list('snapshots/snap-1/'), []);
  });
});
