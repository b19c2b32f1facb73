/**
 * The shape every image path of a driver spec must have before anyone looks at the filesystem:
 * absolute, already normalised (no '.' or '..' component, no '//', no trailing '/'), no control
 * characters. The coordinator refuses other shapes at definition; the agent checks the shape
 * again and then where the path really leads (agent/drivers/image-root.ts), which alone decides.
 */
import * as path from 'node:path';
import { VnsnapError } from '../core/errors';

/** Refuse a path that is not absolute and normalised (ERR_INVALID_ARGUMENT naming `field`). */
export function checkImagePath(field: string, value: string): void {
  const shown = JSON.stringify(value.length > 64 ? `${value.slice(0, 64)}...` : value);
  if (/[\x00-\x1f\x7f]/.test(value)) throw new VnsnapError('ERR_INVALID_ARGUMENT', `${field} ${shown} contains control characters`);
  if (!path.posix.isAbsolute(value)) throw new VnsnapError('ERR_INVALID_ARGUMENT', `${field} ${shown} is not an absolute path`);
  if (path.posix.normalize(value) !== value || value.endsWith('/')) throw new VnsnapError('ERR_INVALID_ARGUMENT', `${field} ${shown} is not a normalised path (no '.', '..', '//' or trailing '/')`);
}
