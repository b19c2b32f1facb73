#!/bin/sh
# Start vnguest with the vnsnap.* parameters of the kernel command line (it reads them itself).
# /dev/vda is the root filesystem here, so the disk writer gets a preallocated file on it
# instead (/var/lib/vnguest/disk.img, 32 MiB = 8192 record slots) unless vnsnap.disk names
# something else (none, or a second disk such as /dev/vdb).
DISK=/var/lib/vnguest/disk.img
for w in $(cat /proc/cmdline); do
  case "$w" in
    vnsnap.disk=*) v="${w#vnsnap.disk=}"; [ "$v" = /dev/vda ] || DISK="$v" ;;
    vnsnap.nogo=1) exec sleep infinity ;;
  esac
done
exec /usr/local/bin/vnguest run "disk=$DISK"
