/**
 * The CLI's connection to the coordinator: a grpc-js CoordinatorService client with promise
 * wrappers for the unary calls, the three server streams as they are, and the one function that
 * turns any gRPC failure into a CliError a person understands (exit code included).
 *
 * Unreachable vs refused: a status the coordinator itself sent carries the vnsnap error code in
 * its trailers (proto/core/grpc-status.ts) and maps through that code; an UNAVAILABLE (or a deadline,
 * or a non-gRPC answer) without that tag means we never talked to a coordinator: exit 4, unless
 * the TLS handshake failed, which is said in words (credentials.ts) with exit 5, like a call
 * the caller's role may not make (PERMISSION_DENIED). A stream that the coordinator had answered
 * and that then lost its connection is neither: the coordinator was reached, the outcome of the
 * operation is unknown (exit 6, with the commands that find it out).
 *
 * The coordinator's messages reach the person in the CLI's words (wording.ts: flags, not
 * request fields).
 */
import * as grpc from '@grpc/grpc-js';
import { fromServiceError, ERROR_CODE_METADATA_KEY } from '../../proto/core/grpc-status';
import { coordinatorClientClass } from '../../proto/core/coordinator-client';
import type { CoordinatorServiceClient } from '../../proto/gen/vnsnap/v1/CoordinatorService';
import type { CreateSnapshotRequest } from '../../proto/gen/vnsnap/v1/CreateSnapshotRequest';
import type { DeleteSnapshotResponse__Output } from '../../proto/gen/vnsnap/v1/DeleteSnapshotResponse';
import type { DeleteVneRequest } from '../../proto/gen/vnsnap/v1/DeleteVneRequest';
import type { DeleteVneResponse__Output } from '../../proto/gen/vnsnap/v1/DeleteVneResponse';
import type { Event__Output } from '../../proto/gen/vnsnap/v1/Event';
import type { ListAgentsResponse__Output } from '../../proto/gen/vnsnap/v1/ListAgentsResponse';
import type { ListSnapshotsResponse__Output } from '../../proto/gen/vnsnap/v1/ListSnapshotsResponse';
import type { ListVnesResponse__Output } from '../../proto/gen/vnsnap/v1/ListVnesResponse';
import type { RestoreSnapshotRequest } from '../../proto/gen/vnsnap/v1/RestoreSnapshotRequest';
import type { MigrateVneRequest } from '../../proto/gen/vnsnap/v1/MigrateVneRequest';
import type { Snapshot__Output } from '../../proto/gen/vnsnap/v1/Snapshot';
import type { SnapshotEvent__Output } from '../../proto/gen/vnsnap/v1/SnapshotEvent';
import type { StartVneResponse__Output } from '../../proto/gen/vnsnap/v1/StartVneResponse';
import type { StopVneResponse__Output } from '../../proto/gen/vnsnap/v1/StopVneResponse';
import type { Vne, Vne__Output } from '../../proto/gen/vnsnap/v1/Vne';
import type { DeleteScheduleResponse__Output } from '../../proto/gen/vnsnap/v1/DeleteScheduleResponse';
import type { ListSchedulesResponse__Output } from '../../proto/gen/vnsnap/v1/ListSchedulesResponse';
import type { Schedule__Output } from '../../proto/gen/vnsnap/v1/Schedule';
import type { SetScheduleRequest } from '../../proto/gen/vnsnap/v1/SetScheduleRequest';
import type { GcEvent__Output } from '../../proto/gen/vnsnap/v1/GcEvent';
import type { StoreStats__Output } from '../../proto/gen/vnsnap/v1/StoreStats';
import { CliError, EXIT, exitCodeForErrorCode } from './exit-codes';
import { describeTlsFailure, type CliCredentials } from './credentials';
import { inCliTerms } from './wording';

export const DEFAULT_COORDINATOR = '127.0.0.1:7443';
/** Deadline of every unary call (starting a VNE's VMs may take a while). */
export const UNARY_DEADLINE_MS = 120_000;

/** Check a --coordinator value: host:port, [v6]:port, or a unix: target. */
export function parseCoordinatorAddress(a: string): string {
  const s = a.trim();
  if (s.startsWith('unix:')) return s;
  const m = /^(\[[0-9a-fA-F:.]+\]|[^\s:/[\]]+):(\d{1,5})$/.exec(s);
  if (!m || Number(m[2]) < 1 || Number(m[2]) > 65535) {
    throw new CliError(EXIT.USAGE, `--coordinator expects host:port (e.g. 127.0.0.1:7443), got "${a}"`);
  }
  return s;
}

type Start<Res> = (md: grpc.Metadata, opts: grpc.CallOptions, cb: grpc.requestCallback<Res>) => unknown;

function isServiceError(e: unknown): e is grpc.ServiceError {
  return typeof e === 'object' && e !== null && typeof (e as grpc.ServiceError).code === 'number' && 'details' in e;
}

/** Why a connection failed, in words (from grpc-js's details text). */
function unreachableReason(details: string): string {
  if (/ECONNREFUSED/.test(details)) return 'connection refused';
  if (/Name resolution failed|ENOTFOUND|EAI_AGAIN/.test(details)) return 'host name not found';
  if (/ETIMEDOUT|Deadline exceeded/i.test(details)) return 'timed out';
  if (/EHOSTUNREACH|ENETUNREACH/.test(details)) return 'no route to host';
  if (/ECONNRESET|EPIPE/.test(details)) return 'connection reset';
  if (/Connection dropped/i.test(details)) return 'connection dropped';
  return details.replace(/\s+/g, ' ').trim() || 'unavailable';
}

/** Untagged statuses grpc-js gives a call whose connection went away under it. */
const LOST_CONNECTION: readonly grpc.status[] = [grpc.status.UNAVAILABLE, grpc.status.INTERNAL, grpc.status.UNKNOWN];

export class CoordinatorClient {
  readonly address: string;
  private readonly c: CoordinatorServiceClient;

  constructor(
    address: string,
    private readonly creds: CliCredentials,
  ) {
    this.address = address;
    const Client = coordinatorClientClass();
    this.c = new Client(address, creds.credentials);
  }

  close(): void {
    this.c.close();
  }

  /** Any failure of a call → CliError (exit code and a one-line message). */
  toCliError(e: unknown, what: string): CliError {
    if (e instanceof CliError) return e;
    if (!isServiceError(e)) return new CliError(EXIT.FAILED, `${what}: ${e instanceof Error ? e.message : String(e)}`);
    const tagged = e.metadata?.get(ERROR_CODE_METADATA_KEY)[0] !== undefined;
    const neverConnected = this.c.getChannel().getConnectivityState(false) !== grpc.connectivityState.READY;
    if (!tagged) {
      const tls = e.code === grpc.status.UNAVAILABLE ? describeTlsFailure(e.details, this.address.replace(/:\d+$/, ''), this.creds.files) : undefined;
      if (tls) return new CliError(EXIT.DENIED, `${tls} (coordinator ${this.address})`, 'ERR_UNAUTHENTICATED');
      if (e.code === grpc.status.UNAVAILABLE || (e.code === grpc.status.DEADLINE_EXCEEDED && neverConnected)) {
        return new CliError(EXIT.UNREACHABLE, `cannot reach the coordinator at ${this.address}: ${unreachableReason(e.details)} (is it running? set --coordinator or VNSNAP_COORDINATOR)`, 'ERR_UNAVAILABLE');
      }
      if (e.code === grpc.status.UNIMPLEMENTED) {
        return new CliError(EXIT.UNREACHABLE, `${this.address} does not answer as a vnsnap coordinator (${e.details || 'unimplemented'}): check --coordinator`, 'ERR_UNAVAILABLE');
      }
    }
    const v = fromServiceError(e);
    return new CliError(exitCodeForErrorCode(v.code), inCliTerms(v.message), v.code);
  }

  /**
   * The failure of a stream the coordinator had answered (it sent headers or an event): when it
   * is the connection that went (the coordinator died or the network dropped; no status of the
   * coordinator's own), the operation's outcome is unknown, not "cannot reach": exit 6 with
   * `findIt`, the commands that tell. Any other failure as toCliError.
   */
  toStreamError(e: unknown, what: string, findIt: string): CliError {
    if (isServiceError(e) && e.metadata?.get(ERROR_CODE_METADATA_KEY)[0] === undefined && LOST_CONNECTION.includes(e.code)) {
      return new CliError(
        EXIT.OUTCOME_UNKNOWN,
        `lost the connection to the coordinator at ${this.address} (${unreachableReason(e.details)}) during the ${what}: its outcome is unknown; find it with: ${findIt}`,
        'ERR_UNAVAILABLE',
      );
    }
    return this.toCliError(e, what);
  }

  private unary<Res>(what: string, start: Start<Res>): Promise<Res> {
    return new Promise((resolve, reject) => {
      start(new grpc.Metadata(), { deadline: Date.now() + UNARY_DEADLINE_MS }, (err, res) => {
        if (err) reject(this.toCliError(err, what));
        else if (res === undefined) reject(new CliError(EXIT.FAILED, `${what}: the coordinator sent no response`));
        else resolve(res);
      });
    });
  }

  defineVne(vne: Vne): Promise<Vne__Output> {
    return this.unary('define VNE', (md, o, cb) => this.c.defineVne({ vne }, md, o, cb));
  }
  updateVne(vne: Vne): Promise<Vne__Output> {
    return this.unary('update VNE', (md, o, cb) => this.c.updateVne({ vne }, md, o, cb));
  }
  deleteVne(req: DeleteVneRequest): Promise<DeleteVneResponse__Output> {
    return this.unary('delete VNE', (md, o, cb) => this.c.deleteVne(req, md, o, cb));
  }
  listVnes(): Promise<ListVnesResponse__Output> {
    return this.unary('list VNEs', (md, o, cb) => this.c.listVnes({}, md, o, cb));
  }
  getVne(name: string): Promise<Vne__Output> {
    return this.unary('show VNE', (md, o, cb) => this.c.getVne({ name }, md, o, cb));
  }
  startVne(name: string, discardDisks = false): Promise<StartVneResponse__Output> {
    return this.unary('start VNE', (md, o, cb) => this.c.startVne({ name, discardDisks }, md, o, cb));
  }
  stopVne(name: string, discardDisks = false): Promise<StopVneResponse__Output> {
    return this.unary('stop VNE', (md, o, cb) => this.c.stopVne({ name, discardDisks }, md, o, cb));
  }
  listAgents(): Promise<ListAgentsResponse__Output> {
    return this.unary('list agents', (md, o, cb) => this.c.listAgents({}, md, o, cb));
  }
  listSnapshots(vne: string): Promise<ListSnapshotsResponse__Output> {
    return this.unary('list snapshots', (md, o, cb) => this.c.listSnapshots({ vne }, md, o, cb));
  }
  getSnapshot(id: string): Promise<Snapshot__Output> {
    return this.unary('show snapshot', (md, o, cb) => this.c.getSnapshot({ id }, md, o, cb));
  }
  deleteSnapshot(id: string): Promise<DeleteSnapshotResponse__Output> {
    return this.unary('delete snapshot', (md, o, cb) => this.c.deleteSnapshot({ id }, md, o, cb));
  }

  setSchedule(req: SetScheduleRequest): Promise<Schedule__Output> {
    return this.unary('set schedule', (md, o, cb) => this.c.setSchedule(req, md, o, cb));
  }
  listSchedules(): Promise<ListSchedulesResponse__Output> {
    return this.unary('list schedules', (md, o, cb) => this.c.listSchedules({}, md, o, cb));
  }
  getSchedule(vne: string): Promise<Schedule__Output> {
    return this.unary('show schedule', (md, o, cb) => this.c.getSchedule({ vne }, md, o, cb));
  }
  deleteSchedule(vne: string): Promise<DeleteScheduleResponse__Output> {
    return this.unary('delete schedule', (md, o, cb) => this.c.deleteSchedule({ vne }, md, o, cb));
  }

  createSnapshot(req: CreateSnapshotRequest): grpc.ClientReadableStream<SnapshotEvent__Output> {
    return this.c.createSnapshot(req);
  }
  restoreSnapshot(req: RestoreSnapshotRequest): grpc.ClientReadableStream<SnapshotEvent__Output> {
    return this.c.restoreSnapshot(req);
  }
  migrateVne(req: MigrateVneRequest): grpc.ClientReadableStream<SnapshotEvent__Output> {
    return this.c.migrateVne(req);
  }
  verifySnapshot(id: string): grpc.ClientReadableStream<SnapshotEvent__Output> {
    return this.c.verifySnapshot({ id });
  }
  getStoreStats(): Promise<StoreStats__Output> {
    return this.unary('store stats', (md, o, cb) => this.c.getStoreStats({}, md, o, cb));
  }
  /** graceMs undefined: the coordinator's default. */
  collectGarbage(graceMs: number | undefined): grpc.ClientReadableStream<GcEvent__Output> {
    return this.c.collectGarbage(graceMs === undefined ? {} : { graceMs, graceGiven: true });
  }
  watchEvents(vne: string): grpc.ClientReadableStream<Event__Output> {
    return this.c.watchEvents({ vne });
  }
}
