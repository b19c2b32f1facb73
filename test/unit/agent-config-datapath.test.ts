/**
 * The agent's `dataPath` key (agent/config.ts): absent, the in-kernel data path is on where it can
 * run (not required); `false` turns it off; `true` requires it on the default VXLAN port, an
 * object requires it on its own; anything else is one ERR_CONFIG line naming the field.
 */
import { strict as assert } from 'node:assert';
import { validateAgentConfig } from '../../agent/config';
import { isVnsnapError } from '../../proto/core/errors';

const base = { id: 'h1', coordinator: '127.0.0.1:7443', tunnel: '127.0.0.1:6081', store: '/var/lib/vnsnap/store' };
const refused = (dataPath: unknown, msg: string): void =>
  assert.throws(() => validateAgentConfig({ ...base, dataPath }), (e: unknown) => isVnsnapError(e, 'ERR_CONFIG') && (e as Error).message === msg);

describe('agent config: dataPath', () => {
  it('is on where it can run unless false; true takes port 6082; an object names its own port; both require it', () => {
    assert.deepEqual(validateAgentConfig({ ...base }).dataPath, { vxlanPort: 6082, required: false });
    assert.equal(validateAgentConfig({ ...base, dataPath: false }).dataPath, undefined);
    assert.deepEqual(validateAgentConfig({ ...base, dataPath: true }).dataPath, { vxlanPort: 6082, required: true });
    assert.deepEqual(validateAgentConfig({ ...base, dataPath: {} }).dataPath, { vxlanPort: 6082, required: true });
    assert.deepEqual(validateAgentConfig({ ...base, dataPath: { vxlanPort: 7082 } }).dataPath, { vxlanPort: 7082, required: true });
  });

  it('refuses anything else with one line naming the field', () => {
    refused('yes', 'dataPath: expected true, false or { "vxlanPort": N }, got "yes"');
    refused({ vxlanPort: 0 }, 'dataPath.vxlanPort: expected 1..65535, got 0');
    refused({ vxlanPort: '6082' }, 'dataPath.vxlanPort: expected 1..65535, got "6082"');
    refused({ port: 1 }, 'dataPath: unknown key "port" (known: vxlanPort)');
  });
});
