/**
 * The build's step that writes the contract's JSON descriptors (descriptor-json.ts) into
 * proto/gen/json/: `npm run build` runs it after tsc (`gen:descriptors`). Exits non-zero, with the
 * reason, when a .proto file cannot be parsed.
 */
import { DESCRIPTORS, writeDescriptor } from './descriptor-json';

try {
  for (const spec of DESCRIPTORS) writeDescriptor(spec);
} catch (e) {
  process.stderr.write(`gen-descriptors: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exitCode = 1;
}
