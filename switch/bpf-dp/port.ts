/**
 * A VM port on the in-kernel data path (`nic: 'tap-bpf'`): the switch's packet port on the TAP's
 * punt device (the veth end `v` that vn_tx redirects the frames it does not carry into), which
 * also says which TAP it stands for, so the switch can register the port with its data path
 * (switch/bpf-dp/wiring.ts): the TAP's ifindex keys vn_ports, vn_fdb names it for local MACs.
 *
 * Guarantees: a plain PacketPort in every other respect (read and write on `v`, offloads on);
 * dataPathOf(port) is the port's data path identity, undefined for a port without one.
 */
import { PacketPort } from '../port/fd-port';
import type { Port } from '../port/port';

export interface DataPathPortInfo {
  /** The VM TAP's ifindex: vn_tx runs on it, vn_ports and vn_fdb name it. */
  tapIfindex: number;
  /** The device vn_tx punts the TAP's frames into (read by this port). */
  puntIfindex: number;
}

export class DataPathPort extends PacketPort {
  constructor(
    name: string,
    puntIfname: string,
    readonly dataPath: DataPathPortInfo,
  ) {
    super(name, puntIfname, undefined, { offload: true, writeIfname: puntIfname });
  }
}

/** The port's data path identity: a DataPathPort's (or any port's that carries one, as tests' fakes do). */
export function dataPathOf(port: Port): DataPathPortInfo | undefined {
  const d = (port as Partial<Pick<DataPathPort, 'dataPath'>>).dataPath;
  return d !== undefined && Number.isInteger(d.tapIfindex) && d.tapIfindex > 0 ? d : undefined;
}
