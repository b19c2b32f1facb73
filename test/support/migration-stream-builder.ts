/**
 * Synthetic QEMU 7.2 migration streams for the page-order tests, encoded the way QEMU writes them
 * (agent/drivers/qemu/migration-stream.ts): header, configuration, the RAM section's setup with
 * its block list, RAM PART sections of page records (CONTINUE exactly when the block is that of
 * the previous record, across sections), then opaque device state and EOF. A test states the
 * sections a stream has; the expected output of a rewrite is another stream built the same way.
 */
import { eosRecord, pageHeader, putU64, QEVM_MAGIC, RAM_FLAG, SEC, sectionMark } from '../../agent/drivers/qemu/migration-stream';

export const PAGE = 4096;
export const RAM_ID = 2;

/** A page record: `fill` makes it a ZERO record, else its data is pageData(block, page, version). */
export interface PageRec {
  block: string;
  page: number;
  fill?: number;
  version?: number;
}

/** A section's content: page records, or raw bytes written as they are. */
export type Rec = PageRec | Buffer;

export interface StreamSpec {
  blocks: [string, number][];
  sections: Rec[][];
  footers?: boolean;
  /** Bytes between the configuration and the RAM section (another section, say). */
  beforeRam?: Buffer;
  /** Left out: the device state and EOF (a stream cut short). */
  noTail?: boolean;
}

/** The content of a page: its block, number and version spelled out, then a fill. */
export function pageData(block: string, page: number, version = 0): Buffer {
  const b = Buffer.alloc(PAGE, (page * 31 + version * 7 + block.length) & 0xff);
  b.write(`${block}:${page}:${version}`, 0, 'latin1');
  return b;
}

function u32(v: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(v);
  return b;
}

function str8(s: string): Buffer {
  return Buffer.concat([Buffer.from([s.length]), Buffer.from(s, 'latin1')]);
}

function u64b(v: number): Buffer {
  const b = Buffer.allocUnsafe(8);
  putU64(b, 0, v);
  return b;
}

/** A FULL section with opaque content, as device state looks to the rewriter. */
export function fullSection(id: number, name: string, content: Buffer, footers = true): Buffer {
  return Buffer.concat([Buffer.from([SEC.FULL]), u32(id), str8(name), u32(0), u32(1), content, footers ? sectionMark(SEC.FOOTER, id) : Buffer.alloc(0)]);
}

export function buildStream(s: StreamSpec): Buffer {
  const footers = s.footers ?? true;
  const footer = (): Buffer => (footers ? sectionMark(SEC.FOOTER, RAM_ID) : Buffer.alloc(0));
  const parts: Buffer[] = [u32(QEVM_MAGIC), u32(3), Buffer.from([SEC.CONFIGURATION]), u32(13), Buffer.from('pc-i440fx-7.2', 'latin1')];
  if (s.beforeRam) parts.push(s.beforeRam);
  const total = s.blocks.reduce((n, [, len]) => n + len, 0);
  parts.push(Buffer.from([SEC.START]), u32(RAM_ID), str8('ram'), u32(0), u32(4), u64b(total + RAM_FLAG.MEM_SIZE));
  for (const [name, len] of s.blocks) parts.push(str8(name), u64b(len));
  parts.push(eosRecord(), footer());
  let last: string | undefined;
  for (const sec of s.sections) {
    parts.push(sectionMark(SEC.PART, RAM_ID));
    for (const r of sec) {
      if (Buffer.isBuffer(r)) {
        parts.push(r);
        continue;
      }
      const zero = r.fill !== undefined;
      parts.push(pageHeader(r.page * PAGE, zero ? RAM_FLAG.ZERO : RAM_FLAG.PAGE, r.block === last ? undefined : r.block));
      parts.push(zero ? Buffer.from([r.fill as number]) : pageData(r.block, r.page, r.version));
      last = r.block;
    }
    parts.push(eosRecord(), footer());
  }
  if (!s.noTail) parts.push(fullSection(3, 'timer', Buffer.from('opaque device state'), footers), Buffer.from([SEC.EOF]));
  return Buffer.concat(parts);
}

/** Pages `from`..`to`-1 of `block` (ZERO records where `zero(page)`). */
export function pages(block: string, from: number, to: number, zero: (p: number) => boolean = () => false): PageRec[] {
  const out: PageRec[] = [];
  for (let p = from; p < to; p++) out.push(zero(p) ? { block, page: p, fill: 0 } : { block, page: p });
  return out;
}
