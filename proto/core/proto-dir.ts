/**
 * Where the contract's .proto files are (proto/, holding vnsnap/v1/*.proto), from the sources and
 * from dist/ alike. Its own module so that a reader of the contract (the CLI's JSON descriptors,
 * descriptor-json.ts) finds it without loading the .proto parser that grpc.ts loads.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** The directory holding vnsnap/v1/*.proto (works from the sources and from dist/). */
export function protoDir(): string {
  for (const c of [path.join(__dirname, '..'), path.join(__dirname, '..', '..', '..', 'proto')]) {
    if (fs.existsSync(path.join(c, 'vnsnap', 'v1', 'coordinator.proto'))) return c;
  }
  throw new Error(`cannot find the .proto files near ${__dirname}`);
}
