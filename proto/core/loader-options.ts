/**
 * How the contract's messages look as JavaScript objects, for every loader of it: @grpc/proto-loader
 * in the servers and agents (grpc.ts) and the CLI's client built from the JSON descriptor
 * (coordinator-client.ts). They must match the generator's flags in package.json (`gen:proto`),
 * which type those objects: camelCase fields, 64-bit integers as JS numbers, enums as their names,
 * defaults filled in, oneofs named.
 */
import type { Options } from '@grpc/proto-loader';

export const LOADER_OPTIONS: Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
};
