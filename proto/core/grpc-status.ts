/**
 * The one table that maps vnsnap error codes onto gRPC status codes, both ways.
 *
 * Servers throw VnsnapErrors; `toServiceError` turns any thrown value into a gRPC error whose
 * message a person can act on and whose metadata carries the vnsnap code
 * (`vnsnap-error-code`), so a vnsnap client gets the typed error back (`fromServiceError`)
 * while any other client still sees a meaningful status code and message.
 */
import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { ErrorCode, isErrorCode, VnsnapError } from './errors';

export const GRPC_STATUS: Readonly<Record<ErrorCode, status>> = {
  ERR_INVALID_ARGUMENT: status.INVALID_ARGUMENT,
  ERR_CONFIG: status.INVALID_ARGUMENT,
  ERR_NOT_FOUND: status.NOT_FOUND,
  ERR_ALREADY_EXISTS: status.ALREADY_EXISTS,
  ERR_PORT_EXISTS: status.ALREADY_EXISTS,
  ERR_PORT_UNKNOWN: status.NOT_FOUND,
  ERR_VNE_UNKNOWN: status.NOT_FOUND,
  ERR_PEER_UNKNOWN: status.NOT_FOUND,
  ERR_EPOCH_ORDER: status.FAILED_PRECONDITION,
  ERR_CUT_IN_PROGRESS: status.FAILED_PRECONDITION,
  ERR_SNAPSHOT_ABORTED: status.ABORTED,
  ERR_NATIVE_IO: status.INTERNAL,
  ERR_TIMEOUT: status.DEADLINE_EXCEEDED,
  ERR_STATE: status.FAILED_PRECONDITION,
  ERR_FAILED_PRECONDITION: status.FAILED_PRECONDITION,
  ERR_UNAVAILABLE: status.UNAVAILABLE,
  ERR_AGENT_DISCONNECTED: status.UNAVAILABLE,
  ERR_DATA_LOSS: status.DATA_LOSS,
  ERR_CHECKSUM: status.DATA_LOSS,
  ERR_UNSUPPORTED_VERSION: status.FAILED_PRECONDITION,
  ERR_STORE_FULL: status.RESOURCE_EXHAUSTED,
  ERR_DRIVER: status.INTERNAL,
  ERR_CANCELLED: status.CANCELLED,
  ERR_PERMISSION_DENIED: status.PERMISSION_DENIED,
  ERR_UNAUTHENTICATED: status.UNAUTHENTICATED,
  ERR_INTERNAL: status.INTERNAL,
};

export const ERROR_CODE_METADATA_KEY = 'vnsnap-error-code';

/** Any thrown value → a gRPC error (unknown errors become INTERNAL with their message). */
export function toServiceError(e: unknown): Partial<ServiceError> & { code: status; details: string } {
  const metadata = new Metadata();
  if (e instanceof VnsnapError) {
    metadata.set(ERROR_CODE_METADATA_KEY, e.code);
    const cause = e.cause instanceof Error ? `: ${e.cause.message}` : '';
    return { code: GRPC_STATUS[e.code], details: `${e.message}${cause}`, metadata };
  }
  metadata.set(ERROR_CODE_METADATA_KEY, 'ERR_INTERNAL');
  return { code: status.INTERNAL, details: e instanceof Error ? e.message : String(e), metadata };
}

const FALLBACK: Partial<Record<status, ErrorCode>> = {
  [status.INVALID_ARGUMENT]: 'ERR_INVALID_ARGUMENT',
  [status.NOT_FOUND]: 'ERR_NOT_FOUND',
  [status.ALREADY_EXISTS]: 'ERR_ALREADY_EXISTS',
  [status.FAILED_PRECONDITION]: 'ERR_FAILED_PRECONDITION',
  [status.ABORTED]: 'ERR_SNAPSHOT_ABORTED',
  [status.DEADLINE_EXCEEDED]: 'ERR_TIMEOUT',
  [status.UNAVAILABLE]: 'ERR_UNAVAILABLE',
  [status.DATA_LOSS]: 'ERR_DATA_LOSS',
  [status.RESOURCE_EXHAUSTED]: 'ERR_STORE_FULL',
  [status.CANCELLED]: 'ERR_CANCELLED',
  [status.PERMISSION_DENIED]: 'ERR_PERMISSION_DENIED',
  [status.UNAUTHENTICATED]: 'ERR_UNAUTHENTICATED',
};

/** A gRPC error received by a client → the VnsnapError the server threw (or the closest one). */
export function fromServiceError(e: ServiceError): VnsnapError {
  const tagged = e.metadata?.get(ERROR_CODE_METADATA_KEY)[0];
  const code: ErrorCode = typeof tagged === 'string' && isErrorCode(tagged) ? tagged : (FALLBACK[e.code] ?? 'ERR_INTERNAL');
  const msg = e.code === status.UNAVAILABLE && !tagged ? `cannot reach the coordinator (${e.details || 'unavailable'})` : e.details || e.message;
  return new VnsnapError(code, msg, { cause: e });
}
