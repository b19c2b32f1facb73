/**
 * A steady load of small packets through a pair of VXLAN devices in two namespaces of their own,
 * beside the pairs of vm-net-ab.js (`--rcu-load MODE`). Why it exists: a VXLAN device in external
 * mode allocates a metadata dst for every packet it receives and frees it with a hurried RCU
 * callback, which keeps the machine's RCU grace periods running (docs/nic-offloads.md, "The
 * external device's receive cost"); with MODE 'external' this load puts the same on the machine
 * without the program, with 'ordinary' (the control) the same packets go through ordinary devices,
 * which allocate none. Comparing the bridge pair against a bpf pair under each tells whether that
 * RCU load is what the bridge path is spared.
 *
 * Guarantees: 2,000 datagrams of 16 bytes a second (20 every 10 ms) from one namespace to the
 * other's VXLAN address, where nothing listens (dropped after the device); everything is named
 * vmnbl* and removed by close(), also when start fails.
 */
import { Topology } from '../support/netns';

export type RcuLoadMode = 'external' | 'ordinary';
export const RCU_LOAD_MODES: readonly RcuLoadMode[] = ['external', 'ordinary'];

const PORT = 4799;
const VNI = 5;
const MACS = ['02:78:00:00:00:01', '02:78:00:00:00:02'] as const;
/** The sender, run by node inside the first namespace. */
const SENDER = "const s=require('dgram').createSocket('udp4');const b=Buffer.alloc(16);setInterval(()=>{for(let i=0;i<20;i++)s.send(b,9,'192.168.78.2')},10);";

export interface RcuLoad {
  /** Datagrams the sending device has sent so far. */
  sent(): number;
  close(): Promise<void>;
}

export function startRcuLoad(mode: RcuLoadMode): RcuLoad {
  const topo = new Topology('vmnbl');
  try {
    topo.addNamespace('x');
    topo.addNamespace('y');
    topo.veth('x', 'vmnblu1', 'y', 'vmnblu2', '10.78.0.1/24', '10.78.0.2/24');
    for (const [i, h] of (['x', 'y'] as const).entries()) {
      const peer = `10.78.0.${2 - i}`;
      const dev = mode === 'external' ? ['external'] : ['id', String(VNI), 'remote', peer, 'dev', `vmnblu${i + 1}`];
      topo.exec(h, 'ip', ['link', 'add', 'vxl', 'address', MACS[i] as string, 'type', 'vxlan', ...dev, 'dstport', String(PORT)]);
      topo.exec(h, 'ip', ['link', 'set', 'vxl', 'up']);
      topo.exec(h, 'ip', ['addr', 'add', `192.168.78.${i + 1}/24`, 'dev', 'vxl']);
      const other = `192.168.78.${2 - i}`;
      topo.exec(h, 'ip', ['neigh', 'replace', other, 'lladdr', MACS[1 - i] as string, 'dev', 'vxl', 'nud', 'permanent']);
      // an external device sends only what carries a tunnel key: the route's encapsulation gives it
      if (mode === 'external') topo.exec(h, 'ip', ['route', 'replace', `${other}/32`, 'encap', 'ip', 'id', String(VNI), 'dst', peer, 'dev', 'vxl']);
    }
    topo.spawn('x', process.execPath, ['-e', SENDER], { stdio: 'ignore' });
  } catch (e) {
    void topo.destroy();
    throw e;
  }
  return {
    sent: () => Number(topo.exec('x', 'cat', ['/sys/class/net/vxl/statistics/tx_packets']).trim()),
    close: () => topo.destroy(),
  };
}
