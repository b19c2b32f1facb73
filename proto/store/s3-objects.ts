/**
 * S3Objects: the object backend (object-backend.ts) on an S3 bucket — any S3 API endpoint (Ceph
 * RADOS Gateway, MinIO, AWS), through @aws-sdk/client-s3 (docs/storage.md, "Backends", says why
 * that client). This is how a store reaches past one machine.
 *
 * Guarantees, on top of the contract:
 *   - put() is one PutObject with the whole body and its Content-MD5: S3 makes an object visible
 *     only when its upload completed, and the server refuses a body that does not match its MD5,
 *     so a reader never sees part of an object and an interrupted put leaves no object.
 *   - Credentials come from a file (`credentialsFile`: JSON {"accessKeyId","secretAccessKey"} or
 *     an AWS-style INI file with aws_access_key_id / aws_secret_access_key under [profile]) or
 *     from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY); never from a command
 *     line. Missing or unreadable credentials are ERR_CONFIG at construction.
 *   - Path-style addressing by default (http://host/bucket/key), what RGW and MinIO expect.
 *   - Every request is bounded in time (connect and whole-request timeouts) and retried by the
 *     SDK a few times on network errors; then it fails typed: unreachable, reset or timed out →
 *     ERR_UNAVAILABLE; credentials refused → ERR_PERMISSION_DENIED; quota → ERR_STORE_FULL; an
 *     absent bucket → ERR_CONFIG; absent object on get → ERR_NOT_FOUND; else ERR_INTERNAL. Each
 *     message is one line naming the endpoint, bucket, operation and key.
 *   - list() pages through ListObjectsV2 (1000 keys a page) and returns every key, sorted.
 *   - Checksums the server may not know (the SDK's optional CRC headers, unknown to Ceph 16.2) are
 *     sent only when an operation requires them.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type ListObjectsV2CommandOutput,
} from '@aws-sdk/client-s3';
import { VnsnapError, type ErrorCode } from '../core/errors';
import { checkObjectKey, checkRange, type ObjectBackend, type ObjectInfo } from './object-backend';

export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
}

export interface S3ObjectsOptions {
  /** The S3 endpoint, e.g. http://127.0.0.1:7480 (RGW) or https://s3.eu-west-1.amazonaws.com. */
  endpoint: string;
  bucket: string;
  /** Signing region (default us-east-1; RGW accepts any). */
  region?: string;
  /** Path-style addressing (default true); false for virtual-host style. */
  pathStyle?: boolean;
  /** A file holding the keys (JSON or AWS INI); without it, the environment. */
  credentialsFile?: string;
  /** Profile of an INI credentials file (default "default"). */
  profile?: string;
  /** Give up connecting after this many ms (default 5000). */
  connectTimeoutMs?: number;
  /** Give up on a request (one attempt) after this many ms without progress (default 60000). */
  requestTimeoutMs?: number;
  /** Attempts per request, the first included (default 3). */
  maxAttempts?: number;
}

/** Read credentials from `file` (JSON or INI) or, without a file, from the environment; ERR_CONFIG when absent. */
export function loadS3Credentials(file: string | undefined, profile = 'default', env: NodeJS.ProcessEnv = process.env): S3Credentials {
  if (file === undefined) {
    const accessKeyId = env.AWS_ACCESS_KEY_ID;
    const secretAccessKey = env.AWS_SECRET_ACCESS_KEY;
    if (!accessKeyId || !secretAccessKey) throw new VnsnapError('ERR_CONFIG', 'S3 credentials: no credentials file given and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not both set');
    return { accessKeyId, secretAccessKey };
  }
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new VnsnapError('ERR_CONFIG', `S3 credentials file ${file} cannot be read: ${(e as Error).message}`, { cause: e });
  }
  const found = text.trimStart().startsWith('{') ? fromJson(text, file) : fromIni(text, profile);
  if (!found?.accessKeyId || !found.secretAccessKey) {
    throw new VnsnapError('ERR_CONFIG', `S3 credentials file ${file} holds no access key and secret${text.trimStart().startsWith('{') ? '' : ` in profile [${profile}]`}`);
  }
  return { accessKeyId: found.accessKeyId, secretAccessKey: found.secretAccessKey };
}

function fromJson(text: string, file: string): Partial<S3Credentials> | undefined {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new VnsnapError('ERR_CONFIG', `S3 credentials file ${file} is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
  if (typeof v !== 'object' || v === null) return undefined;
  const o = v as Record<string, unknown>;
  const str = (x: unknown): string | undefined => (typeof x === 'string' ? x : undefined);
  return { accessKeyId: str(o.accessKeyId), secretAccessKey: str(o.secretAccessKey) };
}

/** The AWS shared-credentials format: [profile] sections of `name = value` lines. */
function fromIni(text: string, profile: string): Partial<S3Credentials> | undefined {
  let section = '';
  const out: Partial<S3Credentials> = {};
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const sec = /^\[\s*(?:profile\s+)?([^\]]+?)\s*\]$/.exec(line);
    if (sec) {
      section = sec[1] as string;
      continue;
    }
    const kv = /^([A-Za-z_]+)\s*=\s*(.*)$/.exec(line);
    if (!kv || section !== profile) continue;
    if (kv[1] === 'aws_access_key_id') out.accessKeyId = kv[2];
    if (kv[1] === 'aws_secret_access_key') out.secretAccessKey = kv[2];
  }
  return out;
}

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'ECONNABORTED']);
const DENIED_NAMES = new Set(['AccessDenied', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'RequestTimeTooSkewed', 'Forbidden']);
const FULL_NAMES = new Set(['QuotaExceeded', 'EntityTooLarge', 'InsufficientCapacity']);

/** The typed code of an SDK or network failure (see the header). */
export function s3ErrorCode(e: unknown): ErrorCode {
  const err = e as { name?: string; code?: string; Code?: string; $metadata?: { httpStatusCode?: number }; cause?: unknown };
  const name = err.Code ?? err.name ?? '';
  const status = err.$metadata?.httpStatusCode;
  const netCode = err.code ?? (err.cause as { code?: string } | undefined)?.code;
  if (FULL_NAMES.has(name)) return 'ERR_STORE_FULL';
  if (DENIED_NAMES.has(name) || status === 403 || status === 401) return 'ERR_PERMISSION_DENIED';
  if (name === 'NoSuchKey' || name === 'NotFound') return 'ERR_NOT_FOUND';
  if (name === 'NoSuchBucket') return 'ERR_CONFIG';
  if ((netCode !== undefined && NETWORK_CODES.has(netCode)) || name === 'TimeoutError' || name === 'RequestTimeout' || (status !== undefined && status >= 500)) return 'ERR_UNAVAILABLE';
  if (status === undefined && /socket hang up|ECONNRESET|ECONNREFUSED|timed? ?out/i.test((e as Error).message ?? '')) return 'ERR_UNAVAILABLE';
  return 'ERR_INTERNAL';
}

const REASONS: Partial<Record<ErrorCode, string>> = {
  ERR_UNAVAILABLE: 'the S3 endpoint cannot be reached',
  ERR_PERMISSION_DENIED: 'the S3 credentials were refused',
  ERR_STORE_FULL: 'the bucket is full (quota)',
  ERR_CONFIG: 'the bucket does not exist',
};

export class S3Objects implements ObjectBackend {
  readonly describe: string;
  private readonly client: S3Client;
  private readonly bucket: string;

  constructor(opts: S3ObjectsOptions) {
    let url: URL;
    try {
      url = new URL(opts.endpoint);
    } catch (e) {
      throw new VnsnapError('ERR_CONFIG', `S3 endpoint ${JSON.stringify(opts.endpoint)} is not a URL`, { cause: e });
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new VnsnapError('ERR_CONFIG', `S3 endpoint ${opts.endpoint} must be http:// or https://`);
    if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(opts.bucket)) throw new VnsnapError('ERR_CONFIG', `S3 bucket name ${JSON.stringify(opts.bucket)} is not valid`);
    this.bucket = opts.bucket;
    this.describe = `s3 ${url.origin}/${opts.bucket}`;
    this.client = new S3Client({
      endpoint: url.origin,
      region: opts.region ?? 'us-east-1',
      forcePathStyle: opts.pathStyle ?? true,
      credentials: loadS3Credentials(opts.credentialsFile, opts.profile),
      maxAttempts: opts.maxAttempts ?? 3,
      // Without throwOnRequestTimeout the handler only logs a warning and waits on forever.
      requestHandler: { connectionTimeout: opts.connectTimeoutMs ?? 5000, requestTimeout: opts.requestTimeoutMs ?? 60_000, throwOnRequestTimeout: true },
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
  }

  async put(key: string, data: Uint8Array): Promise<void> {
    checkObjectKey(key, this.describe);
    const md5 = createHash('md5').update(data).digest('base64');
    await this.send('put', key, () => this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: key, Body: data, ContentLength: data.byteLength, ContentMD5: md5 })));
  }

  async get(key: string): Promise<Buffer> {
    checkObjectKey(key, this.describe);
    return this.send('get', key, async () => {
      const out = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }));
      if (!out.Body) return Buffer.alloc(0);
      return Buffer.from(await out.Body.transformToByteArray());
    });
  }

  /** One GET with a Range header (bytes=offset-end); an empty range asks the server nothing. */
  async getRange(key: string, offset: number, length: number): Promise<Buffer> {
    checkObjectKey(key, this.describe);
    checkRange(offset, length, this.describe);
    if (length === 0) {
      if ((await this.head(key)) === null) throw new VnsnapError('ERR_NOT_FOUND', `${this.describe}: object ${key} does not exist`);
      return Buffer.alloc(0);
    }
    return this.send('get', key, async () => {
      try {
        const out = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key, Range: `bytes=${offset}-${offset + length - 1}` }));
        if (!out.Body) return Buffer.alloc(0);
        return Buffer.from(await out.Body.transformToByteArray());
      } catch (e) {
        // A range starting at or past the end: 416 InvalidRange, which the contract says is no bytes.
        if ((e as { name?: string }).name === 'InvalidRange' || (e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 416) return Buffer.alloc(0);
        throw e;
      }
    });
  }

  async head(key: string): Promise<ObjectInfo | null> {
    checkObjectKey(key, this.describe);
    try {
      const out = await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: key }));
      return { key, size: out.ContentLength ?? 0, modifiedMs: out.LastModified?.getTime() ?? 0 };
    } catch (e) {
      // HEAD has no body: an absent key is a bare 404 (an absent bucket too; list/put name that).
      if (s3ErrorCode(e) === 'ERR_NOT_FOUND' || (e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404) return null;
      throw this.failure('head', key, e);
    }
  }

  async list(prefix: string): Promise<string[]> {
    return (await this.listInfo(prefix)).map((o) => o.key);
  }

  async listInfo(prefix: string): Promise<ObjectInfo[]> {
    if (!/^[A-Za-z0-9._/-]*$/.test(prefix)) throw new VnsnapError('ERR_INVALID_ARGUMENT', `${this.describe}: list prefix ${JSON.stringify(prefix)} is not a key prefix`);
    const objects: ObjectInfo[] = [];
    let token: string | undefined;
    do {
      const page: ListObjectsV2CommandOutput = await this.send('list', prefix, () =>
        this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: prefix, ContinuationToken: token, MaxKeys: 1000 })),
      );
      for (const o of page.Contents ?? []) {
        if (o.Key !== undefined) objects.push({ key: o.Key, size: o.Size ?? 0, modifiedMs: o.LastModified?.getTime() ?? 0 });
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
    return objects.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  }

  async delete(key: string): Promise<void> {
    checkObjectKey(key, this.describe);
    await this.send('delete', key, () => this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: key })));
  }

  /** Close the HTTP connections (the backend is unusable afterwards). */
  close(): void {
    this.client.destroy();
  }

  private async send<T>(op: string, key: string, f: () => Promise<T>): Promise<T> {
    try {
      return await f();
    } catch (e) {
      throw this.failure(op, key, e);
    }
  }

  /** One typed line naming the backend, the operation and the key. */
  private failure(op: string, key: string, e: unknown): VnsnapError {
    const code = s3ErrorCode(e);
    const what = op === 'list' ? `list of prefix ${JSON.stringify(key)}` : `${op} ${key}`;
    if (code === 'ERR_NOT_FOUND') return new VnsnapError(code, `${this.describe}: object ${key} does not exist`, { cause: e });
    const err = e as Error & { Code?: string };
    // The SDK says "UnknownError" for error bodies it has no class for (RGW's QuotaExceeded): name the code instead.
    const detail = (err.message && err.message !== 'UnknownError' ? err.message : (err.Code ?? err.name ?? String(e))).split('\n')[0];
    const reason = REASONS[code];
    return new VnsnapError(code, `${this.describe}: ${what} failed: ${reason ? `${reason} (${detail})` : detail}`, { cause: e });
  }
}
