/**
 * The switch daemon's control socket: a unix socket speaking JSON lines, so the switch can be
 * driven and tested on its own before the agent exists (no gRPC inside switch/).
 *
 * Request  {"id": 1, "op": "snapshot", "vne": "blue", "epoch": 1}
 * Reply    {"id": 1, "ok": true, ...}  or  {"id": 1, "ok": false, "code": "ERR_...", "error": "..."}
 * Ops: stats; snapshot {vne, epoch} (cut every local port); channelState {vne, epoch,
 * timeoutMs?, frames?: true for base64 frames, and then per port `vnetHdrs`: each frame's
 * virtio_net_hdr in base64, null for an ordinary frame}; abort {vne, epoch}; recordings {vne};
 * setStaticMac {vne, mac, peer | port} (a peer joins the VNE); inject {port, frames: base64[]}
 * (opens the port's restore gate, if any); setGeneration {vne, generation} (at once; the same
 * generation again changes nothing); setPortEpoch {port, epoch}.
 */
import * as net from 'node:net';
import { describeError, VnsnapError } from '../../proto/core/errors';
import { flattenStats } from '../stats';
import type { Switch } from '../switch';
import { closeUnix, listenUnix } from '../port/unix-listen';

type Req = Record<string, unknown> & { id?: unknown; op?: unknown };

function need<T>(r: Req, key: string, type: 'string' | 'number'): T {
  const v = r[key];
  if (typeof v !== type) throw new VnsnapError('ERR_INVALID_ARGUMENT', `"${key}" must be a ${type}`);
  return v as T;
}

export async function handleControl(sw: Switch, r: Req): Promise<Record<string, unknown>> {
  switch (r.op) {
    case 'stats':
      return { stats: flattenStats(sw.stats()), innerMtu: sw.innerMtu };
    case 'snapshot': {
      const t0 = process.hrtime.bigint();
      await sw.cutVne(need(r, 'vne', 'string'), need(r, 'epoch', 'number'));
      return { cutMs: Number(process.hrtime.bigint() - t0) / 1e6 };
    }
    case 'channelState': {
      const cs = await sw.channelState(need(r, 'vne', 'string'), need(r, 'epoch', 'number'), typeof r['timeoutMs'] === 'number' ? r['timeoutMs'] : 30_000);
      const ports: Record<string, unknown> = {};
      const vnetHdrs: Record<string, (string | null)[]> = {};
      for (const [name, frames] of cs.ports) {
        ports[name] = r['frames'] === true ? frames.map((f) => f.frame.toString('base64')) : frames.length;
        if (r['frames'] === true) vnetHdrs[name] = frames.map((f) => f.vnetHdr?.toString('base64') ?? null);
      }
      return { epoch: cs.epoch, lostFrames: cs.lostFrames, ports, ...(r['frames'] === true ? { vnetHdrs } : {}) };
    }
    case 'abort':
      sw.abort(need(r, 'vne', 'string'), need(r, 'epoch', 'number'));
      return {};
    case 'recordings':
      return { recordings: sw.recordingStatus(need(r, 'vne', 'string')) };
    case 'setStaticMac': {
      const mac = need<string>(r, 'mac', 'string');
      const peer = r['peer'];
      sw.configureVne({ name: need(r, 'vne', 'string'), macs: [typeof peer === 'string' ? { mac, peer } : { mac, port: need<string>(r, 'port', 'string') }] });
      return {};
    }
    case 'inject': {
      const frames = r['frames'];
      if (!Array.isArray(frames) || !frames.every((f) => typeof f === 'string')) throw new VnsnapError('ERR_INVALID_ARGUMENT', '"frames" must be an array of base64 strings');
      return { injected: sw.openGate(need(r, 'port', 'string'), frames.map((f: string) => ({ frame: Buffer.from(f, 'base64'), vnetHdr: null }))) };
    }
    case 'setGeneration':
      sw.configureVne({ name: need(r, 'vne', 'string'), generation: need(r, 'generation', 'number'), generationNow: true });
      return {};
    case 'setPortEpoch':
      sw.setPortEpoch(need(r, 'port', 'string'), need(r, 'epoch', 'number'));
      return {};
    default:
      throw new VnsnapError('ERR_INVALID_ARGUMENT', `unknown op ${JSON.stringify(r.op)}`);
  }
}

export class ControlServer {
  private server: net.Server | undefined;
  constructor(
    private readonly sw: Switch,
    readonly path: string,
  ) {}

  async start(): Promise<void> {
    this.server = await listenUnix(this.path, 'control socket', (s) => this.serve(s));
  }

  private serve(s: net.Socket): void {
    let buf = '';
    s.on('error', () => s.destroy());
    s.on('data', (d) => {
      buf += d.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        if (line) void this.answer(s, line);
      }
    });
  }

  private async answer(s: net.Socket, line: string): Promise<void> {
    let req: Req;
    try {
      req = JSON.parse(line) as Req;
    } catch {
      s.write(JSON.stringify({ ok: false, code: 'ERR_INVALID_ARGUMENT', error: 'request is not JSON' }) + '\n');
      return;
    }
    let reply: Record<string, unknown>;
    try {
      reply = { id: req.id, ok: true, ...(await handleControl(this.sw, req)) };
    } catch (e) {
      reply = { id: req.id, ok: false, code: e instanceof VnsnapError ? e.code : 'ERR_STATE', error: describeError(e) };
    }
    if (!s.destroyed) s.write(JSON.stringify(reply) + '\n');
  }

  stop(): void {
    closeUnix(this.server, this.path);
    this.server = undefined;
  }
}
