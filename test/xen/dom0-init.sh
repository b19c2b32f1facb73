#!/bin/sh
# PID 1 of the nested-Xen test bed's dom0 (installed as /sbin/vnxen-init; see docs/xen.md).
# No systemd: mount what Xen's toolstack needs, load the backend modules, start xenstored and
# xenconsoled (guest consoles logged to /var/log/xen/console/guest-NAME.log), mount the 9p
# shares (tag "work" = the vnsnap checkout at /vnsnap, tag "vnxen" = the test's exchange
# directory at /vnxen, tag "img" = the test bed's cache entry at /vnxen-img, read-only: the PV
# guest's initramfs), then run the command named on the kernel command line:
#   vnxen.run=/path/to/script   (run with /bin/sh; its output goes to /vnxen/run.log, its exit
#                                status to /vnxen/run.rc)
# and finally print VNXEN-DONE on the console and power off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /dev/shm
mount -o remount,rw / 2>/dev/null
echo "vnxen-init: dom0 up $(cut -d' ' -f1 /proc/uptime)"
hostname vnxen-dom0
ip link set lo up

for m in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xen-blkback xen-netback \
  9p 9pnet_virtio bridge tun loop dm-snapshot; do
  modprobe "$m" 2>/dev/null || echo "vnxen-init: modprobe $m failed"
done
mount -t xenfs xenfs /proc/xen || echo "vnxen-init: cannot mount xenfs (not running on Xen?)"
mkdir -p /vnsnap /vnxen /var/run/xen /var/log/xen/console /var/lib/xen
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 work /vnsnap 2>/dev/null || echo "vnxen-init: no 9p share 'work'"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 vnxen /vnxen 2>/dev/null || echo "vnxen-init: no 9p share 'vnxen'"
mkdir -p /vnxen-img
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro img /vnxen-img 2>/dev/null || echo "vnxen-init: no 9p share 'img'"

# xenstored + xenconsoled (Debian's init script), consoles of guests logged to files
export XENCONSOLED_TRACE=guest
if [ -f /etc/default/xen ]; then :; fi
/etc/init.d/xen start >/tmp/xen-start.log 2>&1 || { echo "vnxen-init: /etc/init.d/xen start failed:"; cat /tmp/xen-start.log; }
# Debian's script may ignore XENCONSOLED_TRACE: make sure guest consoles are logged
if ! pgrep -f 'xenconsoled.*log' >/dev/null 2>&1; then
  pkill -x xenconsoled 2>/dev/null
  sleep 0.2
  /usr/lib/xen-4.17/bin/xenconsoled --log=guest --log-dir=/var/log/xen/console 2>/dev/null ||
    xenconsoled --log=guest --log-dir=/var/log/xen/console 2>/dev/null ||
    echo "vnxen-init: cannot start xenconsoled with guest logs"
fi
echo "vnxen-init: xen tools up $(cut -d' ' -f1 /proc/uptime)"

RUN=''
for w in $(cat /proc/cmdline); do
  case "$w" in vnxen.run=*) RUN=${w#*=} ;; esac
done
if [ -n "$RUN" ]; then
  echo "vnxen-init: running $RUN"
  sh "$RUN" >/vnxen/run.log 2>&1
  rc=$?
  echo "$rc" >/vnxen/run.rc
  sync
  echo "vnxen-init: $RUN exited $rc"
else
  echo "vnxen-init: nothing to run (vnxen.run=)"
fi
echo "VNXEN-DONE $(cut -d' ' -f1 /proc/uptime)"
sync
poweroff -f
