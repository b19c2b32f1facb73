#!/usr/bin/env node
/**
 * vnsnap-switch: the overlay switch on its own, from a static config file, for running and
 * testing the dataplane before (and without) the agent. Thin: parse flags, load the config,
 * build the switch, its ports and tunnel, and the control socket; stop cleanly on SIGTERM/SIGINT.
 * When ready it prints one JSON line on stdout: {"event":"ready", ...}. Logs go to stderr (JSON).
 */
import { Command } from 'commander';
import pino from 'pino';
import { describeError } from '../../proto/core/errors';
import { loadSwitchConfig, SwitchConfig } from './config';
import { ControlServer } from './control-server';
import { PacketPort, TapPort } from '../port/fd-port';
import type { Port } from '../port/port';
import { StreamPort } from '../port/stream-port';
import { Switch } from '../switch';
import { UdpTransport } from '../tunnel/udp';

export async function buildSwitch(cfg: SwitchConfig): Promise<{ sw: Switch; control?: ControlServer; tapNames: Record<string, string>; tunnelPort?: number }> {
  const sw = new Switch({ id: cfg.id, ...(cfg.tunnel?.underlayMtu ? { underlayMtu: cfg.tunnel.underlayMtu } : {}) });
  const tapNames: Record<string, string> = {};
  let control: ControlServer | undefined;
  try {
    for (const p of cfg.peers) sw.upsertPeer({ name: p.id, address: p.address, port: p.port });
    for (const v of cfg.vnes) sw.configureVne(v);
    let tunnelPort: number | undefined;
    if (cfg.tunnel) {
      const t = new UdpTransport(cfg.tunnel.address, cfg.tunnel.port, { offload: cfg.tunnel.offload ?? true });
      sw.attachTunnel(t);
      tunnelPort = t.localPort;
    }
    for (const p of cfg.ports) {
      let port: Port;
      if (p.type === 'tap') {
        const tap = new TapPort(p.name, p.ifname as string, undefined, { offload: p.offload ?? true });
        tapNames[p.name] = tap.ifname;
        port = tap;
      } else if (p.type === 'packet') port = new PacketPort(p.name, p.ifname as string);
      else {
        const sp = new StreamPort(p.name, p.path as string);
        await sp.listen();
        port = sp;
      }
      sw.attachPort(p.vne, port);
    }
    for (const s of cfg.static) sw.configureVne({ name: s.vne, macs: [s.peer !== undefined ? { mac: s.mac, peer: s.peer } : { mac: s.mac, port: s.port as string }] });
    if (cfg.control) {
      control = new ControlServer(sw, cfg.control);
      await control.start();
    }
    sw.start();
    return { sw, ...(control ? { control } : {}), tapNames, ...(tunnelPort !== undefined ? { tunnelPort } : {}) };
  } catch (e) {
    control?.stop();
    sw.stop();
    throw e;
  }
}

async function main(): Promise<void> {
  const program = new Command()
    .name('vnsnap-switch')
    .description('Run the vnsnap overlay switch from a static config file (see docs/switch.md).')
    .requiredOption('-c, --config <file>', 'switch configuration (JSON)')
    .option('--log-level <level>', 'pino log level', 'info')
    .showHelpAfterError();
  program.parse();
  const opts = program.opts<{ config: string; logLevel: string }>();
  const log = pino({ level: opts.logLevel, base: { component: 'switch' } }, pino.destination(2));
  let built: Awaited<ReturnType<typeof buildSwitch>>;
  try {
    const cfg = loadSwitchConfig(opts.config);
    built = await buildSwitch(cfg);
    log.info({ id: cfg.id, ports: cfg.ports.length, vnes: cfg.vnes.length }, 'switch ready');
  } catch (e) {
    process.stderr.write(`vnsnap-switch: ${describeError(e)}\n`);
    process.exit(2);
  }
  process.stdout.write(JSON.stringify({ event: 'ready', id: built.sw.opts.id, taps: built.tapNames, tunnelPort: built.tunnelPort ?? null, innerMtu: built.sw.innerMtu }) + '\n');
  const shutdown = (sig: string): void => {
    log.info({ sig }, 'stopping');
    built.control?.stop();
    built.sw.stop();
    process.exit(0);
  };
  process.on('SIGTERM', () => shutdown('SIGTERM'));
  process.on('SIGINT', () => shutdown('SIGINT'));
}

if (require.main === module) void main();
