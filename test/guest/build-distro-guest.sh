#!/usr/bin/env bash
# Build the vnsnap distro guest: an ordinary Debian 12 system (debootstrap bookworm, minbase +
# systemd, udev, Debian's cloud kernel, persistent journald, cron with a job that writes, and
# openssh-server as an ordinary network daemon) on an ext4 root filesystem inside a qcow2 image
# (the VM's disk: root=/dev/vda), with the kernel and initrd (initramfs-tools, from the image)
# next to it for direct boot. The workload program vnguest (test/guest/src/vnguest.c, the test
# guest's) runs as a systemd service with the same vnsnap.* kernel parameters; its disk writer
# uses a preallocated file on the root filesystem (/var/lib/vnguest/disk.img). See docs/guest.md,
# "The distro guest".
#
# Usage (as root):
#   test/guest/build-distro-guest.sh                build if needed, then print the paths
#   test/guest/build-distro-guest.sh --print-paths  print the paths if the current inputs are
#                                                   cached (exit 3 and print nothing if not)
#   test/guest/build-distro-guest.sh --force        rebuild even if cached
#
# Output on stdout (only this; logs go to stderr), ready for `eval`:
#   VNSNAP_DISTRO_KERNEL=/var/cache/vnsnap/distro/<key>/vmlinuz
#   VNSNAP_DISTRO_INITRD=/var/cache/vnsnap/distro/<key>/initrd.img
#   VNSNAP_DISTRO_DISK=/var/cache/vnsnap/distro/<key>/disk.qcow2    (never written: boot a VM
#                                                     from a qcow2 overlay of it, one per VM)
#   VNSNAP_DISTRO_TOOL=/var/cache/vnsnap/distro/<key>/vnguest       (the program, for the host)
#
# Cache: ${VNSNAP_CACHE:-/var/cache/vnsnap}/distro/<key>/, key = sha256 of this script, the
# files in test/guest/distro/, vnguest.c, the mirror and the candidate versions (host's apt) of
# the packages that go in, as a change detector: debootstrap itself installs the suite's versions,
# which manifest.txt and packages.txt record. Entries are complete or absent (built in a
# temporary directory, renamed into place); concurrent builds are serialised with flock. Needs
# the Debian mirror apt uses (unreachable: one error line, exit 1). A build takes ~3-4 minutes.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
FILES="$HERE/distro"
CACHE_ROOT="${VNSNAP_CACHE:-/var/cache/vnsnap}/distro"
SUITE=bookworm
KERNEL_META=linux-image-cloud-amd64
# What goes in besides minbase: init, devices, the kernel, the root fs tools, the network, and
# the ordinary services that write to disk and network.
GUEST_PKGS=(systemd-sysv udev "$KERNEL_META" initramfs-tools e2fsprogs iproute2 procps cron openssh-server)
HOST_PKGS=(debootstrap e2fsprogs qemu-utils gcc libc6-dev curl)
IMG_SIZE=1536M # the filesystem's size (the qcow2 holds only the blocks in use)

MODE=build
for a in "$@"; do
  case "$a" in
    --print-paths) MODE=print ;;
    --force) MODE=force ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "build-distro-guest.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done

log() { echo "build-distro-guest: $*" >&2; }
die() { echo "build-distro-guest: error: $*" >&2; exit 1; }

APT=(apt-get -q -o DPkg::Lock::Timeout=600)
installed_version() { dpkg-query -W -f='${db:Status-Status} ${Version}\n' "$1" 2>/dev/null | awk '$1=="installed"{print $2}'; }
candidate_version() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/{print $2}' | grep -v '^(none)$' || true; }

# The mirror apt uses: the first URI configured for the main archive (not -security).
mirror() {
  local m
  m="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -v '^\s*#' | grep -E 'debian' | grep -oE 'https?://[^ ]+' | grep -v -- '-security' | head -1 || true)"
  echo "${m:-http://deb.debian.org/debian}"
}

# The versioned kernel package behind the metapackage (e.g. linux-image-6.1.0-56-cloud-amd64).
kernel_pkg() {
  apt-cache show --no-all-versions "$KERNEL_META" 2>/dev/null |
    awk -F': ' '/^Depends:/{print $2; exit}' | tr ',' '\n' | sed 's/^ *//; s/ .*//' |
    grep -E '^linux-image-[0-9].*-cloud-amd64$' | head -1 || true
}

input_key() {
  local kpkg="$1"
  {
    echo "format 1 $SUITE $(mirror) size $IMG_SIZE"
    sha256sum "$HERE/build-distro-guest.sh" "$FILES"/* "$HERE/src/vnguest.c" | awk '{print $1}'
    echo "kernel $kpkg $(candidate_version "$kpkg")"
    for p in "${GUEST_PKGS[@]}" systemd libc6 gcc libc6-dev; do echo "$p $(candidate_version "$p")"; done
  } | sha256sum | cut -c1-16
}

print_paths() {
  echo "VNSNAP_DISTRO_KERNEL=$1/vmlinuz"
  echo "VNSNAP_DISTRO_INITRD=$1/initrd.img"
  echo "VNSNAP_DISTRO_DISK=$1/disk.qcow2"
  echo "VNSNAP_DISTRO_TOOL=$1/vnguest"
}

cached() { [ -f "$1/complete" ] && [ -f "$1/vmlinuz" ] && [ -f "$1/initrd.img" ] && [ -f "$1/disk.qcow2" ] && [ -x "$1/vnguest" ]; }

# ---------------------------------------------------------------- --print-paths: never builds
if [ "$MODE" = print ]; then
  KPKG="$(kernel_pkg)"
  [ -n "$KPKG" ] || { log "cannot resolve $KERNEL_META (apt lists missing?): not built"; exit 3; }
  DIR="$CACHE_ROOT/$(input_key "$KPKG")"
  cached "$DIR" || { log "not built for the current inputs ($DIR)"; exit 3; }
  print_paths "$DIR"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot)"

# ---------------------------------------------------------------- host packages
missing=()
for p in "${HOST_PKGS[@]}"; do [ -n "$(installed_version "$p")" ] || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y --no-install-recommends "${missing[@]}" >&2 ||
    { "${APT[@]}" update >&2; DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y --no-install-recommends "${missing[@]}" >&2; } ||
    die "cannot install ${missing[*]}"
fi
MIRROR="$(mirror)"
curl -fsS -o /dev/null --max-time 20 "$MIRROR/dists/$SUITE/Release" 2>/dev/null ||
  die "the Debian mirror $MIRROR is unreachable (needed for debootstrap $SUITE)"
KPKG="$(kernel_pkg)"
if [ -z "$KPKG" ]; then
  "${APT[@]}" update >&2 || true
  KPKG="$(kernel_pkg)"
fi
[ -n "$KPKG" ] || die "cannot resolve $KERNEL_META to a kernel package (apt-get update?)"

KEY="$(input_key "$KPKG")"
DIR="$CACHE_ROOT/$KEY"
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.lock"
flock -w 1800 9 || die "timed out waiting for another build (lock $CACHE_ROOT/.lock)"
if [ "$MODE" != force ] && cached "$DIR"; then
  log "cached: $DIR"
  touch "$DIR" # marks it used (old unused entries are removed by later builds)
  print_paths "$DIR"
  exit 0
fi

T0=$(date +%s)
WORK="$(mktemp -d "$CACHE_ROOT/.build-XXXXXX")"
ROOT="$WORK/root"
cleanup() {
  for m in dev/pts dev sys proc; do umount "$ROOT/$m" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
log "building $KEY in $WORK (debootstrap $SUITE from $MIRROR, kernel $KPKG; a few minutes)"

# ---------------------------------------------------------------- debootstrap
inc="$(IFS=,; echo "${GUEST_PKGS[*]}")"
debootstrap --variant=minbase --include="$inc" "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
  { tail -30 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
for m in dev/pts dev sys proc; do umount "$ROOT/$m" 2>/dev/null || true; done

# ---------------------------------------------------------------- configuration
echo "$KEY$KEY" >"$ROOT/etc/machine-id" # fixed: no first-boot units (they may prompt on the console)
echo guest >"$ROOT/etc/hostname"
printf '127.0.0.1 localhost\n' >"$ROOT/etc/hosts"
printf '/dev/vda / ext4 defaults,errors=remount-ro 0 1\n' >"$ROOT/etc/fstab"
mkdir -p "$ROOT/var/log/journal" "$ROOT/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=persistent\nSyncIntervalSec=30s\nSystemMaxUse=16M\n' >"$ROOT/etc/systemd/journald.conf.d/vnsnap.conf"
# initramfs: the virtio modules the root needs, and only what this VM uses
printf 'virtio_pci\nvirtio_blk\nvirtio_net\nvirtio_console\next4\n' >>"$ROOT/etc/initramfs-tools/modules"
sed -i 's/^MODULES=.*/MODULES=list/; s/^COMPRESS=.*/COMPRESS=gzip/' "$ROOT/etc/initramfs-tools/initramfs.conf"
# the workload, the network and the cron job
mkdir -p "$ROOT/usr/local/bin" "$ROOT/usr/local/sbin" "$ROOT/var/lib/vnguest" "$ROOT/var/lib/vnsnap-cron"
gcc -O2 -static -pthread -Wall -Wextra -o "$WORK/vnguest" "$HERE/src/vnguest.c" >&2
strip "$WORK/vnguest"
install -m 0755 "$WORK/vnguest" "$ROOT/usr/local/bin/vnguest"
install -m 0755 "$FILES/vnsnap-net.sh" "$ROOT/usr/local/sbin/vnsnap-net"
install -m 0755 "$FILES/vnguest-run.sh" "$ROOT/usr/local/sbin/vnguest-run"
install -m 0644 "$FILES/vnsnap-net.service" "$FILES/vnguest.service" "$ROOT/etc/systemd/system/"
install -m 0644 "$FILES/vnsnap-cron" "$ROOT/etc/cron.d/vnsnap"
# the disk writer's "device": 32 MiB of zeros, allocated (O_DIRECT writes go to the blocks in place)
dd if=/dev/zero of="$ROOT/var/lib/vnguest/disk.img" bs=1M count=32 status=none
mount -t proc proc "$ROOT/proc"
mount -t sysfs sys "$ROOT/sys"
mount --bind /dev "$ROOT/dev"
chroot "$ROOT" /bin/sh -ec '
  systemctl enable vnsnap-net.service vnguest.service cron.service ssh.service >/dev/null 2>&1
  systemctl enable systemd-journald.service >/dev/null 2>&1 || true
  # nothing of a desktop or a server fleet: no periodic apt, no trims, no scrubs, no getty on a VGA
  for u in apt-daily.timer apt-daily-upgrade.timer fstrim.timer e2scrub_all.timer e2scrub_reap.service \
           systemd-firstboot.service getty-static.service getty@tty1.service systemd-networkd-wait-online.service; do
    systemctl mask "$u" >/dev/null 2>&1 || true
  done
  passwd -d root >/dev/null
  update-initramfs -u -k all >/dev/null
' >&2 || die "configuring the image in a chroot failed"
(chroot "$ROOT" dpkg-query -W -f='${Package} ${Version}\n' || true) >"$WORK/packages.txt"
for m in dev sys proc; do umount "$ROOT/$m"; done

# ---------------------------------------------------------------- kernel, initrd, slimming
OUT="$WORK/out"
mkdir -p "$OUT"
VMLINUZ="$(ls "$ROOT"/boot/vmlinuz-* | head -1)"
INITRD="$(ls "$ROOT"/boot/initrd.img-* | head -1)"
[ -f "$VMLINUZ" ] && [ -f "$INITRD" ] || die "the image has no kernel or initrd in /boot"
cp "$VMLINUZ" "$OUT/vmlinuz"
cp "$INITRD" "$OUT/initrd.img"
cp "$WORK/vnguest" "$OUT/vnguest"
# docs, man pages, locales, apt's lists and downloaded packages: not used by the VM
rm -rf "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* "$ROOT"/usr/share/locale/* \
  "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/cache/apt/*.bin "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/log/*.log
find "$ROOT/usr/share/locale" -mindepth 1 -delete 2>/dev/null || true

# ---------------------------------------------------------------- ext4 in qcow2
truncate -s "$IMG_SIZE" "$WORK/root.raw"
mkfs.ext4 -q -F -L vnsnap-root -E root_owner=0:0 -d "$ROOT" "$WORK/root.raw" >&2
qemu-img convert -q -f raw -O qcow2 "$WORK/root.raw" "$OUT/disk.qcow2"
rm -f "$WORK/root.raw"
chmod 0444 "$OUT/disk.qcow2" # a base: VMs run on overlays of it

{
  echo "key $KEY"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(($(date +%s) - T0)) s"
  echo "suite $SUITE mirror $MIRROR"
  echo "kernel $(basename "$VMLINUZ" | sed 's/^vmlinuz-//') (the suite's; apt's candidate on the host: $KPKG)"
  echo "root filesystem ext4 $IMG_SIZE, $(du -sm "$ROOT" | cut -f1) MiB in use"
  echo "disk.qcow2 $(stat -c %s "$OUT/disk.qcow2") bytes"
  echo "vmlinuz $(stat -c %s "$OUT/vmlinuz") bytes"
  echo "initrd.img $(stat -c %s "$OUT/initrd.img") bytes"
  echo "packages $(wc -l <"$WORK/packages.txt")"
} >"$OUT/manifest.txt"
mv "$WORK/packages.txt" "$OUT/packages.txt"
touch "$OUT/complete"
rm -rf "$DIR"
mv "$OUT" "$DIR"
log "built $DIR: disk.qcow2 $(stat -c %s "$DIR/disk.qcow2") bytes, $(($(date +%s) - T0)) s"
# drop entries of other keys not built or used for 3 days (another checkout may still use a recent one)
find "$CACHE_ROOT" -mindepth 1 -maxdepth 1 -type d ! -name "$KEY" ! -name '.build-*' -mtime +3 -exec rm -rf {} + 2>/dev/null || true
print_paths "$DIR"
