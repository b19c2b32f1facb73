/**
 * Host side of the nested-Xen test bed (docs/xen.md): build or find the cached images
 * (build-testbed.sh), boot Xen + dom0 under QEMU TCG with a qcow2 overlay over the cached dom0
 * image (the cache stays pristine), 9p shares of the checkout (read-only), an exchange directory
 * and the image directory, run one script in dom0 and collect what it left in the exchange
 * directory. QEMU is killed and the overlay removed at the end, also on failure or timeout.
 */
import { execFile, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { sleep } from '../support/wait';

export const REPO = path.resolve(__dirname, '..', '..', '..');
const SCRIPT = path.join(REPO, 'test', 'xen', 'build-testbed.sh');

function sh(cmd: string, args: string[], timeoutMs: number): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/**
 * A checkout whose node_modules is a symlink (a git worktree sharing another checkout's) cannot
 * resolve it inside dom0, where the checkout is the 9p share at /vnsnap: the link's target
 * is not there. Such a node_modules is shared separately (tag "nodemods") and dom0 finds it
 * through NODE_PATH (DOM0_NODE_PATH); null when node_modules is a plain directory.
 */
function nodeModulesShare(): string | null {
  const nm = path.join(REPO, 'node_modules');
  return fs.existsSync(nm) && fs.lstatSync(nm).isSymbolicLink() ? fs.realpathSync(nm) : null;
}

/** Shell lines for a dom0 script: mount the shared node_modules (nodeModulesShare) and point NODE_PATH at it. */
const DOM0_NODE_PATH = 'if [ -n "$(grep -l nodemods /sys/bus/virtio/drivers/9pnet_virtio/*/mount_tag 2>/dev/null)" ]; then mkdir -p /vnxen-nm && mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro nodemods /vnxen-nm && export NODE_PATH=/vnxen-nm; fi\n';

/** The cached test bed's directory, or null when it is not built for the current inputs. */
export async function cachedTestbed(): Promise<string | null> {
  const r = await sh('bash', [SCRIPT, '--print-paths'], 120_000);
  if (r.code !== 0) return null;
  return /VNXEN_DIR=(.*)/.exec(r.stdout)?.[1]?.trim() ?? null;
}

/**
 * The `before` of a nested-Xen test file: skipped (with a line saying how to run it) unless
 * VNSNAP_XEN=1, skipped when not root; else the test bed's directory (built if needed).
 */
export async function testbedOrSkip(ctx: Mocha.Context): Promise<string> {
  if (process.env.VNSNAP_XEN !== '1') {
    console.log('    (skipped: the nested-Xen tests take 8+ minutes; run them with `npm run test:xen`)');
    ctx.skip();
  }
  if (process.getuid?.() !== 0) ctx.skip();
  return buildTestbed();
}

/** Build (or reuse) the test bed; returns its directory. Minutes on a first build. */
export async function buildTestbed(): Promise<string> {
  const r = await sh('bash', [SCRIPT], 30 * 60_000);
  const dir = /VNXEN_DIR=(.*)/.exec(r.stdout)?.[1]?.trim();
  if (r.code !== 0 || !dir) throw new Error(`build-testbed.sh failed (${r.code}): ${r.stderr.trim().split('\n').slice(-5).join(' | ')}`);
  return dir;
}

export interface XenRun {
  /** Exit status of the dom0 script, null if it never finished. */
  rc: number | null;
  /** The exchange directory (kept when keep is set or the run failed). */
  exchange: string;
  /** Xen + dom0 serial console. */
  console: string;
  /** The script's output (run.log). */
  log: string;
  /** The files named in XenRunOptions.results, read from the exchange directory before it is removed (absent ones left out). */
  results: Record<string, string>;
  bootToDoneMs: number;
}

export interface XenRunOptions {
  /** Directory of the test bed (buildTestbed()). */
  dir: string;
  /** Shell script run in dom0 (its text; written to the exchange directory as run.sh). */
  script: string;
  /** Extra files for the exchange directory. */
  files?: Record<string, string | Buffer>;
  timeoutMs: number;
  memMib?: number;
  dom0MemMib?: number;
  /** Leave the exchange directory in place (its path is in the result). */
  keep?: boolean;
  /** Files the dom0 script writes to the exchange directory (/vnxen) that the caller wants back. */
  results?: string[];
  onConsoleLine?: (line: string) => void;
}

/** Boot the test bed, run the script in dom0, return when it finished (or timed out). */
export async function runInDom0(o: XenRunOptions): Promise<XenRun> {
  const work = await fsp.mkdtemp(path.join(os.tmpdir(), 'vnxen-'));
  const exchange = path.join(work, 'x');
  await fsp.mkdir(exchange);
  await fsp.writeFile(path.join(exchange, 'run.sh'), o.script, { mode: 0o755 });
  for (const [n, c] of Object.entries(o.files ?? {})) await fsp.writeFile(path.join(exchange, n), c);
  const overlay = path.join(work, 'dom0.qcow2');
  const mk = await sh('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', path.join(o.dir, 'dom0.img'), overlay], 60_000);
  if (mk.code !== 0) throw new Error(`qemu-img create failed: ${mk.stderr}`);
  const consoleFile = path.join(work, 'console.log');
  const dom0Mem = o.dom0MemMib ?? 1024;
  const args = [
    '-name', 'vnxen-testbed',
    '-accel', 'tcg,thread=multi', '-machine', 'pc', '-cpu', 'qemu64', '-smp', '2', '-m', String(o.memMib ?? 3072),
    '-nodefaults', '-no-user-config', '-display', 'none', '-vga', 'none', '-no-reboot',
    '-kernel', path.join(o.dir, 'xen.elf'),
    '-append', `console=com1 com1=115200,8n1 dom0_mem=${dom0Mem}M,max:${dom0Mem}M dom0_max_vcpus=2 noreboot`,
    '-initrd', `${path.join(o.dir, 'vmlinuz')} console=hvc0 root=/dev/vda rw init=/sbin/vnxen-init vnxen.run=/vnxen/run.sh,${path.join(o.dir, 'initrd.img')}`,
    '-drive', `file=${overlay},if=virtio,format=qcow2,cache=unsafe`,
    '-virtfs', `local,path=${REPO},mount_tag=work,security_model=none,readonly=on`,
    '-virtfs', `local,path=${exchange},mount_tag=vnxen,security_model=none`,
    '-virtfs', `local,path=${o.dir},mount_tag=img,security_model=none,readonly=on`,
    '-serial', `file:${consoleFile}`,
  ];
  const nm = nodeModulesShare();
  if (nm) args.push('-virtfs', `local,path=${nm},mount_tag=nodemods,security_model=none,readonly=on`);
  const t0 = Date.now();
  const q = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let qemuErr = '';
  q.stderr.on('data', (d: Buffer) => (qemuErr += d.toString()));
  const qemuExited = new Promise<void>((r) => q.on('close', () => r()));
  const rcFile = path.join(exchange, 'run.rc');
  let rc: number | null = null;
  let seen = 0;
  let done = false;
  try {
    while (Date.now() - t0 < o.timeoutMs) {
      await Promise.race([sleep(1000), qemuExited]);
      if (o.onConsoleLine && fs.existsSync(consoleFile)) {
        const text = fs.readFileSync(consoleFile, 'latin1');
        const lines = text.slice(seen).split('\n');
        const complete = lines.slice(0, -1);
        seen += complete.reduce((n, l) => n + l.length + 1, 0);
        for (const l of complete) o.onConsoleLine(l);
      }
      if (fs.existsSync(rcFile)) {
        rc = Number(fs.readFileSync(rcFile, 'utf8').trim());
        done = true;
        break;
      }
      if (q.exitCode !== null || q.signalCode !== null) break;
    }
  } finally {
    if (q.exitCode === null && q.signalCode === null) {
      q.kill('SIGKILL');
      await qemuExited;
    }
    await fsp.rm(overlay, { force: true });
  }
  const consoleText = fs.existsSync(consoleFile) ? fs.readFileSync(consoleFile, 'latin1') : '';
  const log = fs.existsSync(path.join(exchange, 'run.log')) ? fs.readFileSync(path.join(exchange, 'run.log'), 'utf8') : '';
  const results: Record<string, string> = {};
  for (const n of o.results ?? []) {
    const f = path.join(exchange, n);
    if (fs.existsSync(f)) results[n] = fs.readFileSync(f, 'utf8');
  }
  const result: XenRun = { rc, exchange, console: consoleText + (qemuErr ? `\n[qemu stderr] ${qemuErr}` : ''), log, results, bootToDoneMs: Date.now() - t0 };
  if (!o.keep && done && rc === 0) await fsp.rm(work, { recursive: true, force: true });
  else await fsp.copyFile(consoleFile, path.join(exchange, 'console.log')).catch(() => undefined);
  return result;
}

/**
 * Run one of the compiled programs of test/xen in dom0 (`node dist/test/xen/NAME.js ARGS`, Xen's
 * logs copied to the exchange directory) and parse the JSON result file it writes to /vnxen.
 */
export async function runDom0Program<T>(o: { dir: string; program: string; args?: string[]; result: string; timeoutMs: number }): Promise<{ run: XenRun; result: T | undefined }> {
  const cmd = ['node', `dist/test/xen/${o.program}.js`, ...(o.args ?? [])].join(' ');
  const run = await runInDom0({
    dir: o.dir,
    script: `#!/bin/sh\n${DOM0_NODE_PATH}cd /vnsnap && ${cmd}\nrc=$?\ncp -r /var/log/xen /vnxen/xenlog 2>/dev/null\nexit $rc\n`,
    timeoutMs: o.timeoutMs,
    results: [o.result],
  });
  const text = run.results[o.result];
  return { run, result: text !== undefined ? (JSON.parse(text) as T) : undefined };
}
