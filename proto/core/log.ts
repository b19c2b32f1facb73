/**
 * Structured JSON logs (pino) for every daemon, one factory so fields are the same everywhere:
 * `component`, `host`, and whatever the call adds. Loggers are passed in, never global.
 */
import pino, { type Logger } from 'pino';

export type { Logger };

export function createLogger(component: string, opts: { level?: string; host?: string; destination?: number } = {}): Logger {
  return pino({ level: opts.level ?? 'info', base: { component, ...(opts.host ? { host: opts.host } : {}) } }, pino.destination(opts.destination ?? 2));
}

/** A logger that drops everything (tests). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
