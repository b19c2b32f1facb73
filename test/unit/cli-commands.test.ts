/**
 * The `vnsnap` CLI end to end: the real binary (dist/coordinator/cli/main.js) run as a child
 * process against an in-process fake CoordinatorService (a real grpc-js server), asserting
 * exact stdout, stderr and exit codes. stdout is a pipe here, so progress comes as lines.
 */
import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { startFakeCoordinator, type FakeCoordinator } from '../interop/fake-coordinator';
import { runCliPlaintext, type ChildOutput } from '../support/child-output';


type Run = ChildOutput;
const vnsnap = runCliPlaintext;

/** A TCP port on 127.0.0.1 that nothing listens on. */
async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

describe('cli: vnsnap against a fake coordinator', function () {
  this.timeout(30_000);
  let fake: FakeCoordinator;
  let tmp: string;
  const run = (...args: string[]): Promise<Run> => vnsnap([...args, '--coordinator', fake.address]);

  beforeEach(async () => {
    fake = await startFakeCoordinator();
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-cli-'));
  });
  afterEach(async () => {
    await fake.stop();
    fs.rmSync(tmp, { recursive: true, force: true });
  });

  describe('connection and exit codes', () => {
    it('unreachable coordinator: exit 4 and one line saying so', async () => {
      const port = await closedPort();
      const r = await vnsnap(['vne', 'list', '--coordinator', `127.0.0.1:${port}`]);
      assert.equal(r.code, 4);
      assert.equal(r.stdout, '');
      assert.equal(r.stderr, `vnsnap: cannot reach the coordinator at 127.0.0.1:${port}: connection refused (is it running? set --coordinator or VNSNAP_COORDINATOR)\n`);
    });

    it('unreachable with --json: the error as one JSON line on stderr, nothing on stdout', async () => {
      const port = await closedPort();
      const r = await vnsnap(['agents', '--json'], { VNSNAP_COORDINATOR: `127.0.0.1:${port}` });
      assert.equal(r.code, 4);
      assert.equal(r.stdout, '');
      assert.deepEqual(JSON.parse(r.stderr), { error: { code: 'ERR_UNAVAILABLE', message: `cannot reach the coordinator at 127.0.0.1:${port}: connection refused (is it running? set --coordinator or VNSNAP_COORDINATOR)`, exitCode: 4 } });
    });

    it('VNSNAP_COORDINATOR picks the coordinator; a malformed address is bad usage', async () => {
      const r = await vnsnap(['vne', 'list'], { VNSNAP_COORDINATOR: fake.address });
      assert.equal(r.code, 0);
      const bad = await vnsnap(['vne', 'list', '--coordinator', 'localhost']);
      assert.equal(bad.code, 2);
      assert.equal(bad.stderr, 'vnsnap: --coordinator expects host:port (e.g. 127.0.0.1:7443), got "localhost"\n');
    });

    it('unknown snapshot: exit 3 with the coordinator\'s message', async () => {
      const r = await run('snapshot', 'show', 'snap-9999');
      assert.equal(r.code, 3);
      assert.equal(r.stdout, '');
      assert.equal(r.stderr, 'vnsnap: no snapshot "snap-9999"\n');
      const j = await run('snapshot', 'delete', 'snap-9999', '--json');
      assert.equal(j.code, 3);
      assert.equal(j.stderr, '{"error":{"code":"ERR_NOT_FOUND","message":"no snapshot \\"snap-9999\\"","exitCode":3}}\n');
    });

    it('bad usage: unknown commands and options, bad numbers, bad --place: exit 2', async () => {
      const cases: [string[], RegExp][] = [
        [['vne', 'lst'], /^vnsnap: unknown command 'lst'/],
        [['snapshot', 'create', 'blue', '--mode', 'fast'], /argument 'fast' is invalid\. Allowed choices are precopy, background\./],
        [['snapshot', 'create', 'blue', '--deadline-ms', '5s'], /--deadline-ms expects a whole number of milliseconds, got "5s"/],
        [['restore', 'snap-0001', '--place', 'vm1'], /--place expects VM=HOST \(e\.g\. --place vm1=h2\), got "vm1"/],
        [['vne', 'show'], /missing required argument 'NAME'/],
        [['agents', '--jsn'], /unknown option '--jsn'/],
      ];
      for (const [args, want] of cases) {
        const r = await run(...args);
        assert.equal(r.code, 2, args.join(' '));
        assert.equal(r.stdout, '');
        assert.match(r.stderr, want, args.join(' '));
      }
      assert.equal(fake.calls.length, 0, 'nothing reached the coordinator');
    });

    it('--help explains every command with an example (exit 0)', async () => {
      const top = await vnsnap(['--help']);
      assert.equal(top.code, 0);
      assert.match(top.stdout, /Exit codes:\n {2}0 {2}ok\n {2}1 {2}the operation failed/);
      const commands = [['vne', 'define'], ['vne', 'update'], ['vne', 'list'], ['vne', 'show'], ['vne', 'delete'], ['vne', 'start'], ['vne', 'stop'], ['snapshot', 'create'], ['snapshot', 'list'], ['snapshot', 'show'], ['snapshot', 'delete'], ['restore'], ['agents'], ['events']];
      for (const c of commands) {
        const r = await vnsnap([...c, '--help']);
        assert.equal(r.code, 0, c.join(' '));
        assert.match(r.stdout, new RegExp(`^Usage: vnsnap ${c.join(' ')} `), c.join(' '));
        assert.match(r.stdout, /--json/);
        assert.match(r.stdout, /\nExample:\n {2}\$ /, c.join(' '));
      }
    });
  });

  describe('vne', () => {
    it('list: a table, or the response as JSON', async () => {
      const r = await run('vne', 'list');
      assert.equal(r.code, 0);
      assert.equal(r.stdout, 'NAME  VNI  STATE    VMS  HOSTS  EPOCH  GEN\nblue  100  RUNNING  3    h1,h2  2      1\nred   200  RUNNING  2    h1,h2  0      0\n');
      const j = await run('vne', 'list', '--json');
      assert.equal(j.code, 0);
      const parsed = JSON.parse(j.stdout) as { vnes: { name: string; state: string; vms: { driver: Record<string, unknown> }[] }[] };
      assert.equal(j.stdout, JSON.stringify(parsed, null, 2) + '\n', 'one JSON object and nothing else');
      assert.deepEqual(parsed.vnes.map((v) => [v.name, v.state]), [['blue', 'VNE_STATE_RUNNING'], ['red', 'VNE_STATE_RUNNING']]);
      assert.deepEqual(Object.keys(parsed.vnes[0]?.vms[0]?.driver ?? {}), ['qemu'], 'no synthetic oneof property');
    });

    it('show: exact JSON of one VNE', async () => {
      const r = await run('vne', 'show', 'red', '--json');
      assert.equal(r.code, 0);
      const qemu = (mem: number): object => ({ qemu: { memoryMib: mem, cpus: 1, kernel: '/var/lib/vnsnap/vmlinuz', initrd: '/var/lib/vnsnap/initrd.gz', append: '', disk: '', extra: {} } });
      const want = {
        name: 'red',
        vni: 200,
        vms: [
          { name: 'web', host: 'h1', macs: ['52:54:00:00:01:01'], driver: qemu(512) },
          { name: 'db', host: 'h2', macs: ['52:54:00:00:01:02'], driver: qemu(1024) },
        ],
        generation: 0,
        epoch: 0,
        state: 'VNE_STATE_RUNNING',
        createdUnixMs: 1763877600000,
        updatedUnixMs: 1763877600000,
        placement: { web: 'h1', db: 'h2' },
        vmStatus: [],
        fenced: [],
        stateReason: '',
      };
      assert.equal(r.stdout, JSON.stringify(want, null, 2) + '\n');
      const missing = await run('vne', 'show', 'nope');
      assert.equal(missing.code, 3);
      assert.equal(missing.stderr, 'vnsnap: no VNE named "nope"\n');
    });

    it('define: snake_case file → the camelCase request; the summary line', async () => {
      const file = path.join(tmp, 'green.json');
      fs.writeFileSync(file, fs.readFileSync(path.resolve(__dirname, '../../../test/interop/sim-vne.json')));
      const r = await run('vne', 'define', file);
      assert.equal(r.stderr, '');
      assert.equal(r.code, 0);
      assert.equal(r.stdout, 'defined VNE green (vni 4242, 2 VMs on 2 hosts, DEFINED)\n');
      const call = fake.calls.find((c) => c.method === 'DefineVne');
      const vne = (call?.request as { vne: { vms: { driver: { sim: unknown } }[] } }).vne;
      assert.deepEqual(vne.vms[0]?.driver.sim, { memoryMib: 16, dirtyRateMibS: 4, frameRateHz: 50, peers: ['b'] });
      const again = await run('vne', 'define', file);
      assert.equal(again.code, 1);
      assert.equal(again.stderr, 'vnsnap: VNE green already exists (update it with UpdateVne)\n');
    });

    it('define: bad JSON is exit 2 naming the file and the problem, and never reaches the coordinator', async () => {
      const file = path.join(tmp, 'broken.json');
      fs.writeFileSync(file, '{\n  "name": "x",\n  "vms": [\n    {"name": "a" "host": "h1"}\n  ]\n}\n');
      const r = await run('vne', 'define', file);
      assert.equal(r.code, 2);
      assert.equal(r.stdout, '');
      assert.equal(r.stderr, `vnsnap: ${file}: not valid JSON: Expected ',' or '}' after property value at line 4 column 18\n`);
      const invalid = path.join(tmp, 'invalid.json');
      fs.writeFileSync(invalid, JSON.stringify({ name: 'x', vms: [{ name: 'a', host: 'h1', macs: ['ff:ff:ff:ff:ff:ff'], driver: { sim: {} } }] }));
      const r2 = await run('vne', 'define', invalid, '--json');
      assert.equal(r2.code, 2);
      assert.equal(r2.stderr, JSON.stringify({ error: { code: 'ERR_INVALID_ARGUMENT', message: `${invalid}: vms[0].macs[0]: ff:ff:ff:ff:ff:ff is a multicast address; a vNIC needs a unicast one`, exitCode: 2 } }) + '\n');
      const none = await run('vne', 'define', path.join(tmp, 'nope.json'));
      assert.equal(none.code, 2);
      assert.equal(none.stderr, `vnsnap: ${path.join(tmp, 'nope.json')}: no such file\n`);
      assert.equal(fake.calls.length, 0);
    });

    it("define: what only the coordinator knows comes back as its message (INVALID_ARGUMENT → exit 2)", async () => {
      const file = path.join(tmp, 'h9.json');
      fs.writeFileSync(file, JSON.stringify({ name: 'x', vni: 7, vms: [{ name: 'a', host: 'h9', macs: ['52:54:00:00:09:01'], driver: { sim: {} } }] }));
      const r = await run('vne', 'define', file);
      assert.equal(r.code, 2);
      assert.equal(r.stderr, 'vnsnap: vms[0].host: no agent "h9" is known (agents: h1, h2, h3)\n');
    });

    it('update, start, stop, delete', async () => {
      const file = path.join(tmp, 'red.json');
      const shown = await run('vne', 'show', 'red', '--json');
      const red = JSON.parse(shown.stdout) as { vms: unknown[] };
      red.vms = red.vms.slice(0, 1);
      fs.writeFileSync(file, JSON.stringify(red));
      assert.deepEqual(await run('vne', 'update', file), { code: 0, stdout: 'updated VNE red (vni 200, 1 VM on 1 host, RUNNING)\n', stderr: '' });
      assert.deepEqual(await run('vne', 'stop', 'red'), { code: 0, stdout: 'stopped VNE red\n', stderr: '' });
      assert.deepEqual(await run('vne', 'start', 'red'), { code: 0, stdout: 'started VNE red (vni 200, 1 VM on 1 host, RUNNING)\n', stderr: '' });
      assert.deepEqual(await run('vne', 'delete', 'red', '--json'), { code: 0, stdout: '{\n  "discarded": [],\n  "forgotten": []\n}\n', stderr: '' });
      const refused = await run('vne', 'delete', 'blue');
      assert.equal(refused.code, 1);
      assert.equal(refused.stderr, 'vnsnap: VNE blue has 2 snapshots: delete them first or pass --with-snapshots\n');
      assert.deepEqual(await run('vne', 'delete', 'blue', '--with-snapshots'), { code: 0, stdout: 'deleted VNE blue and its snapshots\n', stderr: '' });
      assert.deepEqual(fake.calls.filter((c) => c.method === 'DeleteVne').map((c) => c.request), [
        { name: 'red', deleteSnapshots: false, forgetUnreachableDisks: false },
        { name: 'blue', deleteSnapshots: false, forgetUnreachableDisks: false },
        { name: 'blue', deleteSnapshots: true, forgetUnreachableDisks: false },
      ]);
    });
  });

  describe('snapshot create', () => {
    it('pipe: one line per phase change, then the summary; exit 0', async () => {
      const r = await run('snapshot', 'create', 'blue', '--description', 'nightly');
      assert.equal(r.stderr, '');
      assert.equal(r.code, 0);
      assert.equal(
        r.stdout,
        [
          '+0.000s  state PRECOPY',
          '+0.200s  vm1@h1  PRECOPY',
          '+0.400s  vm2@h1  PRECOPY',
          '+0.600s  vm3@h2  PRECOPY',
          '+1.900s  vm1@h1  PRECOPY done (256.0 MiB/256.0 MiB, iteration 4, dirty 48.5 MiB/s)',
          '+2.000s  vm2@h1  PRECOPY done (256.0 MiB/256.0 MiB, iteration 4, dirty 48.5 MiB/s)',
          '+2.100s  vm3@h2  PRECOPY done (256.0 MiB/256.0 MiB, iteration 4, dirty 48.5 MiB/s)',
          '+2.110s  state COMMITTING',
          '+2.111s  vm1@h1  PAUSE',
          '+2.123s  vm1@h1  PAUSE done (pause 12.3 ms)',
          '+2.124s  vm2@h1  PAUSE',
          '+2.136s  vm2@h1  PAUSE done (pause 9.80 ms)',
          '+2.137s  vm3@h2  PAUSE',
          '+2.149s  vm3@h2  PAUSE done (pause 14.1 ms)',
          '+2.159s  state PERSISTING',
          '+2.259s  vm1@h1  PERSIST',
          '+2.359s  vm2@h1  PERSIST',
          '+2.459s  vm3@h2  PERSIST',
          '+2.559s  vm1@h1  PERSIST done (320.0 MiB/320.0 MiB)',
          '+2.659s  vm2@h1  PERSIST done (320.0 MiB/320.0 MiB)',
          '+2.759s  vm3@h2  PERSIST done (320.0 MiB/320.0 MiB)',
          '+2.769s  state COMPLETE',
          '',
          'snapshot snap-0003 of VNE blue: COMPLETE',
          '  epoch 3, mode PRECOPY, 3 VMs, total 2.345 s, commit skew 0.41 ms, max pause 14.1 ms',
          '  created 2025-11-23 09:00:00Z, completed 2025-11-23 09:00:02Z, "nightly"',
          '',
          '  VM   HOST  PAUSE    CUT       MEMORY     DISK      CHANNEL FRAMES',
          '  vm1  h1    12.3 ms  +0.00 ms  256.0 MiB  64.0 MiB  3',
          '  vm2  h1    9.80 ms  +0.12 ms  256.0 MiB  64.0 MiB  0',
          '  vm3  h2    14.1 ms  +0.41 ms  256.0 MiB  64.0 MiB  2',
          '',
          '  channel frames 5, lost frames 0, size 960.0 MiB, 6 artefacts',
          '  manifest snapshots/snap-0003/manifest.pb',
          '',
        ].join('\n'),
      );
    });

    it('--json: every event as one JSON line, the final record last', async () => {
      const r = await run('snapshot', 'create', 'blue', '--json', '--mode', 'background', '--deadline-ms', '5000', '--timeout-ms', '60000');
      assert.equal(r.code, 0);
      assert.equal(r.stderr, '');
      const lines = r.stdout.trimEnd().split('\n');
      assert.equal(lines.length, 29);
      assert.equal(lines[0], '{"snapshotId":"snap-0003","timeUnixMs":1763888400000,"state":"SNAPSHOT_STATE_PRECOPY"}');
      assert.equal(
        lines[1],
        '{"snapshotId":"snap-0003","timeUnixMs":1763888400200,"vm":{"vm":"vm1","host":"h1","phase":"PHASE_PRECOPY","fraction":0.25,"bytesDone":67108864,"bytesTotal":268435456,"iteration":1,"dirtyRateMibS":48.5,"pauseMs":0,"phaseDone":false}}',
      );
      const last = JSON.parse(lines[28] as string) as { done: { id: string; state: string; mode: string; vms: { pauseMs: number }[] } };
      assert.equal(last.done.state, 'SNAPSHOT_STATE_COMPLETE');
      assert.equal(last.done.mode, 'SNAPSHOT_MODE_BACKGROUND');
      assert.deepEqual(last.done.vms.map((v) => v.pauseMs), [12.3, 9.8, 14.1]);
      assert.deepEqual(fake.calls.find((c) => c.method === 'CreateSnapshot')?.request, { vne: 'blue', mode: 'SNAPSHOT_MODE_BACKGROUND', precopyDeadlineMs: 5000, timeoutMs: 60000, description: '' });
    });

    it('an aborted snapshot: the summary says why, stderr too, exit 1', async () => {
      const r = await run('snapshot', 'create', 'red');
      assert.equal(r.code, 1);
      assert.equal(r.stderr, 'vnsnap: snapshot snap-0003 of VNE red aborted: agent h2 disconnected\n');
      assert.match(r.stdout, /\+1\.500s {2}note {2}aborting: agent h2 disconnected\n\+1\.510s {2}state ABORTED\n\nsnapshot snap-0003 of VNE red: ABORTED \(agent h2 disconnected\)\n/);
      assert.match(r.stdout, / {2}channel frames 0, lost frames 0\n$/);
      const j = await run('snapshot', 'create', 'red', '--json');
      assert.equal(j.code, 1);
      assert.equal(JSON.parse(j.stdout.trimEnd().split('\n').pop() as string).done.state, 'SNAPSHOT_STATE_ABORTED');
    });

    it('refused before it starts: unknown VNE exit 3, VNE not running exit 1', async () => {
      const r = await run('snapshot', 'create', 'nope');
      assert.deepEqual(r, { code: 3, stdout: '', stderr: 'vnsnap: no VNE named "nope"\n' });
      await run('vne', 'stop', 'red');
      const s = await run('snapshot', 'create', 'red');
      assert.deepEqual(s, { code: 1, stdout: '', stderr: 'vnsnap: VNE red is not running (state VNE_STATE_DEFINED): start it first\n' });
    });
  });

  describe('snapshot list, show, delete', () => {
    it('list and list --vne', async () => {
      const r = await run('snapshot', 'list');
      assert.equal(
        r.stdout,
        'ID         VNE   EPOCH  MODE     STATE     CREATED               MAX PAUSE  SIZE       ADDED  DESCRIPTION\n' +
          'snap-0001  blue  1      PRECOPY  COMPLETE  2025-11-23 08:00:00Z  14.1 ms    960.0 MiB  -      before upgrade\n' +
          'snap-0002  blue  2      PRECOPY  ABORTED   2025-11-23 08:10:00Z  14.1 ms    -          -\n',
      );
      const none = await run('snapshot', 'list', '--vne', 'red');
      assert.equal(none.stdout, 'no snapshots\n');
      const j = await run('snapshot', 'list', '--vne', 'red', '--json');
      assert.equal(j.stdout, '{\n  "snapshots": []\n}\n');
    });

    it('show: the summary with phases, and --timeline writes the SVG', async () => {
      const svg = path.join(tmp, 'snap.svg');
      const r = await run('snapshot', 'show', 'snap-0001', '--timeline', svg);
      assert.equal(r.code, 0);
      assert.equal(
        r.stdout,
        [
          'snapshot snap-0001 of VNE blue: COMPLETE',
          '  epoch 1, mode PRECOPY, 3 VMs, total 2.345 s, commit skew 0.41 ms, max pause 14.1 ms',
          '  created 2025-11-23 08:00:00Z, completed 2025-11-23 08:00:02Z, "before upgrade"',
          '',
          '  VM   HOST  PAUSE    CUT       MEMORY     DISK      CHANNEL FRAMES  PHASES',
          '  vm1  h1    12.3 ms  +0.00 ms  256.0 MiB  64.0 MiB  3               precopy 1.800 s, pause 12.3 ms, copy 11.6 ms, channel 98.0 ms, persist 400.0 ms',
          '  vm2  h1    9.80 ms  +0.12 ms  256.0 MiB  64.0 MiB  0               precopy 1.650 s, pause 9.80 ms, copy 9.10 ms, channel 97.9 ms, persist 350.0 ms',
          '  vm3  h2    14.1 ms  +0.41 ms  256.0 MiB  64.0 MiB  2               precopy 1.788 s, pause 14.1 ms, copy 13.4 ms, channel 107.6 ms, persist 430.0 ms',
          '',
          '  channel frames 5, lost frames 0, size 960.0 MiB, 6 artefacts',
          '  manifest snapshots/snap-0001/manifest.pb',
          `timeline written to ${svg}`,
          '',
        ].join('\n'),
      );
      const text = fs.readFileSync(svg, 'utf8');
      assert.equal((text.match(/<g class="row" data-vm="vm\d"/g) ?? []).length, 6, 'three rows in each of the two panels');
      const bad = await run('snapshot', 'show', 'snap-0001', '--timeline', path.join(tmp, 'no', 'such', 'dir.svg'), '--json');
      assert.equal(bad.code, 1);
      assert.match(bad.stderr, /cannot write the timeline to .*dir\.svg: no such directory/);
    });

    it('delete', async () => {
      assert.deepEqual(await run('snapshot', 'delete', 'snap-0002'), { code: 0, stdout: 'deleted snapshot snap-0002\n', stderr: '' });
      assert.equal((await run('snapshot', 'show', 'snap-0002')).code, 3);
    });
  });

  describe('restore, agents, events', () => {
    it('restore: placement and --stop-running reach the coordinator; lines then the new placement', async () => {
      const refused = await run('restore', 'snap-0001');
      assert.deepEqual(refused, { code: 1, stdout: '', stderr: 'vnsnap: VNE blue is running: pass --stop-running to replace it\n' });
      const r = await run('restore', 'snap-0001', '--place', 'vm3=h1', '--place', 'vm1=h2', '--stop-running', '--timeout-ms', '9000');
      assert.equal(r.stderr, '');
      assert.equal(r.code, 0);
      assert.deepEqual(fake.calls.filter((c) => c.method === 'RestoreSnapshot').pop()?.request, { snapshotId: 'snap-0001', placement: { vm3: 'h1', vm1: 'h2' }, stopRunning: true, timeoutMs: 9000, placeLost: '', discardDisks: false });
      const lines = r.stdout.split('\n');
      assert.equal(lines[0], '+0.000s  note  restore: validating 6 artefacts');
      assert.equal(lines[1], '+0.020s  vm1@h2  VALIDATE done');
      assert.equal(lines.filter((l) => / (VALIDATE|LOAD|RESUME|INJECT) done/.test(l)).length, 12);
      assert.ok(lines.includes('+0.460s  vm1@h2  LOAD done (256.0 MiB/256.0 MiB)'));
      assert.match(r.stdout, /\nrestored snapshot snap-0001 of VNE blue \(epoch 1, 3 VMs\) in [\d.]+ m?s\nVNE blue: RUNNING, vni 100, epoch 1, generation 2\n/);
      assert.match(r.stdout, /\nvm1 {2}h1 {4}h2 {7}qemu/);
      const unknownHost = await run('restore', 'snap-0001', '--place', 'vm3=h9', '--stop-running');
      assert.deepEqual(unknownHost, { code: 2, stdout: '', stderr: 'vnsnap: placement: no agent "h9" for VM vm3\n' });
      const aborted = await run('restore', 'snap-0002', '--json');
      assert.equal(aborted.code, 1);
      assert.equal(aborted.stderr, '{"error":{"code":"ERR_FAILED_PRECONDITION","message":"snapshot snap-0002 is SNAPSHOT_STATE_ABORTED: only a COMPLETE snapshot can be restored","exitCode":1}}\n');
    });

    it('agents', async () => {
      const r = await run('agents');
      assert.equal(
        r.stdout,
        'AGENT  HOSTNAME  STATE         TUNNEL         DRIVERS   VMS          LAST SEEN\n' +
          'h1     host-1    CONNECTED     10.0.0.1:6081  qemu,sim  vm1,vm2,web  2025-11-23 08:00:00Z\n' +
          'h2     host-2    CONNECTED     10.0.0.2:6081  qemu,sim  vm3,db       2025-11-23 08:00:00Z\n' +
          'h3     host-3    DISCONNECTED  10.0.0.3:6081  qemu      -            2025-11-23 07:59:30Z\n',
      );
    });

    it('events: lines, or JSON lines; --vne filters', async () => {
      const r = await run('events', '--vne', 'blue');
      assert.equal(r.code, 0);
      assert.equal(r.stdout, '2025-11-23T08:00:01.000Z  snapshot.state  vne=blue snapshot=snap-0001  PRECOPY\n2025-11-23T08:00:03.345Z  snapshot.state  vne=blue snapshot=snap-0001  COMPLETE\n');
      const j = await run('events', '--json');
      assert.equal(j.stdout.split('\n')[0], '{"timeUnixMs":1763884800000,"kind":"agent.connected","vne":"","snapshotId":"","agent":"h1","message":"agent h1 (host-1) connected"}');
      assert.equal(j.stdout.trimEnd().split('\n').length, 4);
      assert.deepEqual(fake.calls.filter((c) => c.method === 'WatchEvents').map((c) => c.request), [{ vne: 'blue' }, { vne: '' }]);
    });
  });
});
