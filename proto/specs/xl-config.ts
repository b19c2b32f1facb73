/**
 * A strict reader and writer of xl's domain configuration syntax (xl.cfg(5)), so the Xen spec
 * policy (xen-config.ts) judges the configuration xl will read, not a guess at it, and the Xen
 * driver writes back only what was judged.
 *
 * Grammar accepted (a subset of libxlu's, refusing what it cannot be sure of):
 *   file      := { statement } ;  statements end at a newline or ';'
 *   statement := KEY '=' value
 *   KEY       := [A-Za-z_][A-Za-z0-9_]*
 *   value     := atom | '[' [ atom { ',' atom } [ ',' ] ] ']'    (a list may span lines)
 *   atom      := "string" | 'string' | NUMBER
 *   NUMBER    := decimal digits (optionally with one '.' part) | 0x hex digits
 *   comments  := '#' to the end of the line, anywhere a newline may stand
 * Strings hold no backslash, no newline and no control character: xl would interpret escapes,
 * and the writer must re-emit exactly what was read. `KEY += value` (xl's list append) and a
 * key given twice (xl keeps the last) are refused, so every key has one unambiguous value.
 * Errors are ERR_INVALID_ARGUMENT naming the line.
 *
 * Guarantees: parseXlConfig(formatXlConfig(c)) deep-equals c for every c it returned; the
 * writer quotes each string with a quote character the string does not contain.
 */
import { VnsnapError } from '../core/errors';

export type XlAtom = { kind: 'string'; value: string } | { kind: 'number'; text: string };
export type XlValue = XlAtom | { kind: 'list'; items: XlAtom[] };

export interface XlEntry {
  key: string;
  value: XlValue;
  /** 1-based line of the key (for messages). */
  line: number;
}

const KEY_RE = /^[A-Za-z_][A-Za-z0-9_]*/;
const NUMBER_RE = /^(0x[0-9a-fA-F]+|[0-9]+(\.[0-9]+)?)/;

function invalid(line: number, msg: string): VnsnapError {
  return new VnsnapError('ERR_INVALID_ARGUMENT', `xen.config line ${line}: ${msg}`);
}

/** A cursor over the text that skips blanks and comments and counts lines. */
class Lexer {
  private i = 0;
  line = 1;

  constructor(private readonly s: string) {}

  /** Skip spaces and tabs (and, when `newlines`, newlines and comments too). */
  skip(newlines: boolean): void {
    for (;;) {
      const c = this.s[this.i];
      if (c === ' ' || c === '\t' || c === '\r') this.i++;
      else if (c === '#') {
        while (this.i < this.s.length && this.s[this.i] !== '\n') this.i++;
      } else if (newlines && c === '\n') {
        this.i++;
        this.line++;
      } else return;
    }
  }

  peek(): string | undefined {
    return this.s[this.i];
  }

  take(): string | undefined {
    const c = this.s[this.i++];
    if (c === '\n') this.line++;
    return c;
  }

  match(re: RegExp): string | undefined {
    const m = re.exec(this.s.slice(this.i, this.i + 256));
    if (!m) return undefined;
    this.i += m[0].length;
    return m[0];
  }

  get done(): boolean {
    return this.i >= this.s.length;
  }

  near(): string {
    return JSON.stringify(this.s.slice(this.i, this.i + 16));
  }

  string(quote: string): string {
    const start = this.line;
    let out = '';
    for (;;) {
      const c = this.take();
      if (c === undefined || c === '\n') throw invalid(start, 'a string is not closed on its line');
      if (c === quote) return out;
      if (c === '\\') throw invalid(start, 'backslash escapes in strings are not accepted');
      if (c < ' ' || c === '\x7f') throw invalid(start, 'control characters in strings are not accepted');
      out += c;
    }
  }
}

function atom(lx: Lexer): XlAtom {
  const c = lx.peek();
  if (c === '"' || c === "'") {
    lx.take();
    return { kind: 'string', value: lx.string(c) };
  }
  const n = lx.match(NUMBER_RE);
  if (n !== undefined) return { kind: 'number', text: n };
  throw invalid(lx.line, `expected a string, a number or a list, found ${lx.near()}`);
}

function value(lx: Lexer): XlValue {
  if (lx.peek() !== '[') return atom(lx);
  lx.take();
  const items: XlAtom[] = [];
  for (;;) {
    lx.skip(true);
    if (lx.peek() === ']') break;
    items.push(atom(lx));
    lx.skip(true);
    const c = lx.take();
    if (c === ']') return { kind: 'list', items };
    if (c !== ',') throw invalid(lx.line, `expected ',' or ']' in a list, found ${JSON.stringify(c ?? 'the end')}`);
  }
  lx.take();
  return { kind: 'list', items };
}

/** Parse an xl configuration; ERR_INVALID_ARGUMENT naming the line on anything outside the grammar. */
export function parseXlConfig(text: string): XlEntry[] {
  const lx = new Lexer(text);
  const entries: XlEntry[] = [];
  const seen = new Map<string, number>();
  for (;;) {
    lx.skip(true);
    while (lx.peek() === ';') {
      lx.take();
      lx.skip(true);
    }
    if (lx.done) return entries;
    const line = lx.line;
    const key = lx.match(KEY_RE);
    if (key === undefined) throw invalid(line, `expected a key, found ${lx.near()}`);
    lx.skip(false);
    if (lx.peek() === '+') throw invalid(line, `"${key} +=" (list append) is not accepted: give the whole value once`);
    if (lx.take() !== '=') throw invalid(line, `expected '=' after "${key}"`);
    lx.skip(false);
    const v = value(lx);
    lx.skip(false);
    const end = lx.peek();
    if (end !== undefined && end !== '\n' && end !== ';') throw invalid(lx.line, `unexpected ${lx.near()} after the value of "${key}"`);
    const first = seen.get(key);
    if (first !== undefined) throw invalid(line, `"${key}" is set twice (also on line ${first})`);
    seen.set(key, line);
    entries.push({ key, value: v, line });
  }
}

function quote(s: string): string {
  if (s.includes('"') && s.includes("'")) throw new VnsnapError('ERR_INVALID_ARGUMENT', `xen.config: ${JSON.stringify(s.slice(0, 64))} holds both quote characters and cannot be written as an xl string`);
  return s.includes('"') ? `'${s}'` : `"${s}"`;
}

function formatAtom(a: XlAtom): string {
  return a.kind === 'number' ? a.text : quote(a.value);
}

/** The configuration text of `entries`, one `key = value` line each. */
export function formatXlConfig(entries: readonly Pick<XlEntry, 'key' | 'value'>[]): string {
  return entries.map((e) => `${e.key} = ${e.value.kind === 'list' ? `[ ${e.value.items.map(formatAtom).join(', ')} ]` : formatAtom(e.value)}\n`).join('');
}

/** A string atom. */
export function xlString(value: string): XlAtom {
  return { kind: 'string', value };
}
