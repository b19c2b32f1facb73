/**
 * A real Ceph RADOS Gateway for tests, through test/support/ceph-rgw.sh: one single-node cluster
 * (mon, memstore OSD, rgw on 127.0.0.1) in a temporary directory named with the caller's prefix,
 * with a bucket and fixed test keys written to a credentials file.
 *
 *   const rgw = await startCephRgw('vnsnap-it-s3');   // in before(); ~1.5–4 s cold
 *   ... new S3Objects({ endpoint: rgw.endpoint, bucket: rgw.bucket, credentialsFile: rgw.credentialsFile, ... })
 *   await rgw.killRgw(); await rgw.startRgw();         // fault tests: the gateway dies mid-request
 *   await rgw.stop();                                  // in after(); idempotent, removes the directory
 *
 * Only the gateway is killed in fault tests: the memstore OSD keeps objects in RAM, so an OSD
 * restart would lose every object, which is not the fault under test. `available()` tells a test
 * file whether the Ceph packages are installed (root is needed too).
 */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export const CEPH_RGW_SCRIPT = path.resolve(__dirname, '../../../test/support/ceph-rgw.sh');

export interface CephRgw {
  /** The cluster's directory (config, keys, logs). */
  readonly dir: string;
  /** http://127.0.0.1:PORT */
  readonly endpoint: string;
  readonly bucket: string;
  readonly region: string;
  /** A JSON file {"accessKeyId","secretAccessKey"} with the test user's keys. */
  readonly credentialsFile: string;
  /** Milliseconds from nothing to a bucket that takes requests. */
  readonly coldStartMs: number;
  /** SIGKILL the gateway and wait until it is gone. */
  killRgw(): Promise<void>;
  /** Start the gateway again and wait until it answers. */
  startRgw(): Promise<void>;
  /** Stop rgw, osd, mon in that order and remove the directory (idempotent). */
  stop(): Promise<void>;
}

/** True when the Ceph daemons this needs are installed and we are root. */
export function cephRgwAvailable(): boolean {
  const onPath = (bin: string): boolean => (process.env.PATH ?? '').split(':').some((d) => d !== '' && fs.existsSync(path.join(d, bin)));
  return process.getuid?.() === 0 && ['ceph-mon', 'ceph-osd', 'radosgw', 'radosgw-admin'].every(onPath);
}

async function script(args: string[], timeoutMs: number, env: NodeJS.ProcessEnv = process.env): Promise<string> {
  try {
    const { stdout } = await run('bash', [CEPH_RGW_SCRIPT, ...args], { timeout: timeoutMs, maxBuffer: 1 << 20, env });
    return stdout;
  } catch (e) {
    const err = e as Error & { stderr?: string };
    const last = (err.stderr ?? '').trim().split('\n').pop() ?? '';
    throw new Error(`ceph-rgw.sh ${args[0]} failed: ${last || err.message}`, { cause: e });
  }
}

/**
 * Start a cluster in /tmp/PREFIX.XXXXXX; the script removes everything itself when the start
 * fails. `alsoListen`: an address of this host the gateway listens on too (same port), for
 * clients in other network namespaces (the endpoint reported stays on 127.0.0.1).
 */
export async function startCephRgw(prefix: string, opts: { alsoListen?: string } = {}): Promise<CephRgw> {
  const out = await script(['start', prefix], 180_000, opts.alsoListen ? { ...process.env, RGW_ALSO_LISTEN: opts.alsoListen } : process.env);
  const env = new Map<string, string>();
  for (const line of out.split('\n')) {
    const m = /^(RGW_[A-Z_]+)=(.*)$/.exec(line);
    if (m) env.set(m[1] as string, m[2] as string);
  }
  const need = (k: string): string => {
    const v = env.get(k);
    if (v === undefined) throw new Error(`ceph-rgw.sh start printed no ${k}`);
    return v;
  };
  const dir = need('RGW_DIR');
  let stopped = false;
  return {
    dir,
    endpoint: need('RGW_ENDPOINT'),
    bucket: need('RGW_BUCKET'),
    region: need('RGW_REGION'),
    credentialsFile: need('RGW_CREDENTIALS'),
    coldStartMs: Number(need('RGW_COLD_START_MS')),
    killRgw: async () => {
      await script(['kill-rgw', dir], 30_000);
    },
    startRgw: async () => {
      await script(['start-rgw', dir], 90_000);
    },
    stop: async () => {
      if (stopped) return;
      stopped = true;
      await script(['stop', dir], 90_000);
    },
  };
}
