/**
 * The agent's `dataPath` key (agent/config.ts): the in-kernel data path's fast path is off unless
 * asked for; `true` takes the default VXLAN port, an object names its own; anything else is one
 * ERR_CONFIG line naming the field.
 */
import { strict as assert } from 'node:assert';
import { validateAgentConfig } from '../../agent/config';
import { isVnsnapError } from '../../proto/core/errors';

const base = { id: 'h1', coordinator: '127.0.0.1:7443', tunnel: '127.0.0.1:6081', store: '/var/lib/vnsnap/store' };
const refused = (dataPath: unknown, msg: string): void =>
  assert.throws(() => validateAgentConfig({ ...base, dataPath }), (e: unknown) => isVnsnapError(e, 'ERR_CONFIG') && (e as Error).message === msg);

describe('agent config: dataPath', () => {
  it('is off unless asked for; true takes port 6082; an object names its own port', () => {
    assert.equal(validateAgentConfig({ ...base }).dataPath, undefined);
    assert.equal(validateAgentConfig({ ...base, dataPath: false }).dataPath, undefined);
    assert.deepEqual(validateAgentConfig({ ...base, dataPath: true }).dataPath, { vxlanPort: 6082 });
    assert.deepEqual(validateAgentConfig({ ...base, dataPath: {} }).dataPath, { vxlanPort: 6082 });
    assert.deepEqual(validateAgentConfig({ ...base, dataPath: { vxlanPort: 7082 } }).dataPath, { vxlanPort: 7082 });
  });

  it('refuses anything else with one line naming the field', () => {
    refused('yes', 'dataPath: expected true, false or { "vxlanPort": N }, got "yes"');
    refused({ vxlanPort: 0 }, 'dataPath.vxlanPort: expected 1..65535, got 0');
    refused({ vxlanPort: '6082' }, 'dataPath.vxlanPort: expected 1..65535, got "6082"');
    refused({ port: 1 }, 'dataPath: unknown key "port" (known: vxlanPort)');
  });
});
