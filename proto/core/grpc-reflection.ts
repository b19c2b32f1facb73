/**
 * The standard gRPC health and reflection services on a vnsnap server, so stock clients
 * (grpcurl, grpcui, Postman) work unaided. Apart from grpc.ts because only the servers need them:
 * a client started per command (the CLI) does not load their modules.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation, protoPath as healthProtoPath, type ServingStatusMap } from 'grpc-health-check';
import * as descriptor from 'protobufjs/ext/descriptor';
import { PROTO_FILES, protoDir } from './grpc';

/**
 * The file descriptors served by reflection, as protoc would write them, so strict protobuf
 * runtimes (C++, Python, Go: grpcurl) accept them: field names as in the .proto (snake_case),
 * map-entry messages named `<Field>Entry` (protobufjs names them after the field, which those
 * runtimes reject), and the health service included so reflection-only clients can call it.
 */
function reflectionDefinition(): protoLoader.PackageDefinition {
  const def = protoLoader.loadSync([...PROTO_FILES, healthProtoPath], { keepCase: true, includeDirs: [protoDir()] });
  for (const v of Object.values(def)) {
    const files = (v as { fileDescriptorProtos?: Buffer[] }).fileDescriptorProtos;
    if (!Array.isArray(files)) continue;
    (v as { fileDescriptorProtos: Buffer[] }).fileDescriptorProtos = files.map((bin) => {
      const fd = descriptor.FileDescriptorProto.decode(bin) as unknown as { messageType: DescriptorMessage[] };
      for (const m of fd.messageType) nameMapEntries(m);
      return Buffer.from(descriptor.FileDescriptorProto.encode(fd as unknown as descriptor.IFileDescriptorProto).finish());
    });
  }
  return def;
}

interface DescriptorMessage {
  field?: { name: string; typeName?: string }[];
  nestedType?: (DescriptorMessage & { name: string; options?: { mapEntry?: boolean } })[];
}

function nameMapEntries(msg: DescriptorMessage): void {
  for (const f of msg.field ?? []) {
    const entry = (msg.nestedType ?? []).find((n) => n.options?.mapEntry && n.name === f.typeName);
    if (entry) {
      const name = f.name.replace(/(?:^|_)([a-z0-9])/g, (_m, c: string) => c.toUpperCase()) + 'Entry';
      entry.name = name;
      f.typeName = name;
    }
  }
  for (const n of msg.nestedType ?? []) nameMapEntries(n);
}

/**
 * Add grpc.health.v1 and server reflection (v1 and v1alpha) to a server. The returned health
 * implementation lets the caller flip a service to NOT_SERVING (e.g. while shutting down).
 */
export function addHealthAndReflection(server: grpc.Server, services: readonly string[]): HealthImplementation {
  const statusMap: ServingStatusMap = { '': 'SERVING' };
  for (const s of services) statusMap[s] = 'SERVING';
  const health = new HealthImplementation(statusMap);
  health.addToServer(server);
  new ReflectionService(reflectionDefinition()).addToServer(server);
  return health;
}
