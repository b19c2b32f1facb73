/**
 * LocalObjects against the ObjectBackend compliance suite, on a fresh temporary directory per
 * test; the full-disk case on a 256 KiB tmpfs (needs root to mount; skipped otherwise); and what
 * is particular to a directory: temporary files of an interrupted put stay invisible, a key
 * cannot be both an object and a directory of objects.
 */
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { LocalObjects } from '../../proto/store/local-objects';
import { describeFullBackendCompliance, describeObjectBackendCompliance, rejectsWith } from '../support/compliance/object-backend';

const PREFIX = 'vnsnap-ut-objects-';
const dirs = new Map<LocalObjects, string>();

async function fresh(): Promise<LocalObjects> {
  const dir = await fsp.mkdtemp(path.join(os.tmpdir(), PREFIX));
  const b = new LocalObjects(path.join(dir, 'store'));
  await b.init();
  dirs.set(b, dir);
  return b;
}

async function release(b: LocalObjects): Promise<void> {
  const dir = dirs.get(b);
  dirs.delete(b);
  if (dir) await fsp.rm(dir, { recursive: true, force: true });
}

/** Every file name under root, temporary ones included. */
async function rawFiles(root: string): Promise<string[]> {
  const entries = await fsp.readdir(root, { recursive: true, withFileTypes: true });
  return entries.filter((d) => d.isFile()).map((d) => path.relative(root, path.join(d.parentPath, d.name)));
}

describeObjectBackendCompliance('LocalObjects', {
  open: fresh,
  close: (b) => release(b as LocalObjects),
  // A root below a regular file: no I/O can succeed there.
  unreachable: () => new LocalObjects('/proc/self/status/store'),
});

describe('LocalObjects on a full disk', function () {
  let dir = '';
  let mounted = false;
  before(function () {
    if (process.getuid?.() !== 0) this.skip();
    dir = fs.mkdtempSync(path.join(os.tmpdir(), PREFIX));
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', dir], { stdio: 'pipe' });
    mounted = true;
  });
  after(() => {
    try {
      // Lazy: a file a failed test left open must not keep the mount (and the directory) behind.
      if (mounted) execFileSync('umount', ['-l', dir], { stdio: 'pipe' });
    } finally {
      if (dir) fs.rmSync(dir, { recursive: true, force: true });
    }
  });
  describeFullBackendCompliance('LocalObjects on a 256 KiB tmpfs', async () => {
    const backend = new LocalObjects(path.join(dir, 'store'));
    await backend.init();
    return {
      backend,
      room: 256 * 1024,
      rawNames: () => rawFiles(backend.root),
      close: () => fsp.rm(backend.root, { recursive: true, force: true }),
    };
  });
});

describe('LocalObjects: what a directory adds', () => {
  let b: LocalObjects;
  beforeEach(async () => {
    b = await fresh();
  });
  afterEach(() => release(b));

  it('keeps objects as files under the root, and an interrupted put (a temporary file) out of list, head and get', async () => {
    await b.put('chunks/ab/abc', Buffer.from('data'));
    assert.equal(fs.readFileSync(path.join(b.root, 'chunks/ab/abc'), 'utf8'), 'data');
    fs.writeFileSync(path.join(b.root, 'chunks/ab/.abd.tmp-0123456789ab'), 'partial');
    assert.deepEqual(await b.list(''), ['chunks/ab/abc']);
    assert.deepEqual(await b.list('chunks/ab/.abd'), []);
    await rejectsWith(b.get('chunks/ab/.abd.tmp-0123456789ab'), 'ERR_INVALID_ARGUMENT', /reserved/);
    await rejectsWith(b.head('chunks/ab/.abd.tmp-0123456789ab'), 'ERR_INVALID_ARGUMENT', /reserved/);
    assert.deepEqual((await rawFiles(b.root)).sort(), ['chunks/ab/.abd.tmp-0123456789ab', 'chunks/ab/abc']);
  });

  it('a key cannot be both an object and a directory of objects: ERR_FAILED_PRECONDITION, nothing changed', async () => {
    await b.put('a/b', Buffer.from('1'));
    await rejectsWith(b.put('a', Buffer.from('2')), 'ERR_FAILED_PRECONDITION', /^local .*: put a failed/);
    await rejectsWith(b.put('a/b/c', Buffer.from('3')), 'ERR_FAILED_PRECONDITION', /^local .*: put a\/b\/c failed/);
    assert.equal(await b.head('a'), null);
    await rejectsWith(b.get('a'), 'ERR_NOT_FOUND');
    await b.delete('a');
    assert.deepEqual(await b.list(''), ['a/b']);
    assert.deepEqual(await rawFiles(b.root), ['a/b']);
  });
});
