/**
 * The addon's interface version: the built addon speaks this TypeScript's version, and an addon
 * of another one (built from other sources: `npm run build` after a pull, without `npm install`)
 * is refused with one line naming the file and the way out.
 */
import { strict as assert } from 'node:assert';
import { isVnsnapError } from '../../proto/core/errors';
import { checkInterfaceVersion, NATIVE_INTERFACE_VERSION, nativeIo } from '../../switch/native-io';

describe('native addon interface version', () => {
  it('the built addon exports the version this TypeScript needs', () => {
    assert.equal((nativeIo() as unknown as { interfaceVersion: number }).interfaceVersion, NATIVE_INTERFACE_VERSION);
  });

  it('an addon without a version (older) or with another one is refused with one line', () => {
    assert.doesNotThrow(() => checkInterfaceVersion('/x/vnsnap_io.node', NATIVE_INTERFACE_VERSION));
    assert.throws(
      () => checkInterfaceVersion('/x/vnsnap_io.node', undefined),
      (e) => isVnsnapError(e, 'ERR_NATIVE_IO') && e.message === `the native I/O addon /x/vnsnap_io.node has an interface older than version 2, this build needs ${NATIVE_INTERFACE_VERSION}: it was built from other sources; rebuild it with \`npm install\` (npm run build compiles only the TypeScript)`,
    );
    assert.throws(
      () => checkInterfaceVersion('/x/vnsnap_io.node', NATIVE_INTERFACE_VERSION + 1),
      (e) => isVnsnapError(e, 'ERR_NATIVE_IO') && e.message === `the native I/O addon /x/vnsnap_io.node has interface ${NATIVE_INTERFACE_VERSION + 1}, this build needs ${NATIVE_INTERFACE_VERSION}: it was built from other sources; rebuild it with \`npm install\` (npm run build compiles only the TypeScript)`,
    );
  });
});
