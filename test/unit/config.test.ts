import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseJsonObject, readJsonObjectFile, rejectUnknownKeys } from '../../proto/core/config';
import { isVnsnapError } from '../../proto/core/errors';
import { parseSwitchConfig } from '../../switch/cmd/config';
import { loadAgentConfig, validateAgentConfig } from '../../agent/config';
import { StoreHandle } from '../../agent/store-handle';
import { readConfigFile } from '../../coordinator/main';
import { configuredStore, CoordinatorServer } from '../../coordinator/server';
import { silentLogger } from '../../proto/core/log';

const good = {
  id: 'h1',
  tunnel: { address: '10.0.0.1', port: 6081 },
  peers: [{ id: 'h2', address: '10.0.0.2', port: 6081 }],
  vnes: [{ name: 'blue', vni: 100, peers: ['h2'] }],
  ports: [
    { name: 'vm1', vne: 'blue', type: 'tap', ifname: 'vnt1' },
    { name: 'vm2', vne: 'blue', type: 'stream', path: '/run/x.sock' },
  ],
  static: [{ vne: 'blue', mac: '52:54:00:00:00:01', peer: 'h2' }],
};

function bad(mutate: (c: Record<string, unknown>) => void): string {
  const c = JSON.parse(JSON.stringify(good)) as Record<string, unknown>;
  mutate(c);
  try {
    parseSwitchConfig(JSON.stringify(c));
  } catch (e) {
    assert.ok(isVnsnapError(e, 'ERR_CONFIG'), String(e));
    return (e as Error).message;
  }
  assert.fail('expected the config to be refused');
}

describe('switch config', () => {
  it('accepts a complete config', () => {
    const c = parseSwitchConfig(JSON.stringify(good));
    assert.equal(c.ports.length, 2);
    assert.deepEqual(c.static, [{ vne: 'blue', mac: '52:54:00:00:00:01', peer: 'h2' }]);
  });

  it('refuses bad input with a message naming the field', () => {
    assert.equal(bad((c) => (c['extra'] = 1)), 'config: unknown field "extra" (known: id, tunnel, control, peers, vnes, ports, static)');
    assert.equal(bad((c) => delete c['id']), 'config.id must be a non-empty string');
    assert.equal(bad((c) => ((c['vnes'] as { vni: number }[])[0]!.vni = 1 << 24)), 'vnes[0].vni must be an integer 0..16777215, got 16777216');
    assert.equal(bad((c) => ((c['vnes'] as { peers: string[] }[])[0]!.peers = ['h9'])), 'vnes[0].peers[0]: no peer with id "h9"');
    assert.equal(bad((c) => ((c['ports'] as { type: string }[])[0]!.type = 'veth')), 'ports[0].type must be "tap", "packet" or "stream", got "veth"');
    assert.equal(bad((c) => ((c['ports'] as { ifname: string }[])[0]!.ifname = 'a-very-long-interface-name')), 'ports[0].ifname "a-very-long-interface-name" is longer than 15 characters (the kernel\'s IFNAMSIZ)');
    assert.equal(bad((c) => ((c['ports'] as { vne: string }[])[0]!.vne = 'red')), 'ports[0].vne: no VNE named "red"');
    assert.equal(bad((c) => ((c['static'] as { port?: string }[])[0]!.port = 'vm1')), 'static[0] needs exactly one of "peer" or "port"');
    assert.equal(bad((c) => ((c['tunnel'] as { port: number }).port = 70000)), 'tunnel.port must be an integer 0..65535, got 70000');
    assert.throws(() => parseSwitchConfig('{ nope'), (e) => isVnsnapError(e, 'ERR_CONFIG') && /not valid JSON/.test((e as Error).message));
  });

  it('the daemon explains a bad config in one line and exits 2; --help explains the flags', () => {
    const daemon = path.resolve(__dirname, '../../switch/cmd/daemon.js');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vncfg-'));
    try {
      const f = path.join(dir, 'c.json');
      fs.writeFileSync(f, JSON.stringify({ ...good, ports: [{ name: 'x', vne: 'nope', type: 'tap', ifname: 't' }] }));
      const r = spawnSync(process.execPath, [daemon, '--config', f], { encoding: 'utf8' });
      assert.equal(r.status, 2);
      assert.equal(r.stderr.trim(), 'vnsnap-switch: ports[0].vne: no VNE named "nope" [ERR_CONFIG]');
      const missing = spawnSync(process.execPath, [daemon, '--config', path.join(dir, 'absent.json')], { encoding: 'utf8' });
      assert.equal(missing.status, 2);
      assert.match(missing.stderr, /^vnsnap-switch: cannot read config file .*absent\.json: ENOENT/);
      const help = spawnSync(process.execPath, [daemon, '--help'], { encoding: 'utf8' });
      assert.equal(help.status, 0);
      assert.match(help.stdout, /--config <file>\s+switch configuration \(JSON\)/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('config file helpers (proto/core/config)', () => {
  const refusal = (f: () => unknown): string => {
    try {
      f();
    } catch (e) {
      assert.ok(isVnsnapError(e, 'ERR_CONFIG'), String(e));
      return (e as Error).message;
    }
    assert.fail('expected ERR_CONFIG');
  };

  it('reads one JSON object from a file, and names the file in every refusal', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vncfg-'));
    try {
      const f = path.join(dir, 'c.json');
      fs.writeFileSync(f, '{"a": 1, "b": "x"}');
      assert.deepEqual(readJsonObjectFile(f), { a: 1, b: 'x' });
      fs.writeFileSync(f, '[1, 2]');
      assert.equal(refusal(() => readJsonObjectFile(f)), `${f} must be a JSON object`);
      fs.writeFileSync(f, 'null');
      assert.equal(refusal(() => readJsonObjectFile(f)), `${f} must be a JSON object`);
      fs.writeFileSync(f, '{ nope');
      assert.match(refusal(() => readJsonObjectFile(f)), new RegExp(`^${f.replace(/[.]/g, '\\.')} is not valid JSON: `));
      const absent = path.join(dir, 'absent.json');
      assert.match(refusal(() => readJsonObjectFile(absent)), /^cannot read config file .*absent\.json: ENOENT/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('parses text as an object and refuses unknown keys with the known ones listed', () => {
    assert.deepEqual(parseJsonObject('{"id": "h1"}', 'inline'), { id: 'h1' });
    assert.equal(refusal(() => parseJsonObject('"text"', 'inline')), 'inline must be a JSON object');
    rejectUnknownKeys({ id: 'h1' }, ['id', 'store']);
    assert.equal(refusal(() => rejectUnknownKeys({ id: 'h1', colour: 'red' }, ['id', 'store'])), 'unknown key "colour" (known: id, store)');
    assert.equal(refusal(() => rejectUnknownKeys({ colour: 'red' }, ['id'], 'config c.json')), 'config c.json: unknown key "colour" (known: id)');
  });
});

describe('the store key of the agent and the coordinator', () => {
  const base = { id: 'h1', coordinator: '127.0.0.1:7443', tunnel: '127.0.0.1:6081' };
  const s3 = { s3: { endpoint: 'http://10.0.0.9:7480', bucket: 'vnsnap', credentialsFile: '/etc/vnsnap/s3.json' } };

  it('the agent takes a directory (content-addressed), the whole-file layout and S3; anything else is one line naming the field', () => {
    assert.deepEqual(validateAgentConfig({ ...base, store: '/var/lib/vnsnap/store' }).store, { kind: 'local', dir: '/var/lib/vnsnap/store' });
    assert.deepEqual(validateAgentConfig({ ...base, store: { dir: '/srv/old', layout: 'files' } }).store, { kind: 'files', dir: '/srv/old' });
    assert.deepEqual(validateAgentConfig({ ...base, store: s3 }).store, { kind: 's3', s3: s3.s3 });
    assert.throws(() => validateAgentConfig({ ...base }), (e: unknown) => isVnsnapError(e, 'ERR_CONFIG') && (e as Error).message === 'store: expected a directory or { "s3": {...} }, got undefined');
    assert.throws(() => validateAgentConfig({ ...base, store: { s3: { endpoint: 'http://x:1', bucket: 'b', secret: 'k' } } }), (e: unknown) => isVnsnapError(e, 'ERR_CONFIG') && (e as Error).message === 'store.s3: unknown key "secret" (known: endpoint, bucket, region, credentialsFile)');
  });

  it('the coordinator takes the same forms as "store"; "storeDir" is its old spelling, refused together with it', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-coord-store-'));
    try {
      const file = path.join(dir, 'c.json');
      fs.writeFileSync(file, JSON.stringify({ store: s3 }));
      assert.deepEqual(readConfigFile(file).store, { kind: 's3', s3: s3.s3 });
      fs.writeFileSync(file, JSON.stringify({ store: { dir: '/srv/old', layout: 'files' } }));
      assert.deepEqual(readConfigFile(file).store, { kind: 'files', dir: '/srv/old' });
      fs.writeFileSync(file, JSON.stringify({ store: { bucket: 'x' } }));
      assert.throws(() => readConfigFile(file), (e: unknown) => isVnsnapError(e, 'ERR_CONFIG') && (e as Error).message === `config ${file}: store: unknown key "bucket" (known: dir, layout)`);
      fs.writeFileSync(file, JSON.stringify({ store: '/a', storeDir: '/b' }));
      assert.throws(() => readConfigFile(file), (e: unknown) => isVnsnapError(e, 'ERR_CONFIG') && (e as Error).message === `config ${file}: "store" and "storeDir" both name the snapshot store ("storeDir" is the old spelling of "store": DIR); keep one`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
    assert.deepEqual(configuredStore({ storeDir: '/srv/vnsnap' }), { kind: 'local', dir: '/srv/vnsnap' });
    assert.deepEqual(configuredStore({ store: { kind: 'files', dir: '/d' } }), { kind: 'files', dir: '/d' });
    assert.throws(() => configuredStore({ store: { kind: 'local', dir: '/a' }, storeDir: '/b' }), (e: unknown) => isVnsnapError(e, 'ERR_CONFIG') && /storeDir is the old spelling/.test((e as Error).message));
  });

  it('a coordinator over a directory of the other layout does not start, and says which layout is there', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-coord-layout-'));
    try {
      fs.mkdirSync(path.join(dir, 'snapshots'));
      const server = new CoordinatorServer({ config: { listen: '127.0.0.1:0', insecurePlaintext: true, db: ':memory:', storeDir: dir }, log: silentLogger() });
      await assert.rejects(server.start(), (e: unknown) => isVnsnapError(e, 'ERR_FAILED_PRECONDITION') && (e as Error).message === `store ${dir} holds snapshots as whole files (the layout before chunks); set "store": { "dir": "${dir}", "layout": "files" } to keep using it`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("the agent's store handle is ERR_STATE until opened, then the configured store", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-agent-store-'));
    try {
      const h = new StoreHandle({ kind: 'local', dir });
      assert.equal(h.describe, `local ${dir}`);
      await assert.rejects(h.put('snapshots/s/a', Buffer.from('x')), (e: unknown) => isVnsnapError(e, 'ERR_STATE') && (e as Error).message === `the snapshot store (local ${dir}) is not open yet: the agent has not started`);
      await h.open();
      await h.put('snapshots/s/a', Buffer.from('x'));
      const chunks: Buffer[] = [];
      for await (const c of h.read('snapshots/s/a')) chunks.push(c);
      assert.equal(Buffer.concat(chunks).toString(), 'x');
      assert.ok(fs.existsSync(path.join(dir, 'packs')), 'content-addressed layout (packs) on disk');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('agent config: the metrics listen address', () => {
  const base = { id: 'h1', coordinator: '127.0.0.1:7443', tunnel: '127.0.0.1:6081', store: '/var/lib/vnsnap/store', metricsPort: 9464 };

  it('binds loopback unless told otherwise: no metricsAddress key means the default', () => {
    const c = validateAgentConfig({ ...base });
    assert.equal(c.metricsAddress, undefined);
    assert.equal(validateAgentConfig({ ...base, metricsAddress: '0.0.0.0' }).metricsAddress, '0.0.0.0');
    assert.equal(validateAgentConfig({ ...base, metricsAddress: '::1' }).metricsAddress, '::1');
  });

  it('refuses an address that is not an IP, naming the field', () => {
    for (const [v, shown] of [['localhost', '"localhost"'], ['10.0.0.300', '"10.0.0.300"'], [9464, '9464']] as const) {
      assert.throws(() => validateAgentConfig({ ...base, metricsAddress: v }), (e: unknown) => {
        assert.ok(isVnsnapError(e, 'ERR_CONFIG'), String(e));
        assert.equal((e as Error).message, `metricsAddress: expected an IPv4 or IPv6 address, got ${shown}`);
        return true;
      });
    }
  });
});

describe('agent config: /debug/vms is off unless enabled', () => {
  const base = { id: 'h1', coordinator: '127.0.0.1:7443', tunnel: '127.0.0.1:6081', store: '/var/lib/vnsnap/store', metricsPort: 9464 };

  it('is off when the key is absent, on only for true', () => {
    assert.equal(validateAgentConfig({ ...base }).debugVms, false);
    assert.equal(validateAgentConfig({ ...base, debugVms: false }).debugVms, false);
    assert.equal(validateAgentConfig({ ...base, debugVms: true }).debugVms, true);
  });

  it('takes the file key, and the --debug-vms flag over a file that does not set it', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vncfg-'));
    try {
      const f = path.join(dir, 'agent.json');
      fs.writeFileSync(f, JSON.stringify({ ...base, debugVms: true, insecurePlaintext: true }));
      assert.equal(loadAgentConfig(f, {}).debugVms, true);
      fs.writeFileSync(f, JSON.stringify({ ...base, insecurePlaintext: true }));
      assert.equal(loadAgentConfig(f, {}).debugVms, false);
      assert.equal(loadAgentConfig(f, { debugVms: true }).debugVms, true);
      assert.equal(loadAgentConfig(f, { debugVms: undefined }).debugVms, false);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses anything but a boolean, naming the field', () => {
    for (const [v, shown] of [['true', '"true"'], [1, '1'], [null, 'null']] as const) {
      assert.throws(() => validateAgentConfig({ ...base, debugVms: v }), (e: unknown) => {
        assert.ok(isVnsnapError(e, 'ERR_CONFIG'), String(e));
        assert.equal((e as Error).message, `debugVms: expected true or false, got ${shown}`);
        return true;
      });
    }
  });
});

describe('agent config: image roots', () => {
  const base = { id: 'h1', coordinator: '127.0.0.1:7443', tunnel: '127.0.0.1:6081', store: '/var/lib/vnsnap/store' };

  it('defaults to /var/lib/vnsnap/images; takes a list (or one flag value)', () => {
    assert.deepEqual(validateAgentConfig({ ...base }).imageRoots, ['/var/lib/vnsnap/images']);
    assert.deepEqual(validateAgentConfig({ ...base, imageRoots: ['/srv/images', '/var/cache/vnsnap/guest'] }).imageRoots, ['/srv/images', '/var/cache/vnsnap/guest']);
    assert.deepEqual(validateAgentConfig({ ...base, imageRoots: '/srv/images' }).imageRoots, ['/srv/images']);
  });

  it('refuses relative, unnormalised and empty lists, and "/", naming the field', () => {
    for (const [v, msg] of [
      [[], 'imageRoots: expected a list of directories, got []'],
      [['images'], 'imageRoots: expected absolute, normalised directories, got "images"'],
      [['/srv/../etc'], 'imageRoots: expected absolute, normalised directories, got "/srv/../etc"'],
      [['/srv/images/'], 'imageRoots: expected absolute, normalised directories, got "/srv/images/"'],
      [[7], 'imageRoots: expected absolute, normalised directories, got 7'],
      [['/'], 'imageRoots: "/" would let VMs load every file of the host; name the image directories'],
    ] as const) {
      assert.throws(() => validateAgentConfig({ ...base, imageRoots: v }), (e: unknown) => {
        assert.ok(isVnsnapError(e, 'ERR_CONFIG'), String(e));
        assert.equal((e as Error).message, msg);
        return true;
      });
    }
  });
});
