/**
 * The CoordinatorService client class of the CLI (started once per command), from the build's JSON
 * descriptor (descriptor-json.ts) through grpc-js's own constructor of clients
 * (makeClientConstructor): what grpc.ts loadCoordinator() gives through @grpc/proto-loader, without
 * loading proto-loader and the .proto parser, parsing .proto text, or encoding the file descriptors
 * proto-loader makes for reflection, which a client never reads. That was ~60 ms of the CLI's
 * ~0.3 s of CPU at every command (docs/performance.md, branch `wallstart`).
 *
 * Guarantee: every method has proto-loader's path, stream flags and name, and serializes and
 * deserializes as proto-loader's definition does with LOADER_OPTIONS (fromObject then encode;
 * decode then toObject with those options); test/unit/coordinator-client.test.ts compares them.
 */
import * as grpc from '@grpc/grpc-js';
import type { ProtoGrpcType as CoordinatorProto } from '../gen/coordinator';
import { COORDINATOR_DESCRIPTOR, loadDescriptor } from './descriptor-json';
import { LOADER_OPTIONS } from './loader-options';

export const COORDINATOR_SERVICE_NAME = 'vnsnap.v1.CoordinatorService';

type Message = Parameters<typeof grpc.makeClientConstructor>[0][string];

/** The service's method definitions, as proto-loader's createPackageDefinition makes them (module comment). */
export function coordinatorServiceDefinition(): grpc.ServiceDefinition {
  const service = loadDescriptor(COORDINATOR_DESCRIPTOR).lookupService(COORDINATOR_SERVICE_NAME);
  const def: Record<string, Message> = {};
  for (const m of service.methodsArray) {
    const req = m.resolvedRequestType;
    const res = m.resolvedResponseType;
    if (!req || !res) throw new Error(`${COORDINATOR_SERVICE_NAME}.${m.name}: its message types did not resolve`);
    def[m.name] = {
      path: `/${COORDINATOR_SERVICE_NAME}/${m.name}`,
      requestStream: !!m.requestStream,
      responseStream: !!m.responseStream,
      requestSerialize: serializer(req),
      requestDeserialize: deserializer(req),
      responseSerialize: serializer(res),
      responseDeserialize: deserializer(res),
      // proto-loader's (lodash's camelCase of the method's PascalCase name): its first letter lower-cased.
      originalName: m.name.charAt(0).toLowerCase() + m.name.slice(1),
    };
  }
  return def;
}

function serializer(type: import('protobufjs').Type): (v: unknown) => Buffer {
  return (v) => {
    if (Array.isArray(v)) throw new Error(`Failed to serialize message: expected object with ${type.name} structure, got array instead`);
    return type.encode(type.fromObject(v as Record<string, unknown>)).finish() as Buffer;
  };
}

function deserializer(type: import('protobufjs').Type): (b: Buffer) => unknown {
  return (b) => type.toObject(type.decode(b), LOADER_OPTIONS);
}

let ctor: CoordinatorProto['vnsnap']['v1']['CoordinatorService'] | undefined;

/** The client class (`new (address, credentials, options?)`), made once per process. */
export function coordinatorClientClass(): CoordinatorProto['vnsnap']['v1']['CoordinatorService'] {
  if (!ctor) {
    const c = grpc.makeClientConstructor(coordinatorServiceDefinition(), COORDINATOR_SERVICE_NAME) as unknown as CoordinatorProto['vnsnap']['v1']['CoordinatorService'];
    ctor = c;
  }
  return ctor;
}
