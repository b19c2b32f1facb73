/**
 * The snapshot store of a test cluster (cluster.ts), of one of three kinds, and the one way
 * tests read it: the SnapshotStore API of the same config the agents and the coordinator are
 * given — never paths joined onto a directory — so a test passes on every kind.
 *
 *   'local'  a content-addressed store in the cluster's directory: "store": DIR (the default)
 *   'files'  the whole-file layout there: { "dir": DIR, "layout": "files" } (tests about that layout)
 *   's3'     a real Ceph RADOS Gateway (ceph-rgw.ts) started for the cluster, a bucket named with
 *            the cluster's prefix, a credentials file in the cluster's directory:
 *            { "s3": { endpoint, bucket, region, credentialsFile } }. The gateway runs on the
 *            test host; a veth from the host into the underlay bridge (address SUBNET.253) lets
 *            the namespaced agents and the coordinator reach it, as they would reach an object
 *            store on the network.
 *
 * stop() removes what start() made (gateway, its directory, the veth), also after a failed start;
 * it is idempotent. `s3Unavailable()` says why an 's3' cluster cannot run here (null when it can),
 * for a test to skip with that reason.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { CasStore } from '../../proto/store/cas-store';
import { S3Objects, loadS3Credentials } from '../../proto/store/s3-objects';
import type { SnapshotStore } from '../../proto/store/snapshot-store';
import { openStore, parseStoreConfig } from '../../proto/store/store-config';
import { cephRgwAvailable, startCephRgw, type CephRgw } from './ceph-rgw';
import { sh, type Topology } from './netns';

export type ClusterStoreKind = 'local' | 'files' | 's3';

/**
 * Files under `dir` (recursive) that hold a whole artefact — same size and SHA-256 as one of
 * `artefacts` — as "file = artefact path": what a store that keeps nothing locally must leave
 * empty.
 */
export function localArtefactCopies(dir: string, artefacts: readonly { path: string; size: number; sha256: string }[]): string[] {
  const bySize = new Map<number, { path: string; sha256: string }[]>();
  for (const a of artefacts) bySize.set(Number(a.size), [...(bySize.get(Number(a.size)) ?? []), a]);
  const out: string[] = [];
  for (const rel of fs.readdirSync(dir, { recursive: true, encoding: 'utf8' })) {
    const file = path.join(dir, rel);
    const st = fs.statSync(file, { throwIfNoEntry: false });
    const same = st?.isFile() ? bySize.get(st.size) : undefined;
    if (!same) continue;
    const sum = createHash('sha256').update(fs.readFileSync(file)).digest('hex');
    for (const a of same) if (a.sha256 === sum) out.push(`${file} = ${a.path}`);
  }
  return out;
}

/** Why an 's3' cluster cannot run here, or null. */
export function s3Unavailable(): string | null {
  return cephRgwAvailable() ? null : 'the Ceph RGW packages (ceph-mon ceph-osd radosgw ceph-common) are not installed, or not root';
}

export class ClusterStore {
  /** The value of the agents' and the coordinator's "store" key (JSON). */
  config: unknown;
  private rgw: CephRgw | undefined;
  private reader: SnapshotStore | undefined;
  private readonly s3Clients: S3Objects[] = [];
  private veth: string | undefined;

  constructor(
    readonly kind: ClusterStoreKind,
    /** The local store's directory (kinds 'local' and 'files'). */
    readonly dir: string,
  ) {
    this.config = kind === 'files' ? { dir, layout: 'files' } : dir;
  }

  /**
   * Kind 's3': the gateway, reachable at `${subnet}.253` from the namespaces of `topo` (its "ul"
   * namespace must hold the underlay bridge br0), a bucket `${prefix}-store`, the credentials
   * file in `clusterDir`. Nothing to do for the local kinds.
   */
  async start(topo: Topology, subnet: string, clusterDir: string): Promise<void> {
    if (this.kind !== 's3') return;
    const why = s3Unavailable();
    if (why) throw new Error(`a cluster with store 's3' cannot run: ${why}`);
    const p = topo.prefix;
    const addr = `${subnet}.253`;
    this.veth = `${p}r0`;
    sh('ip', ['link', 'add', this.veth, 'type', 'veth', 'peer', 'name', `${p}r1`, 'netns', topo.ns('ul')]);
    sh('ip', ['addr', 'add', `${addr}/24`, 'dev', this.veth]);
    sh('ip', ['link', 'set', this.veth, 'up']);
    topo.exec('ul', 'ip', ['link', 'set', `${p}r1`, 'master', 'br0', 'up']);
    this.rgw = await startCephRgw(`${p}-rgw`, { alsoListen: addr });
    const bucket = `${p}-store`;
    const creds = loadS3Credentials(this.rgw.credentialsFile);
    const admin = new S3Client({ endpoint: this.rgw.endpoint, region: this.rgw.region, forcePathStyle: true, credentials: creds });
    try {
      await admin.send(new CreateBucketCommand({ Bucket: bucket }));
    } finally {
      admin.destroy();
    }
    const credentialsFile = path.join(clusterDir, 's3-credentials.json');
    fs.writeFileSync(credentialsFile, JSON.stringify(creds), { mode: 0o600 });
    const port = new URL(this.rgw.endpoint).port;
    this.config = { s3: { endpoint: `http://${addr}:${port}`, bucket, region: this.rgw.region, credentialsFile } };
  }

  /** The cluster's store, read from the test process (S3: over the gateway's loopback address). */
  async open(): Promise<SnapshotStore> {
    if (this.reader) return this.reader;
    const cfg = parseStoreConfig(this.config);
    if (cfg.kind === 's3') {
      if (!this.rgw) throw new Error('the cluster store is not started');
      const b = new S3Objects({ ...cfg.s3, endpoint: this.rgw.endpoint, connectTimeoutMs: 2000, requestTimeoutMs: 30_000 });
      this.s3Clients.push(b);
      this.reader = new CasStore(b);
    } else {
      this.reader = await openStore(cfg);
    }
    return this.reader;
  }

  async stop(): Promise<void> {
    for (const c of this.s3Clients.splice(0)) c.close();
    this.reader = undefined;
    const rgw = this.rgw;
    this.rgw = undefined;
    try {
      await rgw?.stop();
    } finally {
      if (this.veth) sh('ip', ['link', 'del', this.veth], { allowFail: true });
      this.veth = undefined;
    }
  }
}
