#!/usr/bin/env node
/**
 * One unary gRPC call with raw request bytes, for malformed-request tests (run where the server
 * is reachable, e.g. `ip netns exec NS node dist/test/support/raw-grpc.js ...`):
 *
 *   node raw-grpc.js ADDRESS /package.Service/Method HEX
 *
 * With VNSNAP_CA, VNSNAP_CERT and VNSNAP_KEY set it dials with mutual TLS, else plaintext.
 * Prints one JSON line: {"ok":true,"bytes":N} or {"ok":false,"code":"INVALID_ARGUMENT",
 * "details":"...","vnsnapErrorCode":"ERR_..."}.
 */
import * as fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';

function main(): void {
  const [address, method, hex] = process.argv.slice(2);
  if (!address || !method || hex === undefined) {
    process.stderr.write('usage: raw-grpc ADDRESS /pkg.Service/Method HEX\n');
    process.exit(2);
  }
  const { VNSNAP_CA: ca, VNSNAP_CERT: cert, VNSNAP_KEY: key } = process.env;
  const creds = ca && cert && key ? grpc.credentials.createSsl(fs.readFileSync(ca), fs.readFileSync(key), fs.readFileSync(cert)) : grpc.credentials.createInsecure();
  const client = new grpc.Client(address, creds);
  client.makeUnaryRequest<Buffer, Buffer>(
    method,
    (b) => b,
    (b) => b,
    Buffer.from(hex, 'hex'),
    { deadline: Date.now() + 10_000 },
    (err, res) => {
      if (err) {
        const code = grpc.status[err.code] ?? String(err.code);
        const v = err.metadata?.get('vnsnap-error-code')[0];
        process.stdout.write(JSON.stringify({ ok: false, code, details: err.details, vnsnapErrorCode: v === undefined ? null : String(v) }) + '\n');
      } else process.stdout.write(JSON.stringify({ ok: true, bytes: res?.length ?? 0 }) + '\n');
      client.close();
    },
  );
}

main();
