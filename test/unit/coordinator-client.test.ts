import { strict as assert } from 'node:assert';
import type * as grpc from '@grpc/grpc-js';
import { coordinatorClientClass, coordinatorServiceDefinition } from '../../proto/core/coordinator-client';
import { loadCoordinator } from '../../proto/core/grpc';
import { cannedSnapshot, snapshotScript, T0_MS, T0_US } from '../interop/fake-coordinator';

type Method = grpc.MethodDefinition<unknown, unknown>;

/** proto-loader's definition of the service (grpc.ts loadCoordinator(), the reference). */
function protoLoaders(): Record<string, Method> {
  return loadCoordinator().vnsnap.v1.CoordinatorService.service as unknown as Record<string, Method>;
}

const VNE = {
  name: 'blue',
  vni: 100,
  vms: [
    { name: 'vm1', host: 'h1', macs: ['52:54:00:00:00:01'], driver: { qemu: { memoryMib: 256, extra: { memory: 'tracked' } } } },
    { name: 'vm2', host: 'h2', macs: ['52:54:00:00:00:02'], driver: { sim: {} } },
  ],
};

describe("the CLI's CoordinatorService client from the JSON descriptor (proto/core/coordinator-client.ts)", () => {
  it("has proto-loader's methods: the same names, paths, stream flags and original names", () => {
    const ref = protoLoaders();
    const ours = coordinatorServiceDefinition() as Record<string, Method>;
    assert.deepEqual(Object.keys(ours).sort(), Object.keys(ref).sort());
    for (const [name, r] of Object.entries(ref)) {
      const o = ours[name] as Method;
      assert.deepEqual([o.path, o.requestStream, o.responseStream, o.originalName], [r.path, r.requestStream, r.responseStream, r.originalName], name);
    }
  });

  it("serializes and deserializes every method's messages as proto-loader does (empty and filled messages, oneofs, maps, 64-bit numbers, enums)", () => {
    const ref = protoLoaders();
    const ours = coordinatorServiceDefinition() as Record<string, Method>;
    const filled: Record<string, { req?: object; res?: object }> = {
      DefineVne: { req: { vne: VNE }, res: VNE },
      GetSnapshot: { req: { id: 'blue-3-abcdef' }, res: cannedSnapshot('blue-3-abcdef', 'blue', 3, T0_US) },
      CreateSnapshot: { req: { vne: 'blue', mode: 'SNAPSHOT_MODE_BACKGROUND', description: 'd', precopyDeadlineMs: 5000 } },
    };
    const events = snapshotScript('blue-3-abcdef', VNE as never, cannedSnapshot('blue-3-abcdef', 'blue', 3, T0_US), T0_MS);
    assert.ok(events.length > 3);
    for (const [name, r] of Object.entries(ref)) {
      const o = ours[name] as Method;
      const reqs = [{}, ...(filled[name]?.req ? [filled[name].req] : [])];
      const ress = [{}, ...(filled[name]?.res ? [filled[name].res] : []), ...(name === 'CreateSnapshot' ? events : [])];
      for (const m of reqs) {
        const bytes = r.requestSerialize(m);
        assert.deepEqual(o.requestSerialize(m), bytes, `${name} request`);
        assert.deepEqual(o.requestDeserialize(bytes), r.requestDeserialize(bytes), `${name} request decoded`);
      }
      for (const m of ress) {
        const bytes = r.responseSerialize(m);
        assert.deepEqual(o.responseSerialize(m), bytes, `${name} response`);
        assert.deepEqual(o.responseDeserialize(bytes), r.responseDeserialize(bytes), `${name} response decoded`);
      }
    }
    const snap = (ours.GetSnapshot as Method).responseDeserialize((ref.GetSnapshot as Method).responseSerialize(filled.GetSnapshot?.res)) as { id: string; epoch: number; vms: unknown[] };
    assert.equal(snap.id, 'blue-3-abcdef');
    assert.equal(snap.epoch, 3);
    assert.ok(snap.vms.length > 0, 'a filled message decodes filled (the comparison above is not of two empty objects)');
  });

  it("refuses an array as proto-loader does", () => {
    const r = protoLoaders().ListVnes as Method;
    const o = coordinatorServiceDefinition().ListVnes as Method;
    assert.throws(() => r.requestSerialize([]), /expected object with ListVnesRequest structure, got array instead/);
    assert.throws(() => o.requestSerialize([]), /expected object with ListVnesRequest structure, got array instead/);
  });

  it('is a grpc-js client class with the service attached, made once', () => {
    const C = coordinatorClientClass();
    assert.equal(coordinatorClientClass(), C);
    assert.deepEqual(Object.keys(C.service).sort(), Object.keys(protoLoaders()).sort());
    assert.equal(typeof C.prototype.createSnapshot, 'function');
    assert.equal(typeof C.prototype.CreateSnapshot, 'function');
  });
});
