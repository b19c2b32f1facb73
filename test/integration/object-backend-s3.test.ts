/**
 * S3Objects on a real S3 server: one single-node Ceph RADOS Gateway (test/support/ceph-rgw.sh)
 * for the whole file, on loopback, removed afterwards even when a test fails. The ObjectBackend
 * compliance suite runs on it (the bucket emptied after each test), then what only a server
 * shows: the SnapshotStore compliance suite on CasStore over this backend (content-addressed,
 * small chunks so every artefact spans many objects), the gateway killed in the middle of an upload (ERR_UNAVAILABLE, and after its restart
 * the key does not exist), refused credentials (ERR_PERMISSION_DENIED), a bucket quota
 * (ERR_STORE_FULL), credentials from an INI file and from the environment, an unreachable
 * endpoint. It prints the cold start and PUT/GET throughput of 1 MiB objects (docs/storage.md).
 */
import { strict as assert } from 'node:assert';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CasStore } from '../../proto/store/cas-store';
import { S3Objects, loadS3Credentials, type S3ObjectsOptions } from '../../proto/store/s3-objects';
import { CEPH_RGW_SCRIPT, cephRgwAvailable, startCephRgw, type CephRgw } from '../support/ceph-rgw';
import { describeObjectBackendCompliance, rejectsWith } from '../support/compliance/object-backend';
import { snapshotStoreCompliance } from '../support/compliance/store';
import { until } from '../support/wait';

const PREFIX = 'vnsnap-it-s3';
const MiB = 1 << 20;

describe('S3Objects on a real Ceph RADOS Gateway', function () {
  this.timeout(180_000);
  let rgw: CephRgw | undefined;
  const clients: S3Objects[] = [];

  const cluster = (): CephRgw => {
    if (!rgw) throw new Error('the RGW cluster is not running');
    return rgw;
  };
  /** A backend on the test bucket (closed after the file). */
  const backend = (over: Partial<S3ObjectsOptions> = {}): S3Objects => {
    const c = cluster();
    const b = new S3Objects({ endpoint: c.endpoint, bucket: c.bucket, region: c.region, credentialsFile: c.credentialsFile, connectTimeoutMs: 2000, requestTimeoutMs: 30_000, ...over });
    clients.push(b);
    return b;
  };
  /** Remove every object of the bucket. */
  const empty = async (b: S3Objects): Promise<void> => {
    for (const k of await b.list('')) await b.delete(k);
  };

  before(async function () {
    if (!cephRgwAvailable()) this.skip();
    rgw = await startCephRgw(PREFIX);
    console.log(`      RGW cold start (mon + memstore OSD + rgw + user + bucket): ${rgw.coldStartMs} ms`);
  });
  after(async () => {
    for (const c of clients) c.close();
    await rgw?.stop();
  });

  describeObjectBackendCompliance('S3Objects on Ceph RGW', {
    open: async () => backend(),
    close: async (b) => empty(b as S3Objects),
    unreachable: () => backend({ endpoint: 'http://127.0.0.1:1', maxAttempts: 1, connectTimeoutMs: 500 }),
  });

  snapshotStoreCompliance('CasStore over S3Objects on Ceph RGW', {
    dedup: true,
    blockImages: true,
    open: async () => new CasStore(backend(), { chunker: { min: 1024, avg: 4096, max: 16384 } }),
    close: async (s) => empty((s as CasStore).backend as S3Objects),
  });

  snapshotStoreCompliance('CasStore in packs over S3Objects on Ceph RGW', {
    dedup: true,
    blockImages: true,
    open: async () => new CasStore(backend(), { chunker: { min: 1024, avg: 4096, max: 16384 }, pack: { targetBytes: 32 * 1024, rangeBytes: 16 * 1024, aheadBytes: 48 * 1024 } }),
    close: async (s) => empty((s as CasStore).backend as S3Objects),
  });

  describe('faults and configuration', () => {
    // Before the kill below: a quota change notifies every gateway watching the bucket, and a
    // killed gateway's watch keeps that waiting ~20 s until the OSD times the watch out.
    it('a bucket over its quota is ERR_STORE_FULL and the object is not stored', async () => {
      const c = cluster();
      const b = backend();
      execFileSync('bash', [CEPH_RGW_SCRIPT, 'quota', c.dir, String(64 * 1024)], { stdio: 'pipe' });
      try {
        await rejectsWith(b.put('quota/big', Buffer.alloc(128 * 1024, 1)), 'ERR_STORE_FULL', /put quota\/big failed: the bucket is full/);
        assert.equal(await b.head('quota/big'), null);
      } finally {
        execFileSync('bash', [CEPH_RGW_SCRIPT, 'quota', c.dir, 'off'], { stdio: 'pipe' });
      }
      await b.put('quota/big', Buffer.alloc(128 * 1024, 1));
      await b.delete('quota/big');
    });

    it('the gateway killed in the middle of a put: ERR_UNAVAILABLE, and after its restart the key does not exist', async () => {
      const c = cluster();
      const port = new URL(c.endpoint).port;
      const b = backend();
      const f = backend({ maxAttempts: 2, requestTimeoutMs: 10_000 });
      await b.put('fault/before', Buffer.from('kept'));
      // Freeze the gateway, so that the put is certainly under way (connected, request sent, no
      // answer) and not finished when the gateway dies. A fresh client opens a new connection.
      const established = (): number => execFileSync('ss', ['-Htn', 'state', 'established', `dport = :${port}`], { encoding: 'utf8' }).split('\n').filter((l) => l.trim() !== '').length;
      const pid = Number(fs.readFileSync(path.join(c.dir, 'run', 'client.rgw.test.pid'), 'utf8'));
      const before = established();
      process.kill(pid, 'SIGSTOP');
      try {
        const put = f.put('fault/mid-upload', Buffer.alloc(64 * MiB, 7));
        const outcome = put.then(
          () => null,
          (e: unknown) => e,
        );
        await until('the put to connect to the frozen gateway', () => established() > before);
        await c.killRgw();
        const err = await outcome;
        assert.ok(err !== null, 'the put failed');
        await rejectsWith(Promise.reject(err), 'ERR_UNAVAILABLE', /^s3 http:\/\/127\.0\.0\.1:\d+\/vnsnap-test: put fault\/mid-upload failed: the S3 endpoint cannot be reached/);
      } finally {
        // Whatever happened, leave a running gateway for the tests after this one.
        if (fs.existsSync(path.join(c.dir, 'run', 'client.rgw.test.pid'))) await c.killRgw();
        await c.startRgw();
      }
      assert.equal(await b.head('fault/mid-upload'), null);
      await rejectsWith(b.get('fault/mid-upload'), 'ERR_NOT_FOUND');
      assert.deepEqual(await b.list('fault/'), ['fault/before']);
      assert.deepEqual(await b.get('fault/before'), Buffer.from('kept'));
      await b.delete('fault/before');
    });

    it('refused credentials are ERR_PERMISSION_DENIED on every operation', async () => {
      const c = cluster();
      const good = loadS3Credentials(c.credentialsFile);
      const dir = fs.mkdtempSync(path.join(c.dir, 'creds-'));
      const wrongSecret = path.join(dir, 'wrong-secret.json');
      fs.writeFileSync(wrongSecret, JSON.stringify({ accessKeyId: good.accessKeyId, secretAccessKey: 'not-the-secret' }));
      const unknownKey = path.join(dir, 'unknown-key.json');
      fs.writeFileSync(unknownKey, JSON.stringify({ accessKeyId: 'NOSUCHKEY', secretAccessKey: good.secretAccessKey }));
      for (const file of [wrongSecret, unknownKey]) {
        const b = backend({ credentialsFile: file });
        const denied = /: (put|get|list of prefix "") ?[^ ]* ?failed: the S3 credentials were refused/;
        await rejectsWith(b.put('denied/x', Buffer.from('x')), 'ERR_PERMISSION_DENIED', denied);
        await rejectsWith(b.get('denied/x'), 'ERR_PERMISSION_DENIED', denied);
        await rejectsWith(b.list(''), 'ERR_PERMISSION_DENIED', denied);
      }
      assert.deepEqual(await backend().list('denied/'), []);
    });

    it('credentials from an INI file (a named profile) and from the environment', async () => {
      const c = cluster();
      const good = loadS3Credentials(c.credentialsFile);
      const ini = path.join(fs.mkdtempSync(path.join(c.dir, 'creds-')), 'credentials');
      fs.writeFileSync(ini, `[default]\naws_access_key_id = WRONG\naws_secret_access_key = wrong\n\n[profile vnsnap]\naws_access_key_id = ${good.accessKeyId}\naws_secret_access_key = ${good.secretAccessKey}\n`);
      const b = backend({ credentialsFile: ini, profile: 'vnsnap' });
      await b.put('creds/ini', Buffer.from('ini'));
      assert.deepEqual(await b.get('creds/ini'), Buffer.from('ini'));
      const saved = { id: process.env.AWS_ACCESS_KEY_ID, secret: process.env.AWS_SECRET_ACCESS_KEY };
      process.env.AWS_ACCESS_KEY_ID = good.accessKeyId;
      process.env.AWS_SECRET_ACCESS_KEY = good.secretAccessKey;
      try {
        const e = backend({ credentialsFile: undefined });
        assert.deepEqual(await e.get('creds/ini'), Buffer.from('ini'));
        await e.delete('creds/ini');
      } finally {
        for (const [k, v] of [['AWS_ACCESS_KEY_ID', saved.id], ['AWS_SECRET_ACCESS_KEY', saved.secret]] as const) {
          if (v === undefined) delete process.env[k];
          else process.env[k] = v;
        }
      }
      assert.throws(() => loadS3Credentials(undefined, 'default', {}), (e: Error) => /AWS_ACCESS_KEY_ID/.test(e.message) && (e as { code?: string }).code === 'ERR_CONFIG');
      assert.throws(() => loadS3Credentials(ini, 'absent'), (e: Error) => e.message === `S3 credentials file ${ini} holds no access key and secret in profile [absent]`);
    });

    it('an endpoint nobody listens on is ERR_UNAVAILABLE, quickly', async () => {
      const b = backend({ endpoint: 'http://127.0.0.1:1', maxAttempts: 1, connectTimeoutMs: 500 });
      const t0 = Date.now();
      await rejectsWith(b.get('x/y'), 'ERR_UNAVAILABLE', /^s3 http:\/\/127\.0\.0\.1:1\/vnsnap-test: get x\/y failed: the S3 endpoint cannot be reached/);
      await rejectsWith(b.list(''), 'ERR_UNAVAILABLE');
      assert.ok(Date.now() - t0 < 5000);
    });
  });

  describe('the agent and the coordinator given an S3 store they cannot use', () => {
    /** Run a program's main with a config naming `store`: its exit status and its stderr lines that are not JSON log lines. */
    const runWith = (program: 'agent' | 'coordinator', store: unknown): { status: number | null; lines: string[] } => {
      const dir = fs.mkdtempSync(path.join(cluster().dir, 'prog-'));
      const cfg = path.join(dir, 'c.json');
      const common = { store, insecurePlaintext: true };
      fs.writeFileSync(cfg, JSON.stringify(program === 'agent' ? { ...common, id: 'h1', coordinator: '127.0.0.1:1', tunnel: '127.0.0.1:0', stateDir: path.join(dir, 'state') } : { ...common, listen: '127.0.0.1:0', db: path.join(dir, 'c.db') }));
      const main = path.resolve(__dirname, '..', '..', program, 'main.js');
      const r = spawnSync(process.execPath, [main, '--config', cfg], { encoding: 'utf8', timeout: 60_000 });
      return { status: r.status, lines: r.stderr.split('\n').filter((l) => l !== '' && !l.startsWith('{')) };
    };

    it('a bucket that does not exist, refused credentials, an unreadable credentials file: one line and a non-zero exit at start', () => {
      const c = cluster();
      const good = loadS3Credentials(c.credentialsFile);
      const wrong = path.join(fs.mkdtempSync(path.join(c.dir, 'creds-')), 'wrong.json');
      fs.writeFileSync(wrong, JSON.stringify({ accessKeyId: good.accessKeyId, secretAccessKey: 'not-the-secret' }));
      const s3 = (over: object) => ({ s3: { endpoint: c.endpoint, bucket: c.bucket, region: c.region, credentialsFile: c.credentialsFile, ...over } });
      const cases: [unknown, RegExp][] = [
        [s3({ bucket: 'no-such-bucket' }), /^s3 http:\/\/127\.0\.0\.1:\d+\/no-such-bucket: list of prefix "[^"]*" failed: the bucket does not exist \(NoSuchBucket\).* \[ERR_CONFIG\]$/],
        [s3({ credentialsFile: wrong }), /^s3 http:\/\/127\.0\.0\.1:\d+\/vnsnap-test: list of prefix "[^"]*" failed: the S3 credentials were refused \(.* \[ERR_PERMISSION_DENIED\]$/],
        [s3({ credentialsFile: path.join(c.dir, 'absent.json') }), new RegExp(`^S3 credentials file ${path.join(c.dir, 'absent.json').replace(/[.]/g, '\\.')} cannot be read: .* \\[ERR_CONFIG\\]$`)],
      ];
      for (const program of ['agent', 'coordinator'] as const) {
        for (const [store, message] of cases) {
          const r = runWith(program, store);
          assert.notEqual(r.status, 0, `${program} exits non-zero`);
          assert.equal(r.lines.length, 1, `${program}: one line, no stack: ${r.lines.join('\n')}`);
          const [name, rest] = [`vnsnap-${program}: `, (r.lines[0] as string).slice(`vnsnap-${program}: `.length)];
          assert.ok((r.lines[0] as string).startsWith(name), r.lines[0]);
          assert.match(rest, message);
        }
      }
    });
  });

  describe('throughput of 1 MiB objects', () => {
    it('PUT and GET at concurrency 1 and 8 (printed; every object read back exactly)', async () => {
      const b = backend();
      const n = 48;
      const body = (i: number): Buffer => Buffer.alloc(MiB, i & 0xff);
      for (const conc of [1, 8]) {
        const keys = Array.from({ length: n }, (_, i) => `perf/c${conc}/${String(i).padStart(3, '0')}`);
        const run = async (f: (k: string, i: number) => Promise<void>): Promise<number> => {
          const t0 = process.hrtime.bigint();
          let next = 0;
          await Promise.all(
            Array.from({ length: conc }, async () => {
              while (next < n) {
                const i = next++;
                await f(keys[i] as string, i);
              }
            }),
          );
          return n / (Number(process.hrtime.bigint() - t0) / 1e9);
        };
        const put = await run((k, i) => b.put(k, body(i)));
        const get = await run(async (k, i) => assert.ok((await b.get(k)).equals(body(i)), `${k} read back exactly`));
        console.log(`      concurrency ${conc}: PUT ${put.toFixed(0)} MiB/s, GET ${get.toFixed(0)} MiB/s`);
        for (const k of keys) await b.delete(k);
      }
    });
  });
});
