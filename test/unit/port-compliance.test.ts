/**
 * The Port compliance suite (test/support/compliance/port.ts) over the ports that need no root:
 * the fake port (with and without offloads, batch size > 1) and the stream port (QEMU's
 * `-netdev stream` protocol) with a unix-socket client playing QEMU.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fakePortPair } from '../../switch/port/porttest/fake-port';
import { StreamPort } from '../../switch/port/stream-port';
import { describePortCompliance, PortUnderTest } from '../support/compliance/port';
import { until } from '../support/wait';

function fake(offload: boolean): () => Promise<PortUnderTest> {
  return () => {
    const { port, vm } = fakePortPair('f', { batchSize: 7, auto: true, offload });
    return Promise.resolve({
      port,
      vm: {
        write: (frames) => {
          for (const f of frames) vm.send(f);
          return Promise.resolve();
        },
        received: () => vm.received,
        ...(offload ? { receivedMeta: () => vm.receivedMeta } : {}),
      },
      dispose: () => undefined,
    });
  };
}

async function stream(): Promise<PortUnderTest> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vn-port-compliance-'));
  const port = new StreamPort('s', path.join(dir, 'vm.sock'), 5);
  await port.listen();
  const client = await new Promise<net.Socket>((resolve, reject) => {
    const c = net.connect(port.path, () => resolve(c));
    c.once('error', reject);
  });
  client.on('error', () => undefined);
  await until('the stream port to accept the VM', () => port.connected);
  const received: Buffer[] = [];
  let pending = Buffer.alloc(0);
  client.on('data', (d: Buffer) => {
    pending = Buffer.concat([pending, d]);
    while (pending.length >= 4 && pending.length >= 4 + pending.readUInt32BE(0)) {
      const len = pending.readUInt32BE(0);
      received.push(Buffer.from(pending.subarray(4, 4 + len)));
      pending = pending.subarray(4 + len);
    }
  });
  return {
    port,
    vm: {
      write: (frames) =>
        new Promise<void>((resolve, reject) => {
          const wire = Buffer.concat(
            frames.map((f) => {
              const h = Buffer.alloc(4);
              h.writeUInt32BE(f.length);
              return Buffer.concat([h, f]);
            }),
          );
          client.write(wire, (e) => (e ? reject(e) : resolve()));
        }),
      received: () => received,
    },
    dispose: () => {
      client.destroy();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

describePortCompliance('fake', fake(false));
describePortCompliance('fake with offloads', fake(true));
describePortCompliance('stream (unix socket)', stream);
