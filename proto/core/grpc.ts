/**
 * Loading the contract at run time: the .proto files under proto/vnsnap/v1 become a grpc-js
 * package definition (typed by the code proto-loader-gen-types generates into proto/gen at
 * build time — never written by hand), plus the standard gRPC health and reflection services
 * so stock clients (grpcurl, grpcui, Postman) work unaided.
 *
 * Loader options must match the generator's flags in package.json (`gen:proto`): camelCase
 * fields, 64-bit integers as JS numbers, enums as their names, defaults filled in, oneofs named.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation, protoPath as healthProtoPath, type ServingStatusMap } from 'grpc-health-check';
import * as descriptor from 'protobufjs/ext/descriptor';
import type { ProtoGrpcType as AgentProto } from '../gen/agent';
import type { ProtoGrpcType as CoordinatorProto } from '../gen/coordinator';

export const PROTO_FILES = ['vnsnap/v1/coordinator.proto', 'vnsnap/v1/agent.proto', 'vnsnap/v1/manifest.proto', 'vnsnap/v1/types.proto'];

export const LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
};

/** The directory holding vnsnap/v1/*.proto (works from the sources and from dist/). */
export function protoDir(): string {
  for (const c of [path.join(__dirname, '..'), path.join(__dirname, '..', '..', '..', 'proto')]) {
    if (fs.existsSync(path.join(c, 'vnsnap', 'v1', 'coordinator.proto'))) return c;
  }
  throw new Error(`cannot find the .proto files near ${__dirname}`);
}

let cached: protoLoader.PackageDefinition | undefined;

export function packageDefinition(): protoLoader.PackageDefinition {
  cached ??= protoLoader.loadSync(PROTO_FILES, { ...LOADER_OPTIONS, includeDirs: [protoDir()] });
  return cached;
}

export type VnsnapGrpc = CoordinatorProto & AgentProto;

export function loadVnsnap(): VnsnapGrpc {
  return grpc.loadPackageDefinition(packageDefinition()) as unknown as VnsnapGrpc;
}

/**
 * HTTP/2 keepalive of the agent session, both ends: a ping every 10 s, the connection dropped if
 * one is not answered in 20 s (gRPC's default timeout). Dead agents are found by the heartbeats
 * (`dead_after_ms`); keepalive only finds dead connections. With 5 s, a coordinator whose event
 * loop stalled 7 s (a catalog fsync behind image writeback, nested Xen test bed) lost a healthy
 * agent's session and with it the snapshot being begun.
 */
export const SESSION_KEEPALIVE = { 'grpc.keepalive_time_ms': 10_000, 'grpc.keepalive_timeout_ms': 20_000 } as const;

export const COORDINATOR_SERVICE = 'vnsnap.v1.CoordinatorService';
export const AGENT_SERVICE = 'vnsnap.v1.AgentService';

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
