/**
 * The sim guest's image (what a sim snapshot writes into the store), a record stream:
 *   "VNSIMEM1" u32 pageSize u32 pageCount, then records
 *     0x01 u32 page  <pageSize bytes>     a page (later records of a page override earlier)
 *     0x02 u32 len   <JSON SimGuestState>  the guest state at the pause instant
 *     0x03                                 end
 * parseSimImage refuses anything malformed with ERR_DATA_LOSS.
 */
import { VnsnapError } from '../../proto/core/errors';
import type { SimGuestState } from './state';

export const PAGE = 4096;
const IMAGE_MAGIC = Buffer.from('VNSIMEM1');
const R_PAGE = 1;
const R_STATE = 2;
const R_END = 3;

export function pageRecords(memory: Buffer, pages: readonly number[]): Buffer {
  const out = Buffer.alloc(pages.length * (5 + PAGE));
  let o = 0;
  for (const p of pages) {
    out[o] = R_PAGE;
    out.writeUInt32BE(p, o + 1);
    memory.copy(out, o + 5, p * PAGE, (p + 1) * PAGE);
    o += 5 + PAGE;
  }
  return out;
}

export function imageHeader(pageCount: number): Buffer {
  const h = Buffer.alloc(16);
  IMAGE_MAGIC.copy(h, 0);
  h.writeUInt32BE(PAGE, 8);
  h.writeUInt32BE(pageCount, 12);
  return h;
}

export function stateRecord(s: SimGuestState): Buffer {
  const json = Buffer.from(JSON.stringify(s));
  const r = Buffer.alloc(5 + json.length + 1);
  r[0] = R_STATE;
  r.writeUInt32BE(json.length, 1);
  json.copy(r, 5);
  r[5 + json.length] = R_END;
  return r;
}

/** Parse an image: the memory and the guest state. Throws ERR_DATA_LOSS on anything malformed. */
export function parseSimImage(buf: Buffer, source: string, expectPages: number): { memory: Buffer; state: SimGuestState } {
  const bad = (why: string): VnsnapError => new VnsnapError('ERR_DATA_LOSS', `${source}: not a usable sim memory image (${why})`);
  if (buf.length < 16 || !buf.subarray(0, 8).equals(IMAGE_MAGIC)) throw bad('bad magic');
  if (buf.readUInt32BE(8) !== PAGE) throw bad('page size');
  const pages = buf.readUInt32BE(12);
  if (pages !== expectPages) throw bad(`${pages} pages, the VM has ${expectPages}`);
  const memory = Buffer.alloc(pages * PAGE);
  let o = 16;
  let state: SimGuestState | undefined;
  for (;;) {
    if (o >= buf.length) throw bad('truncated');
    const t = buf[o] as number;
    if (t === R_PAGE) {
      if (o + 5 + PAGE > buf.length) throw bad('truncated page');
      const p = buf.readUInt32BE(o + 1);
      if (p >= pages) throw bad(`page ${p} out of range`);
      buf.copy(memory, p * PAGE, o + 5, o + 5 + PAGE);
      o += 5 + PAGE;
    } else if (t === R_STATE) {
      if (o + 5 > buf.length) throw bad('truncated state');
      const n = buf.readUInt32BE(o + 1);
      if (o + 5 + n > buf.length) throw bad('truncated state');
      try {
        state = JSON.parse(buf.toString('utf8', o + 5, o + 5 + n)) as SimGuestState;
      } catch {
        throw bad('state does not parse');
      }
      o += 5 + n;
    } else if (t === R_END) {
      if (state === undefined) throw bad('no state record');
      return { memory, state };
    } else throw bad(`unknown record ${t}`);
  }
}
