#!/bin/sh
# /init of the vnsnap test guest (busybox ash, PID 1). See docs/guest.md.
#
# Kernel command line (all optional except vnsnap.ip for networking):
#   vnsnap.name=NAME          guest name (default: guest); also the hostname
#   vnsnap.ip=ADDR/PREFIX     IPv4 address of eth0 (no address: eth0 is only brought up)
#   vnsnap.gw=ADDR            default route
#   vnsnap.mtu=N              eth0 MTU (the overlay's inner MTU)
#   vnsnap.shell=1            also start a shell on the console (debugging only: typing into the
#                             serial console drops characters under TCG)
#   vnsnap.nogo=1             do not start vnguest (bring up the network only)
#   vnsnap.iperf=1            start an iperf3 server (iperf3 -s -D, port 5201) once eth0 is up
#   vnsnap.peers=... vnsnap.rate=... vnsnap.mem=... vnsnap.memrate=... vnsnap.disk=...
#   vnsnap.diskrate=... vnsnap.listen=... vnsnap.status=... vnsnap.report=...   read by vnguest
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /tmp /run
mount -t devpts devpts /dev/pts 2>/dev/null
exec </dev/console >/dev/console 2>&1

log() { echo "vnsnap-init: $*"; }

NAME=guest IP='' GW='' MTU='' SHELL_ON=0 NOGO=0 IPERF=0
for w in $(cat /proc/cmdline); do
  case "$w" in
    vnsnap.name=*) NAME=${w#*=} ;;
    vnsnap.ip=*) IP=${w#*=} ;;
    vnsnap.gw=*) GW=${w#*=} ;;
    vnsnap.mtu=*) MTU=${w#*=} ;;
    vnsnap.shell=*) SHELL_ON=${w#*=} ;;
    vnsnap.nogo=*) NOGO=${w#*=} ;;
    vnsnap.iperf=*) IPERF=${w#*=} ;;
  esac
done
hostname "$NAME"

# virtio modules, dependencies first (the order is computed at build time from modinfo).
for m in $(cat /lib/modules/load-order); do
  insmod "/lib/modules/$m.ko" || log "insmod $m failed"
done

i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 200 ]; do usleep 50000; i=$((i + 1)); done
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
  [ -n "$MTU" ] && ip link set eth0 mtu "$MTU"
  [ -n "$IP" ] && ip addr add "$IP" dev eth0
  ip link set eth0 up
  [ -n "$GW" ] && ip route add default via "$GW"
  log "VNSNAP-NET-UP name=$NAME ip=$IP mac=$(cat /sys/class/net/eth0/address) uptime=$(cut -d' ' -f1 /proc/uptime)"
else
  log "VNSNAP-NET-MISSING no eth0 after 10 s"
fi
# the raw disk, if any (vnguest writes records to /dev/vda directly: no filesystem)
i=0
while [ ! -e /dev/vda ] && [ -d /sys/bus/virtio/drivers/virtio_blk ] && ls /sys/bus/virtio/drivers/virtio_blk | grep -q virtio && [ $i -lt 40 ]; do usleep 50000; i=$((i + 1)); done
[ -e /dev/vda ] && log "disk /dev/vda $(cat /sys/block/vda/size) sectors"

if [ "$IPERF" = 1 ]; then
  if /usr/bin/iperf3 -s -D; then log "VNSNAP-IPERF-UP"; else log "VNSNAP-IPERF-FAILED rc=$?"; fi
fi
if [ "$NOGO" != 1 ]; then
  (
    while :; do
      /bin/vnguest run
      log "VNGUEST-EXIT rc=$?"
      sleep 2
    done
  ) &
fi
if [ "$SHELL_ON" = 1 ]; then
  (while :; do setsid cttyhack sh; done) &
fi
# PID 1 must never exit; sleeping in a loop also reaps orphans via the shell's wait.
while :; do
  sleep 3600 &
  wait
done
