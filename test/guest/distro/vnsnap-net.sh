#!/bin/sh
# The distro guest's network, from the kernel command line (the test guest's init.sh does the same):
#   vnsnap.name=NAME      hostname
#   vnsnap.ip=A.B.C.D/P   the address of the first Ethernet interface (without it: only up)
#   vnsnap.gw=A.B.C.D     default route
#   vnsnap.mtu=N          MTU (default 1500)
# Prints `vnsnap-net: VNSNAP-NET-UP name=… ip=… mac=… uptime=…` on the console when done.
set -u
NAME=guest IP= GW= MTU=1500
for w in $(cat /proc/cmdline); do
  case "$w" in
    vnsnap.name=*) NAME="${w#vnsnap.name=}" ;;
    vnsnap.ip=*) IP="${w#vnsnap.ip=}" ;;
    vnsnap.gw=*) GW="${w#vnsnap.gw=}" ;;
    vnsnap.mtu=*) MTU="${w#vnsnap.mtu=}" ;;
  esac
done
hostname "$NAME"
echo "$NAME" >/etc/hostname
ip link set lo up
# the first Ethernet interface (net.ifnames=0 makes it eth0; any name works)
DEV=
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
  for d in /sys/class/net/*; do
    n="${d##*/}"
    [ "$n" = lo ] && continue
    [ "$(cat "$d/type" 2>/dev/null)" = 1 ] && { DEV="$n"; break; }
  done
  [ -n "$DEV" ] && break
  sleep 0.5
done
[ -n "$DEV" ] || { echo "vnsnap-net: no Ethernet interface" >&2; exit 1; }
ip link set "$DEV" mtu "$MTU" up
[ -n "$IP" ] && ip addr replace "$IP" dev "$DEV"
[ -n "$GW" ] && ip route replace default via "$GW"
MAC="$(cat "/sys/class/net/$DEV/address")"
UP="$(cut -d' ' -f1 /proc/uptime)"
echo "vnsnap-net: VNSNAP-NET-UP name=$NAME ip=${IP:-none} dev=$DEV mac=$MAC uptime=$UP" >/dev/console
exit 0
