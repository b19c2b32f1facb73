import { strict as assert } from 'node:assert';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DESCRIPTORS, COORDINATOR_DESCRIPTOR, descriptorFile, descriptorIsCurrent, loadDescriptor, parseProtos, writeDescriptor } from '../../proto/core/descriptor-json';
import { protoDir } from '../../proto/core/proto-dir';

/** A copy of proto/vnsnap/v1 in a directory of its own (each case its own: loadDescriptor keeps what it loaded per directory). */
function protoCopy(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vnsnap-descriptor-'));
  fs.cpSync(path.join(protoDir(), 'vnsnap'), path.join(dir, 'vnsnap'), { recursive: true });
  return dir;
}

/** Compared as data (toJSON's objects do not all have Object's prototype). */
const plain = (v: unknown): unknown => JSON.parse(JSON.stringify(v));

describe('JSON descriptors of the contract (proto/core/descriptor-json.ts)', () => {
  const dirs: string[] = [];
  const copy = (): string => {
    const d = protoCopy();
    dirs.push(d);
    return d;
  };
  after(() => {
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
  });

  it("the build's descriptors are current and load as the .proto files parse", () => {
    for (const spec of DESCRIPTORS) {
      assert.ok(descriptorIsCurrent(spec), `${descriptorFile(spec)} is current (npm run build writes it)`);
      assert.deepEqual(plain(loadDescriptor(spec).toJSON()), plain(parseProtos(spec).root.toJSON()), spec.name);
    }
    const names = loadDescriptor(DESCRIPTORS[1] as (typeof DESCRIPTORS)[number]).lookupType('vnsnap.v1.QemuDriverSpec').fieldsArray.map((f) => f.name);
    assert.ok(names.includes('memory_mib'), 'keepCase: the .proto names');
    assert.ok(loadDescriptor(COORDINATOR_DESCRIPTOR).lookupType('vnsnap.v1.QemuDriverSpec').fieldsArray.some((f) => f.name === 'memoryMib'), 'camelCase for the grpc client');
  });

  it('a written descriptor is used while its .proto files are unchanged', () => {
    const dir = copy();
    writeDescriptor(COORDINATOR_DESCRIPTOR, dir);
    assert.ok(descriptorIsCurrent(COORDINATOR_DESCRIPTOR, dir));
    const j = JSON.parse(fs.readFileSync(descriptorFile(COORDINATOR_DESCRIPTOR, dir), 'utf8')) as { sources: Record<string, string> };
    assert.deepEqual(Object.keys(j.sources), ['vnsnap/v1/coordinator.proto', 'vnsnap/v1/types.proto'], 'the file and what it imports');
  });

  it('a .proto file changed after the build: the descriptor is not used, the .proto files are parsed', () => {
    const dir = copy();
    writeDescriptor(COORDINATOR_DESCRIPTOR, dir);
    fs.appendFileSync(path.join(dir, 'vnsnap/v1/types.proto'), '\nmessage AddedAfterTheBuild { string x = 1; }\n');
    assert.equal(descriptorIsCurrent(COORDINATOR_DESCRIPTOR, dir), false);
    assert.ok(loadDescriptor(COORDINATOR_DESCRIPTOR, dir).lookupType('vnsnap.v1.AddedAfterTheBuild'));
  });

  it('no descriptor, or an unreadable one: the .proto files are parsed', () => {
    const none = copy();
    assert.equal(descriptorIsCurrent(COORDINATOR_DESCRIPTOR, none), false);
    assert.ok(loadDescriptor(COORDINATOR_DESCRIPTOR, none).lookupService('vnsnap.v1.CoordinatorService'));
    const bad = copy();
    writeDescriptor(COORDINATOR_DESCRIPTOR, bad);
    fs.writeFileSync(descriptorFile(COORDINATOR_DESCRIPTOR, bad), '{"sources":');
    assert.equal(descriptorIsCurrent(COORDINATOR_DESCRIPTOR, bad), false);
    assert.ok(loadDescriptor(COORDINATOR_DESCRIPTOR, bad).lookupService('vnsnap.v1.CoordinatorService'));
  });

  it('a descriptor of the other naming is not taken for this one', () => {
    const dir = copy();
    writeDescriptor(COORDINATOR_DESCRIPTOR, dir);
    const spec = { ...COORDINATOR_DESCRIPTOR, keepCase: true };
    assert.equal(descriptorIsCurrent(spec, dir), false);
  });
});
