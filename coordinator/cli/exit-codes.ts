/**
 * Exit codes of the `vnsnap` CLI and the one error type commands throw.
 *
 *   0 ok · 1 the operation failed (e.g. a snapshot aborted, a precondition the coordinator
 *   refused) · 2 bad usage or input · 3 not found · 4 cannot reach the coordinator ·
 *   5 denied: our role may not do this, or a certificate (ours or the coordinator's) is refused ·
 *   6 outcome unknown: the coordinator was reached, then the connection was lost in the middle of
 *   a snapshot or restore (it may have finished, aborted, or still run) · 7 snapshot verify found
 *   a missing or corrupt artefact or manifest · 130 interrupted (Ctrl-C).
 *
 * Every failure ends as one CliError: a message a person can act on (never a stack trace), the
 * exit code, and the vnsnap error code when the coordinator sent one (for --json).
 */
import type { ErrorCode } from '../../proto/core/errors';

export const EXIT = {
  OK: 0,
  FAILED: 1,
  USAGE: 2,
  NOT_FOUND: 3,
  UNREACHABLE: 4,
  DENIED: 5,
  OUTCOME_UNKNOWN: 6,
  VERIFY_FAILED: 7,
  INTERRUPTED: 130,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

export class CliError extends Error {
  readonly exitCode: ExitCode;
  /** The vnsnap error code behind it, when there is one. */
  readonly code: ErrorCode | undefined;

  constructor(exitCode: ExitCode, message: string, code?: ErrorCode) {
    super(message);
    this.name = 'CliError';
    this.exitCode = exitCode;
    this.code = code;
  }
}

/** The exit code for an error the coordinator reported. */
export function exitCodeForErrorCode(code: ErrorCode): ExitCode {
  switch (code) {
    case 'ERR_INVALID_ARGUMENT':
    case 'ERR_CONFIG':
      return EXIT.USAGE;
    case 'ERR_NOT_FOUND':
    case 'ERR_VNE_UNKNOWN':
    case 'ERR_PORT_UNKNOWN':
    case 'ERR_PEER_UNKNOWN':
      return EXIT.NOT_FOUND;
    case 'ERR_PERMISSION_DENIED':
    case 'ERR_UNAUTHENTICATED':
      return EXIT.DENIED;
    default:
      return EXIT.FAILED;
  }
}
