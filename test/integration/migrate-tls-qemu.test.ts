/**
 * A live migration's streams over mutual TLS (agent/drivers/qemu/migration-tls.ts,
 * docs/migration.md "Encryption"), at the QEMU driver: two QemuDriver instances on the
 * loopback address with agent certificates made by the product's certificate tool (real
 * openssl, test/support/pki.ts), the test guest of docs/guest.md writing disk records.
 *
 *   - the destination's listeners refuse what is not the source agent: a plain NBD client, a
 *     TLS client with an operator's certificate of the same CA, and one with another agent's
 *     certificate (only this migration's source is authorised), while a TLS client with the
 *     source agent's certificate is served; a source that
 *     expects another agent's name (tls-hostname) refuses the destination; a source without TLS
 *     cannot send the memory: each time untilPaused() rejects and the source runs on.
 *   - with TLS on both ends the guest moves with its disk: the same run continues on the
 *     destination, 0 errors, and the TLS objects and parameters are gone from both QEMUs
 *     afterwards (a later snapshot cut migrates to a local socket in clear).
 *
 * Everything under /tmp/vnqm-test-<pid>-tls (qemu-driver.test.ts sweeps crashed runs), removed
 * in after() also when a test fails.
 */
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { MigrationTls } from '../../agent/drivers/driver';
import { testPki, type TlsFiles } from '../support/pki';
import { MigrationPair } from '../support/qemu-migration-pair';

describe('QEMU driver: live migration over mutual TLS (the agents\' certificates)', function () {
  this.timeout(240_000);
  const root = `/tmp/vnqm-test-${process.pid}-tls`;
  const pair = new MigrationPair(root);
  let h1: MigrationTls;
  let h2: MigrationTls;
  let operator: TlsFiles;
  let other: TlsFiles;

  before(function () {
    this.timeout(25 * 60_000);
    if (!pair.prepare()) this.skip();
    const pki = testPki();
    h1 = { files: pki.agent('vnqm-h1', ['127.0.0.1']), peer: 'vnqm-h2' };
    h2 = { files: pki.agent('vnqm-h2', ['127.0.0.1']), peer: 'vnqm-h1' };
    operator = pki.client('vnqm-operator', 'operator');
    other = pki.agent('vnqm-h3', ['127.0.0.1']);
  });
  after(() => pair.close());

  const driver = (host: string) => pair.driver(host);
  const waitFor = pair.waitFor.bind(pair);
  const setup = pair.guest.bind(pair);

  /** qemu-img info of the destination's export, as a plain client or with TLS credentials `tls`. */
  function nbdInfo(diskUri: string, tls?: TlsFiles): { ok: boolean; stderr: string } {
    const u = new URL(diskUri);
    const opts = `driver=nbd,server.type=inet,server.host=${u.hostname},server.port=${u.port},export=${u.pathname.slice(1)}`;
    const args = ['info', '--image-opts', opts];
    if (tls) {
      const dir = path.join(root, `nbd-client-${path.basename(tls.cert, '.pem')}`);
      fs.mkdirSync(dir, { recursive: true });
      fs.copyFileSync(tls.ca, path.join(dir, 'ca-cert.pem'));
      fs.copyFileSync(tls.cert, path.join(dir, 'client-cert.pem'));
      fs.copyFileSync(tls.key, path.join(dir, 'client-key.pem'));
      args.splice(1, 2, '--object', `tls-creds-x509,id=t0,dir=${dir},endpoint=client`, '--image-opts', `${opts},tls-creds=t0`);
    }
    const r = spawnSync('qemu-img', args, { encoding: 'utf8', timeout: 30_000 });
    return { ok: r.status === 0, stderr: r.stderr };
  }

  it('refuses a plain NBD client, an operator\'s certificate, another agent\'s, a source expecting another agent and a plain source; the source runs on', async () => {
    const src = driver('h1');
    const dst = driver('h2');
    const { spec, ctx } = setup('tr');
    await src.start(spec, ctx);
    const before = await waitFor('the guest writing records', src, spec.id, (s) => s.disk.records >= 10);
    const inc = await dst.migrateIn(spec, ctx, '127.0.0.1', h2);

    const plain = nbdInfo(inc.targets.diskUri);
    assert.equal(plain.ok, false, 'a plain NBD client is refused');
    assert.match(plain.stderr, /TLS/);
    const op = nbdInfo(inc.targets.diskUri, operator);
    assert.equal(op.ok, false, 'an operator certificate is refused');
    const otherAgent = nbdInfo(inc.targets.diskUri, other);
    assert.equal(otherAgent.ok, false, 'another agent\'s certificate is refused');
    const agent = nbdInfo(inc.targets.diskUri, h1.files);
    assert.equal(agent.ok, true, `the source agent's certificate is served: ${agent.stderr}`);

    const wrongPeer = await src.migrateOut(spec.id, inc.targets, () => undefined, { ...h1, peer: 'vnqm-h9' });
    await assert.rejects(wrongPeer.untilPaused(), /vnqm-h9|hostname|certificate/i);
    await wrongPeer.cancel();
    assert.equal(src.status(spec.id), 'running');

    const noTls = await src.migrateOut(spec.id, { diskUri: '', memoryUri: inc.targets.memoryUri }, () => undefined);
    await assert.rejects(noTls.untilPaused(), (e: Error) => (e as { code?: string }).code === 'ERR_DRIVER');
    await noTls.cancel();
    await dst.stop(spec.id, { discardDisk: true });
    assert.equal(src.status(spec.id), 'running');
    const params = await src.execute<{ 'tls-creds'?: string }>(spec.id, 'query-migrate-parameters');
    assert.equal(params['tls-creds'] ?? '', '', 'the source\'s TLS parameters are reset after the cancel');
    const after = await waitFor('the source guest going on', src, spec.id, (s) => s.disk.records > before.disk.records + 10);
    assert.equal(after.nonce, before.nonce);
    assert.equal(after.totals.errors, 0, after.disk.first_error);
    await src.stop(spec.id, { discardDisk: true });
  });

  it('with TLS on both ends the guest moves with its disk; no TLS objects are left behind', async () => {
    const src = driver('h1');
    const dst = driver('h2');
    const { spec, ctx } = setup('tm');
    await src.start(spec, ctx);
    const before = await waitFor('the guest writing records', src, spec.id, (s) => s.disk.records >= 20);
    const inc = await dst.migrateIn(spec, ctx, '127.0.0.1', h2);
    const out = await src.migrateOut(spec.id, inc.targets, () => undefined, h1);
    const paused = await out.untilPaused();
    assert.ok(paused.diskBytes >= 16 * 1024 * 1024, `disk bytes ${paused.diskBytes}`);
    await out.finish();
    const resumedUs = await inc.resume();
    await src.stop(spec.id, { discardDisk: true });
    assert.equal(dst.status(spec.id), 'running');
    const after = await waitFor('the guest going on at the destination', dst, spec.id, (s) => s.disk.records > before.disk.records + 20 && s.disk.checks > before.disk.checks);
    assert.equal(after.nonce, before.nonce, 'the same guest run');
    assert.equal(after.totals.errors, 0, `${after.disk.first_error} ${after.mem.first_error}`);
    const params = await dst.execute<{ 'tls-creds'?: string; 'tls-authz'?: string }>(spec.id, 'query-migrate-parameters');
    assert.deepEqual([params['tls-creds'] ?? '', params['tls-authz'] ?? ''], ['', ''], 'the destination\'s TLS parameters are reset');
    const objects = await dst.execute<{ name: string }[]>(spec.id, 'qom-list', { path: '/objects' });
    assert.deepEqual(objects.map((o) => o.name).filter((n) => n.startsWith('vnsnap-mig')), []);
    assert.equal(fs.existsSync(path.join(dst.inspect(spec.id)?.dir as string, 'tls')), false, 'the copied key is removed');
    console.log(`      downtime with TLS ${((resumedUs - paused.pausedUnixUs) / 1000).toFixed(1)} ms, disk ${paused.diskBytes} B`);
    await dst.stop(spec.id, { discardDisk: true });
  });
});
