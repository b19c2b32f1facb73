/**
 * The QEMU driver spec's `extra` map as an allow-list: each key the QEMU driver understands,
 * with a strict grammar for its value, and nothing else. A value becomes (part of) a QEMU
 * argument (`-machine VALUE`, `-cpu VALUE`, `name=VALUE` of a virtserialport), where a comma
 * would add QEMU options of the caller's choosing (`machine=q35,firmware=/etc/shadow`); no
 * grammar here admits a comma, an '=' or a space. An unknown key is refused, not ignored, so a
 * typo or an attempt is seen at `vne define`.
 *
 * Keys (docs/qemu.md):
 *   accel    kvm | tcg
 *   machine  q35 | pc | microvm | pc-q35-X.Y | pc-i440fx-X.Y
 *   cpu      a CPU model name: 1-64 of [A-Za-z0-9_.-] starting with a letter or digit (no
 *            "+feature"/"-feature" lists)
 *   channel  a virtio-serial port name: 1-64 of [A-Za-z0-9_.-] starting with a letter or digit
 *   nic      stream | tap | tap-vnet | tap-bpf
 *   monitor  0 | 1
 *   balloon  stats
 *   memory   migration | tracked   (how memory snapshots are taken: QEMU's migration stream, the
 *            default, or the agent's tracked capture of written blocks: docs/incremental-memory.md)
 *
 * Pure: the coordinator checks at definition, the QEMU driver again before it builds a command
 * line (agent/drivers/qemu/driver.ts). memoryMode() reads `memory` for both sides (the coordinator
 * decides the pre-copy cut instant by it: coordinator/cut-instant.ts).
 */
import { VnsnapError } from '../core/errors';

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;

export const QEMU_EXTRA: Readonly<Record<string, { re: RegExp; grammar: string }>> = {
  accel: { re: /^(kvm|tcg)$/, grammar: 'kvm or tcg' },
  machine: { re: /^(q35|pc|microvm|pc-q35-[0-9]{1,2}\.[0-9]{1,2}|pc-i440fx-[0-9]{1,2}\.[0-9]{1,2})$/, grammar: 'q35, pc, microvm, pc-q35-X.Y or pc-i440fx-X.Y' },
  cpu: { re: NAME, grammar: 'a CPU model name (letters, digits, "_", "." or "-")' },
  channel: { re: NAME, grammar: 'a port name (letters, digits, "_", "." or "-")' },
  nic: { re: /^(stream|tap|tap-vnet|tap-bpf)$/, grammar: 'stream, tap, tap-vnet or tap-bpf' },
  monitor: { re: /^[01]$/, grammar: '0 or 1' },
  balloon: { re: /^stats$/, grammar: 'stats' },
  memory: { re: /^(migration|tracked)$/, grammar: 'migration or tracked' },
};

/** How a QEMU VM's memory is snapshotted: its extra `memory`, `migration` when absent (QEMU's stream, the default). */
export type MemoryMode = 'migration' | 'tracked';

/** The memory mode an extra map asks for (it is checked already: anything but `tracked` is `migration`). */
export function memoryMode(extra: Readonly<Record<string, string>> | undefined): MemoryMode {
  return extra?.memory === 'tracked' ? 'tracked' : 'migration';
}

/** Refuse an unknown key or a value outside its grammar; `where` prefixes the message (e.g. `VM "a": `). */
export function checkQemuExtra(where: string, extra: Readonly<Record<string, string>>): void {
  for (const [k, v] of Object.entries(extra)) {
    const rule = QEMU_EXTRA[k];
    const key = JSON.stringify(k.length > 64 ? `${k.slice(0, 64)}...` : k);
    if (!Object.hasOwn(QEMU_EXTRA, k) || !rule) throw new VnsnapError('ERR_INVALID_ARGUMENT', `${where}qemu.extra key ${key} is not allowed (allowed: ${Object.keys(QEMU_EXTRA).join(', ')})`);
    if (!rule.re.test(v)) throw new VnsnapError('ERR_INVALID_ARGUMENT', `${where}qemu.extra.${k} ${JSON.stringify(v.length > 64 ? `${v.slice(0, 64)}...` : v)} is invalid: expected ${rule.grammar}`);
  }
}
