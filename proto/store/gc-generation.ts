/**
 * The sweep generation of a content-addressed store: one small object, locks/gc-generation,
 * whose body is a random token. It lets a writer session know with one get() whether any pack
 * or table may have been deleted since its pack map last listed the tables (pack-map.ts,
 * refreshForSession), instead of listing packtabs/ at every session start.
 *
 * Guarantees:
 *   - Garbage collection puts a new token in its sweep, after the last live writer lock is gone
 *     and before its first delete (cas-gc.ts): so a token read by a writer after its session lock
 *     was put (cas-locks.ts) differs from every token read before any delete that happened since.
 *   - A token is 16 random bytes: two puts never leave the same body, so a sweep is seen even
 *     when the backend's object time does not move (S3 keeps whole seconds).
 *   - An absent object reads as null ("unknown"): a store only older versions collected.
 */
import { randomBytes } from 'node:crypto';
import { LOCK_PREFIX } from './cas-locks';
import { getIfPresent, type ObjectBackend } from './object-backend';

export const GENERATION_KEY = `${LOCK_PREFIX}gc-generation`;

/** The token now, or null when the store has none. */
export async function readGeneration(backend: ObjectBackend): Promise<string | null> {
  const data = await getIfPresent(backend, GENERATION_KEY);
  return data === null ? null : data.toString('utf8');
}

/** Put a new token; returns it. */
export async function newGeneration(backend: ObjectBackend): Promise<string> {
  const token = randomBytes(16).toString('hex');
  await backend.put(GENERATION_KEY, Buffer.from(token, 'utf8'));
  return token;
}
