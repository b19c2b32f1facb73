/**
 * A snapshot's overlay without qemu-img (overlay-template.ts) and a qcow2 header read without it
 * (qcow2-header.ts), against qemu-img itself: an overlay made from the template is byte for byte
 * the one `qemu-img create` makes with the same backing name, and the header reader gives what
 * `qemu-img info` gives (virtual size, backing file resolved as full-backing-filename). qemu-img
 * makes the real files.
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createOverlay, forgetTemplates, templateOf } from '../../agent/drivers/qemu/overlay-template';
import { OVERLAY_CREATE_OPTIONS } from '../../agent/drivers/qemu/overlay-format';
import { readQcow2Header } from '../../agent/drivers/qemu/qcow2-header';

const qemuImg = (args: string[]): string => execFileSync('qemu-img', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const create = (file: string, backing: string, size: number): void => void qemuImg(['create', '-q', '-f', 'qcow2', ...OVERLAY_CREATE_OPTIONS, '-u', '-b', backing, '-F', 'qcow2', file, String(size)]);
const info = (file: string): { 'virtual-size': number; 'full-backing-filename'?: string } => JSON.parse(qemuImg(['info', '-U', '--output=json', file])) as { 'virtual-size': number; 'full-backing-filename'?: string };

describe('overlays from a template of qemu-img (overlay-template.ts) and qcow2 headers (qcow2-header.ts)', () => {
  let dir: string;
  let calls: string[];
  const viaQemuImg = async (f: string, backing: string, size: number): Promise<void> => {
    calls.push(f);
    create(f, backing, size);
    return Promise.resolve();
  };
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnqt-unit-'));
    calls = [];
    forgetTemplates();
    qemuImg(['create', '-q', '-f', 'qcow2', path.join(dir, 'base.qcow2'), '1G']);
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  for (const size of [64 * 1024 * 1024, 1024 * 1024 * 1024, 20 * 1024 * 1024 * 1024 + 4096]) {
    it(`a ${size}-byte overlay: the first made by qemu-img, the next ones from its template byte for byte what qemu-img makes`, async () => {
      const base = path.join(dir, 'base.qcow2');
      const first = path.join(dir, 'disk-e1-1.qcow2');
      await createOverlay(first, base, size, (f) => viaQemuImg(f, base, size));
      assert.deepEqual(calls, [first]);
      // Backing names shorter and longer than the first one's.
      for (const [n, backing] of [first, path.join(dir, 'd.qcow2'), path.join(dir, 'a-much-longer-directory-name', 'disk-e12345-67890-3.qcow2')].entries()) {
        const made = path.join(dir, `made-${n}.qcow2`);
        const ref = path.join(dir, `ref-${n}.qcow2`);
        await createOverlay(made, backing, size, (f) => viaQemuImg(f, backing, size));
        create(ref, backing, size);
        if (!fs.existsSync(backing)) {
          fs.mkdirSync(path.dirname(backing), { recursive: true });
          qemuImg(['create', '-q', '-f', 'qcow2', backing, '1G']);
        }
        assert.ok(fs.readFileSync(made).equals(fs.readFileSync(ref)), `overlay over ${backing} differs from qemu-img's`);
        qemuImg(['check', '-q', made]);
        assert.deepEqual(await readQcow2Header(made), { virtualSize: size, backing });
      }
      assert.deepEqual(calls, [first]);
    });
  }

  it('a name longer than qemu allows is left to qemu-img (which refuses it); an existing file is never overwritten', async () => {
    const base = path.join(dir, 'base.qcow2');
    const size = 1 << 30;
    const first = path.join(dir, 'first.qcow2');
    await createOverlay(first, base, size, (f) => viaQemuImg(f, base, size));
    const long = path.join(dir, 'x'.repeat(1100));
    const f = path.join(dir, 'long.qcow2');
    await assert.rejects(createOverlay(f, long, size, (g) => viaQemuImg(g, long, size)), /Could not assign backing file/);
    assert.deepEqual(calls, [first, f]);
    await assert.rejects(createOverlay(first, base, size, (g) => viaQemuImg(g, base, size)), /EEXIST/);
    assert.deepEqual(calls, [first, f]);
  });

  it('the header reader gives what qemu-img info gives, and undefined for another format', async () => {
    const base = path.join(dir, 'base.qcow2');
    assert.deepEqual(await readQcow2Header(base), { virtualSize: 1 << 30, backing: undefined });
    const sub = path.join(dir, 'sub');
    fs.mkdirSync(sub);
    const rel = path.join(sub, 'rel.qcow2');
    qemuImg(['create', '-q', '-f', 'qcow2', '-u', '-b', '../base.qcow2', '-F', 'qcow2', rel, '1G']);
    const i = info(rel);
    assert.deepEqual(await readQcow2Header(rel), { virtualSize: i['virtual-size'], backing: path.resolve(i['full-backing-filename'] as string) });
    assert.equal((await readQcow2Header(rel))?.backing, base);
    const raw = path.join(dir, 'raw.img');
    fs.writeFileSync(raw, Buffer.alloc(65536));
    assert.equal(await readQcow2Header(raw), undefined);
    assert.equal(templateOf(fs.readFileSync(raw)), null);
    await assert.rejects(readQcow2Header(path.join(dir, 'missing.qcow2')), /ENOENT/);
  });
});
