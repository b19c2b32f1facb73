/**
 * Loading the contract at run time: the .proto files under proto/vnsnap/v1 become a grpc-js
 * package definition (typed by the code proto-loader-gen-types generates into proto/gen at
 * build time — never written by hand). The servers' health and reflection services are in
 * grpc-reflection.ts, so that a client loads neither them nor the contracts it does not call:
 * loadCoordinator() parses coordinator.proto and its imports alone. The CLI, started per command,
 * takes neither: its client class is built from the build's JSON descriptor without
 * proto-loader or the parser (coordinator-client.ts, which loadCoordinator() is the reference of).
 *
 * Loader options must match the generator's flags in package.json (`gen:proto`): camelCase
 * fields, 64-bit integers as JS numbers, enums as their names, defaults filled in, oneofs named.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { ProtoGrpcType as AgentProto } from '../gen/agent';
import type { ProtoGrpcType as CoordinatorProto } from '../gen/coordinator';
import { LOADER_OPTIONS } from './loader-options';
import { protoDir } from './proto-dir';

export const PROTO_FILES = ['vnsnap/v1/coordinator.proto', 'vnsnap/v1/agent.proto', 'vnsnap/v1/manifest.proto', 'vnsnap/v1/types.proto'];

export { LOADER_OPTIONS };

export { protoDir };

let cached: protoLoader.PackageDefinition | undefined;

export function packageDefinition(): protoLoader.PackageDefinition {
  cached ??= protoLoader.loadSync(PROTO_FILES, { ...LOADER_OPTIONS, includeDirs: [protoDir()] });
  return cached;
}

export type VnsnapGrpc = CoordinatorProto & AgentProto;

export function loadVnsnap(): VnsnapGrpc {
  return grpc.loadPackageDefinition(packageDefinition()) as unknown as VnsnapGrpc;
}

/** The coordinator's service alone (coordinator.proto and what it imports), for its clients. */
export function loadCoordinator(): CoordinatorProto {
  return grpc.loadPackageDefinition(protoLoader.loadSync(['vnsnap/v1/coordinator.proto'], { ...LOADER_OPTIONS, includeDirs: [protoDir()] })) as unknown as CoordinatorProto;
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
