/**
 * The host's available memory, as the kernel estimates it (MemAvailable of /proc/meminfo: free
 * memory plus what it can reclaim without swapping). A restore loading VMs beside their running
 * instances checks it first: for the length of the load the host holds two copies of each VM.
 */
import * as fsp from 'node:fs/promises';
import { VnsnapError } from '../proto/core/errors';

/** MemAvailable in bytes, from `file` (/proc/meminfo). ERR_UNAVAILABLE when it cannot be read. */
export async function availableMemoryBytes(file = '/proc/meminfo'): Promise<number> {
  let text: string;
  try {
    text = await fsp.readFile(file, 'utf8');
  } catch (e) {
    throw new VnsnapError('ERR_UNAVAILABLE', `cannot read ${file}: ${(e as Error).message}`);
  }
  const m = /^MemAvailable:\s+(\d+) kB$/m.exec(text);
  if (!m) throw new VnsnapError('ERR_UNAVAILABLE', `${file} has no MemAvailable line`);
  return Number(m[1]) * 1024;
}
