import { strict as assert } from 'node:assert';
import { createHash } from 'node:crypto';
import { isVnsnapError } from '../../proto/core/errors';
import { verifiedRead } from '../../agent/restore-verify';

async function* chunks(...parts: string[]): AsyncGenerator<Buffer> {
  for (const p of parts) yield Buffer.from(p);
}

/** What a consumer received before the stream ended, and how it ended. */
async function consume(src: AsyncIterable<Buffer>): Promise<{ got: string; error: string }> {
  let got = '';
  try {
    for await (const b of src) got += b.toString();
  } catch (e) {
    return { got, error: isVnsnapError(e) ? `${e.code}: ${e.message}` : String(e) };
  }
  return { got, error: '' };
}

describe('restore-verify: a memory image checked while it streams', () => {
  const sha = (s: string): string => createHash('sha256').update(s).digest('hex');
  const a = { path: 'snapshots/s/vm.mem', size: 9, sha256: sha('abcdefghi') };

  it('passes a right artefact on whole, chunk by chunk', async () => {
    assert.deepEqual(await consume(verifiedRead(chunks('abc', 'def', 'ghi'), a)), { got: 'abcdefghi', error: '' });
  });

  it('a wrong SHA-256 is ERR_CHECKSUM before the last chunk is handed out (the consumer never has the whole image)', async () => {
    assert.deepEqual(await consume(verifiedRead(chunks('abc', 'def', 'ghX'), a)), { got: 'abcdef', error: `ERR_CHECKSUM: snapshots/s/vm.mem: SHA-256 ${sha('abcdefghX')}, ${a.sha256} expected` });
  });

  it('a short or a long artefact is ERR_CHECKSUM naming the sizes', async () => {
    assert.deepEqual(await consume(verifiedRead(chunks('abc', 'def'), a)), { got: 'abc', error: 'ERR_CHECKSUM: snapshots/s/vm.mem: 6 bytes, 9 expected' });
    assert.deepEqual(await consume(verifiedRead(chunks('abc', 'def', 'ghij'), a)), { got: 'abc', error: 'ERR_CHECKSUM: snapshots/s/vm.mem: more than the 9 bytes expected' });
  });
});
