/**
 * Preloaded (node --require) into the agent the dom0 programs start, to find where a process
 * that fails with one line ("The value of \"size\" is out of range ... Received NaN") asked for
 * that buffer: Buffer.alloc / allocUnsafe / allocUnsafeSlow with a size that is not a whole
 * number ≥ 0 write the caller's stack to stderr (the daemon's log in the exchange directory),
 * then fail as before. Changes nothing else.
 */
type Alloc = (size: number, ...rest: unknown[]) => Buffer;
const b = Buffer as unknown as Record<'alloc' | 'allocUnsafe' | 'allocUnsafeSlow', Alloc>;
for (const k of ['alloc', 'allocUnsafe', 'allocUnsafeSlow'] as const) {
  const orig = b[k].bind(Buffer);
  b[k] = (size: number, ...rest: unknown[]): Buffer => {
    if (!(Number.isInteger(size) && size >= 0)) process.stderr.write(`dom0-trace: Buffer.${k}(${String(size)}) from\n${new Error('bad size').stack ?? ''}\n`);
    return orig(size, ...rest);
  };
}
