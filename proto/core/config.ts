/**
 * The configuration-file helpers every vnsnap program uses: a JSON file holding one object,
 * keys checked against the known ones, and every mistake one line naming the file or field
 * (VnsnapError ERR_CONFIG), which a main prints before exiting, never a stack trace.
 *
 * The messages, for a file F:
 *   cannot read config file F: <reason>       the file is missing or unreadable
 *   F is not valid JSON: <parser message>     its text does not parse
 *   F must be a JSON object                   it parses to something else
 *   [where: ]unknown key "k" (known: a, b)    a key no program reads (a typo); a program whose
 *                                             messages say "field" passes that noun
 */
import * as fs from 'node:fs';
import { VnsnapError } from './errors';

/** Throw the one-line configuration error. */
export function configError(message: string): never {
  throw new VnsnapError('ERR_CONFIG', message);
}

/** Parse `text` (from `source`, named in messages) as a JSON object. */
export function parseJsonObject(text: string, source: string): Record<string, unknown> {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    configError(`${source} is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) configError(`${source} must be a JSON object`);
  return raw as Record<string, unknown>;
}

/** Read and parse a configuration file holding one JSON object. */
export function readJsonObjectFile(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    configError(`cannot read config file ${file}: ${(e as Error).message}`);
  }
  return parseJsonObject(text, file);
}

/**
 * Refuse a key outside `known`; `where` (a file, a section) prefixes the message, `noun` names
 * what a key is called in it (default "key").
 */
export function rejectUnknownKeys(o: Record<string, unknown>, known: readonly string[], where?: string, opts: { noun?: string } = {}): void {
  for (const k of Object.keys(o)) {
    if (!known.includes(k)) configError(`${where ? `${where}: ` : ''}unknown ${opts.noun ?? 'key'} "${k}" (known: ${known.join(', ')})`);
  }
}
