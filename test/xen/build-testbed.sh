#!/usr/bin/env bash
# Build the nested-Xen test bed (see docs/xen.md): a dom0 disk image with Debian's Xen 4.17 and
# what the vnsnap agent needs, the Xen hypervisor / dom0 kernel / dom0 initrd for QEMU's -kernel,
# and a PV guest (the dom0's own generic kernel + a busybox initramfs with xen-netfront and the
# workload program vnguest).
#
# Usage (as root):
#   test/xen/build-testbed.sh                build if needed, then print the paths
#   test/xen/build-testbed.sh --print-paths  print the paths if cached (exit 3, print nothing if not)
#   test/xen/build-testbed.sh --force        rebuild the image stage (not the debootstrap stage)
#
# Output on stdout (only this; logs go to stderr), ready for `eval`:
#   VNXEN_DIR=<cache>/xen/img-<key>        holding:
#     xen.elf      the hypervisor (zcat of /boot/xen-4.17-amd64.gz: QEMU -kernel loads it)
#     vmlinuz      dom0 kernel (linux-image-amd64, CONFIG_XEN_DOM0), also the PV guest's kernel
#     initrd.img   dom0 initrd (initramfs-tools, from the rootfs)
#     dom0.img     dom0 root filesystem (ext4, raw)
#     guest-initrd.img  the PV guest's busybox initramfs (xen-netfront, xen-blkfront, vnguest)
#     vnguest      the same program built for the host (stream checks)
#
# Two cache stages under ${VNSNAP_CACHE:-/var/cache/vnsnap}/xen/:
#   rootfs-<key1>/  debootstrap output (~3 min). key1 = suite, mirror, package list, ROOTFS_FORMAT.
#                   Editing the rest of this script does not rebuild it.
#   img-<key2>/     the images above (~20 s). key2 = key1 + sha256 of this script, dom0-init.sh,
#                   test/guest/init.sh, vnguest.c, the node binary and the dom0 kernel version.
# The project itself (dist/, node_modules/) is NOT in the image: the test shares the checkout into
# dom0 over 9p (mounted at /vnsnap there), so rebuilding the project never rebuilds the image. The node binary
# is copied in (its hash is in key2). Entries are complete or absent (built in a temporary
# directory, renamed into place); concurrent builds are serialised with flock.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
CACHE_ROOT="${VNSNAP_CACHE:-/var/cache/vnsnap}/xen"
SUITE=bookworm
ROOTFS_FORMAT=1
DOM0_PKGS=(xen-utils-4.17 xen-hypervisor-4.17-amd64 linux-image-amd64 kmod iproute2 busybox
  bridge-utils procps initramfs-tools libstdc++6 ethtool lvm2 e2fsprogs util-linux)
GUEST_MODULES=(xen-netfront xen-blkfront)
HOST_PKGS=(debootstrap busybox-static gcc libc6-dev cpio kmod gzip e2fsprogs)
IMG_SIZE=3G

MODE=build
for a in "$@"; do
  case "$a" in
    --print-paths) MODE=print ;;
    --force) MODE=force ;;
    -h | --help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "build-testbed.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done

log() { echo "build-testbed: $*" >&2; }
die() { echo "build-testbed: error: $*" >&2; exit 1; }

APT=(apt-get -q -o DPkg::Lock::Timeout=600)
installed_version() { dpkg-query -W -f='${db:Status-Status} ${Version}\n' "$1" 2>/dev/null | awk '$1=="installed"{print $2}'; }

# The debootstrap mirror: the first deb.debian.org-style URI configured for the main archive.
mirror() {
  local m
  m="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -v '^\s*#' | grep -oE 'https?://[^ ]+' | grep -v -- '-security' | head -1 || true)"
  echo "${m:-http://deb.debian.org/debian}"
}

rootfs_key() {
  { echo "rootfs $ROOTFS_FORMAT $SUITE $(mirror)"; printf '%s\n' "${DOM0_PKGS[@]}"; } | sha256sum | cut -c1-16
}
img_key() {
  {
    echo "img 1 $1"
    sha256sum "$HERE/build-testbed.sh" "$HERE/dom0-init.sh" "$REPO/test/guest/init.sh" "$REPO/test/guest/src/vnguest.c" | awk '{print $1}'
    sha256sum "$(readlink -f "$(command -v node)")" | awk '{print $1}'
    echo "size $IMG_SIZE modules ${GUEST_MODULES[*]}"
  } | sha256sum | cut -c1-16
}

print_paths() { echo "VNXEN_DIR=$1"; }
img_cached() { [ -f "$1/complete" ]; }

if [ "$MODE" = print ]; then
  R="$CACHE_ROOT/rootfs-$(rootfs_key)"
  [ -f "$R/complete" ] || { log "rootfs not built ($R)"; exit 3; }
  D="$CACHE_ROOT/img-$(img_key "$(rootfs_key)")"
  img_cached "$D" || { log "image not built for the current inputs ($D)"; exit 3; }
  print_paths "$D"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, mknod)"

missing=()
for p in "${HOST_PKGS[@]}"; do [ -n "$(installed_version "$p")" ] || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y --no-install-recommends "${missing[@]}" >&2 ||
    { "${APT[@]}" update >&2; DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y --no-install-recommends "${missing[@]}" >&2; } ||
    die "cannot install ${missing[*]}"
fi
command -v node >/dev/null || die "node not found"

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.lock"
flock -w 1800 9 || die "timed out waiting for another build (lock $CACHE_ROOT/.lock)"

# ---------------------------------------------------------------- stage 1: debootstrap
RKEY="$(rootfs_key)"
RDIR="$CACHE_ROOT/rootfs-$RKEY"
if [ ! -f "$RDIR/complete" ]; then
  T0=$(date +%s)
  RWORK="$CACHE_ROOT/.rootfs-build-$RKEY"
  rm -rf "$RWORK"
  mkdir -p "$RWORK"
  log "debootstrap $SUITE from $(mirror) into $RWORK (about 3 minutes)"
  inc="$(IFS=,; echo "${DOM0_PKGS[*]}")"
  debootstrap --variant=minbase --include="$inc" "$SUITE" "$RWORK/root" "$(mirror)" >"$RWORK/debootstrap.log" 2>&1 ||
    { tail -30 "$RWORK/debootstrap.log" >&2; die "debootstrap failed (log $RWORK/debootstrap.log)"; }
  # debootstrap may leave the chroot's /proc etc. mounted on failure paths; make sure nothing is
  for m in proc sys dev/pts dev; do umount "$RWORK/root/$m" 2>/dev/null || true; done
  ls "$RWORK"/root/boot/xen-4.17-amd64.gz "$RWORK"/root/boot/vmlinuz-* "$RWORK"/root/boot/initrd.img-* >/dev/null ||
    die "rootfs lacks xen, vmlinuz or initrd"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(($(date +%s) - T0)) s" >"$RWORK/manifest.txt"
  (chroot "$RWORK/root" dpkg-query -W -f='${Package} ${Version}\n' || true) >"$RWORK/packages.txt"
  touch "$RWORK/complete"
  rm -rf "$RDIR"
  mv "$RWORK" "$RDIR"
  log "rootfs built: $RDIR ($(($(date +%s) - T0)) s)"
fi

# ---------------------------------------------------------------- stage 2: images
IKEY="$(img_key "$RKEY")"
DIR="$CACHE_ROOT/img-$IKEY"
if [ "$MODE" != force ] && img_cached "$DIR"; then
  log "cached: $DIR"
  touch "$DIR"
  print_paths "$DIR"
  exit 0
fi
T0=$(date +%s)
WORK="$(mktemp -d "$CACHE_ROOT/.img-build-XXXXXX")"
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
OUT="$WORK/out"
mkdir -p "$OUT"
R="$RDIR/root"
KVER="$(ls "$R"/boot/vmlinuz-* | head -1 | sed 's/.*vmlinuz-//')"
cp "$R/boot/vmlinuz-$KVER" "$OUT/vmlinuz"
cp "$R/boot/initrd.img-$KVER" "$OUT/initrd.img"
zcat "$R/boot/xen-4.17-amd64.gz" >"$OUT/xen.elf"

# dom0 root: the rootfs plus our init, the node binary, mount points; built in an overlay copy so
# the cached rootfs stays pristine (cp -a of ~600 MB takes a few seconds).
log "assembling dom0 root ($KVER)"
D0="$WORK/dom0"
cp -a "$R" "$D0"
install -m 0755 "$HERE/dom0-init.sh" "$D0/sbin/vnxen-init"
install -m 0755 "$(readlink -f "$(command -v node)")" "$D0/usr/local/bin/node"
mkdir -p "$D0/vnsnap" "$D0/vnxen" "$D0/vnxen-img" "$D0/proc/xen" "$D0/var/lib/vnsnap" "$D0/var/log/xen"
echo vnxen-dom0 >"$D0/etc/hostname"
# no systemd here: our init starts what is needed; make sure the xen init script does not try
# to talk to systemd and that no xendomains auto-start happens
rm -f "$D0/etc/rc*.d/"*xendomains* 2>/dev/null || true
log "mkfs.ext4 -d ($IMG_SIZE)"
mkfs.ext4 -q -F -L vnxen-dom0 -E root_owner=0:0 -d "$D0" "$OUT/dom0.img" "$IMG_SIZE" >&2
rm -rf "$D0"

# ---------------------------------------------------------------- PV guest initramfs
log "guest initramfs"
MODDIR="$R/lib/modules/$KVER"
GR="$WORK/guest"
mkdir -p "$GR"/{bin,sbin,dev,proc,sys,tmp,run,etc,lib/modules}
cp /bin/busybox "$GR/bin/busybox"
for applet in $("$GR/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$GR/bin/$applet"
done
install -m 0755 "$REPO/test/guest/init.sh" "$GR/init"  # the QEMU guest's /init works unchanged: it loads lib/modules/load-order
mknod -m 600 "$GR/dev/console" c 5 1
mknod -m 666 "$GR/dev/null" c 1 3
echo "root:x:0:0:root:/:/bin/sh" >"$GR/etc/passwd"
declare -A MODFILE=() SEEN=()
ORDER=()
while IFS= read -r f; do
  b="$(basename "$f")"
  b="${b%%.ko*}"
  MODFILE["${b//-/_}"]="$f"
done < <(find "$MODDIR/kernel" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst')
add_module() {
  local m="${1//-/_}" d
  [ -n "${SEEN[$m]:-}" ] && return 0
  SEEN["$m"]=1
  if [ -z "${MODFILE[$m]:-}" ]; then
    grep -qE "/${1}\.ko$|/${m}\.ko$" "$MODDIR/modules.builtin" 2>/dev/null && return 0
    die "module $m not found"
  fi
  for d in $(modinfo -F depends "${MODFILE[$m]}" | tr ',' ' '); do add_module "$d"; done
  ORDER+=("$m")
}
for m in "${GUEST_MODULES[@]}"; do add_module "$m"; done
for m in "${ORDER[@]}"; do
  f="${MODFILE[$m]}"
  case "$f" in
    *.ko.xz) xz -dc "$f" >"$GR/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$f" >"$GR/lib/modules/$m.ko" ;;
    *) cp "$f" "$GR/lib/modules/$m.ko" ;;
  esac
done
printf '%s\n' "${ORDER[@]}" >"$GR/lib/modules/load-order"
gcc -O2 -static -pthread -Wall -Wextra -o "$OUT/vnguest" "$REPO/test/guest/src/vnguest.c" >&2
strip "$OUT/vnguest"
install -m 0755 "$OUT/vnguest" "$GR/bin/vnguest"
find "$GR" -exec touch -h -d @0 {} +
(cd "$GR" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) | gzip -9n >"$OUT/guest-initrd.img"

{
  echo "key $IKEY rootfs $RKEY"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(($(date +%s) - T0)) s"
  echo "kernel $KVER"
  echo "guest modules ${ORDER[*]}"
  grep -E '^(xen-utils-4.17|xen-hypervisor-4.17-amd64|linux-image-amd64) ' "$RDIR/packages.txt" || true
  echo "node $(node -v)"
} >"$OUT/manifest.txt"
touch "$OUT/complete"
rm -rf "$DIR"
mv "$OUT" "$DIR"
log "built $DIR in $(($(date +%s) - T0)) s"
find "$CACHE_ROOT" -mindepth 1 -maxdepth 1 -type d -name 'img-*' ! -name "img-$IKEY" -mtime +3 -exec rm -rf {} + 2>/dev/null || true
print_paths "$DIR"
