/**
 * Where the CLI writes: stdout for results, stderr for messages. Passed in (never the global
 * process streams inside commands) so tests can capture output and pick TTY or not.
 */
export interface CliIo {
  /** Results: tables, summaries, JSON. */
  out(text: string): void;
  /** Messages for a person: errors, warnings. */
  err(text: string): void;
  /** Is stdout a terminal (progress bars) or a pipe/file (one line per phase change)? */
  readonly isTTY: boolean;
  /** The stream progress bars draw on (only used when isTTY). */
  readonly barStream: NodeJS.WritableStream;
  /** Current time in ms (wall clock; injectable for tests). */
  now(): number;
  /** Call `handler` on Ctrl-C (SIGINT) until the returned function is called. */
  onInterrupt(handler: () => void): () => void;
}

export function processIo(): CliIo {
  // `vnsnap snapshot list | head`: a closed pipe ends us quietly, not with a stack trace.
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(process.exitCode ?? 0);
    throw e;
  });
  return {
    out: (t) => process.stdout.write(t),
    err: (t) => process.stderr.write(t),
    isTTY: process.stdout.isTTY === true,
    barStream: process.stdout,
    now: () => Date.now(),
    onInterrupt: (handler) => {
      process.on('SIGINT', handler);
      return () => process.off('SIGINT', handler);
    },
  };
}
