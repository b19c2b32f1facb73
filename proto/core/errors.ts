/**
 * Typed errors with stable codes.
 *
 * Every failure that can reach an operator or another component is a VnsnapError with a
 * stable string `code` (never reworded once released) and an optional `cause`. The control
 * plane maps codes onto gRPC status codes through one table (kept beside the gRPC service);
 * everything else matches on `code`, never on message text.
 */

export type ErrorCode =
  | 'ERR_INVALID_ARGUMENT'
  | 'ERR_CONFIG'
  | 'ERR_NOT_FOUND'
  | 'ERR_ALREADY_EXISTS'
  | 'ERR_PORT_EXISTS'
  | 'ERR_PORT_UNKNOWN'
  | 'ERR_VNE_UNKNOWN'
  | 'ERR_PEER_UNKNOWN'
  | 'ERR_EPOCH_ORDER'
  | 'ERR_CUT_IN_PROGRESS'
  | 'ERR_SNAPSHOT_ABORTED'
  | 'ERR_NATIVE_IO'
  | 'ERR_TIMEOUT'
  | 'ERR_STATE'
  | 'ERR_FAILED_PRECONDITION'
  | 'ERR_UNAVAILABLE'
  | 'ERR_AGENT_DISCONNECTED'
  | 'ERR_DATA_LOSS'
  | 'ERR_CHECKSUM'
  | 'ERR_UNSUPPORTED_VERSION'
  | 'ERR_STORE_FULL'
  | 'ERR_DRIVER'
  | 'ERR_CANCELLED'
  | 'ERR_PERMISSION_DENIED'
  | 'ERR_UNAUTHENTICATED'
  | 'ERR_INTERNAL';

/** Every code, for tables that must cover them all (checked by a test). */
export const ERROR_CODES: readonly ErrorCode[] = [
  'ERR_INVALID_ARGUMENT',
  'ERR_CONFIG',
  'ERR_NOT_FOUND',
  'ERR_ALREADY_EXISTS',
  'ERR_PORT_EXISTS',
  'ERR_PORT_UNKNOWN',
  'ERR_VNE_UNKNOWN',
  'ERR_PEER_UNKNOWN',
  'ERR_EPOCH_ORDER',
  'ERR_CUT_IN_PROGRESS',
  'ERR_SNAPSHOT_ABORTED',
  'ERR_NATIVE_IO',
  'ERR_TIMEOUT',
  'ERR_STATE',
  'ERR_FAILED_PRECONDITION',
  'ERR_UNAVAILABLE',
  'ERR_AGENT_DISCONNECTED',
  'ERR_DATA_LOSS',
  'ERR_CHECKSUM',
  'ERR_UNSUPPORTED_VERSION',
  'ERR_STORE_FULL',
  'ERR_DRIVER',
  'ERR_CANCELLED',
  'ERR_PERMISSION_DENIED',
  'ERR_UNAUTHENTICATED',
  'ERR_INTERNAL',
];

export function isErrorCode(s: string): s is ErrorCode {
  return (ERROR_CODES as readonly string[]).includes(s);
}

export class VnsnapError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'VnsnapError';
  }
}

export function isVnsnapError(e: unknown, code?: ErrorCode): e is VnsnapError {
  return e instanceof VnsnapError && (code === undefined || e.code === code);
}

/** A message fit for a person: the code and message, and the cause's message when there is one. */
export function describeError(e: unknown): string {
  if (e instanceof VnsnapError) {
    const cause = e.cause instanceof Error ? `: ${e.cause.message}` : '';
    return `${e.message}${cause} [${e.code}]`;
  }
  if (e instanceof Error) return e.message;
  return String(e);
}
