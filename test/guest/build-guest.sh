#!/usr/bin/env bash
# Build the vnsnap test guest: Debian's cloud kernel + a busybox initramfs holding the virtio
# modules, /init (test/guest/init.sh), the workload program vnguest (test/guest/src/vnguest.c)
# and Debian's iperf3 (the host's /usr/bin/iperf3 with the shared libraries ldd names and the
# dynamic loader, at the same paths), for the network benchmark.
#
# Usage (as root):
#   test/guest/build-guest.sh                build if needed, then print the paths
#   test/guest/build-guest.sh --print-paths  print the paths if the current inputs are cached
#                                            (exit 3 and print nothing if not)
#   test/guest/build-guest.sh --force        rebuild even if cached
#
# Output on stdout (only this; logs go to stderr), ready for `eval`:
#   VNSNAP_GUEST_KERNEL=/var/cache/vnsnap/guest/<key>/vmlinuz
#   VNSNAP_GUEST_INITRD=/var/cache/vnsnap/guest/<key>/initrd.img
#   VNSNAP_GUEST_TOOL=/var/cache/vnsnap/guest/<key>/vnguest      (the same program, for the host:
#                                                                 `vnguest query IP:7070`, `disk-scan`)
#
# Cache: ${VNSNAP_CACHE:-/var/cache/vnsnap}/guest/<key>/, key = sha256 of this script, init.sh,
# the C sources and the versions of the packages that go in (kernel, busybox-static, libc6-dev,
# gcc, iperf3 and the packages of its libraries). Any change to one of them builds a new entry; entries are complete or absent (built in a
# temporary directory, renamed into place), and concurrent builds are serialised with flock.
#
# The kernel .deb is fetched with `apt-get download` and unpacked with `dpkg-deb -x` into a
# temporary directory, not installed: installing linux-image-*-cloud-amd64 pulls initramfs-tools
# and udev onto the host and runs their hooks (update-initramfs writes into /boot), for nothing
# this guest uses. Unpacking needs no maintainer scripts and leaves the host untouched.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="${VNSNAP_CACHE:-/var/cache/vnsnap}/guest"
KERNEL_META=linux-image-cloud-amd64
# What the guest must be able to load; their dependencies are added (and ordered) from modinfo.
WANT_MODULES=(virtio_pci virtio_net virtio_blk virtio_console)
HOST_PKGS=(busybox-static gcc libc6-dev cpio kmod gzip iperf3)
# Packages whose files are copied into the initramfs as they are (iperf3 and its libraries).
COPIED_PKGS=(iperf3 libiperf0 libssl3 libsctp1 libc6)

MODE=build
for a in "$@"; do
  case "$a" in
    --print-paths) MODE=print ;;
    --force) MODE=force ;;
    -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "build-guest.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done

log() { echo "build-guest: $*" >&2; }
die() { echo "build-guest: error: $*" >&2; exit 1; }

APT=(apt-get -q -o DPkg::Lock::Timeout=600)
APT_UPDATED=0
apt_update_once() {
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    "${APT[@]}" update >&2 || die "apt-get update failed"
    APT_UPDATED=1
  fi
}

installed_version() { dpkg-query -W -f='${db:Status-Status} ${Version}\n' "$1" 2>/dev/null | awk '$1=="installed"{print $2}'; }
candidate_version() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/{print $2}' | grep -v '^(none)$' || true; }
# The version that goes in: the installed one, else the one apt would install.
pkg_version() {
  local v
  v="$(installed_version "$1")"
  [ -n "$v" ] || v="$(candidate_version "$1")"
  echo "$v"
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
    echo "format 1"
    sha256sum "$HERE/build-guest.sh" "$HERE/init.sh" "$HERE"/src/*.c | awk '{print $1}'
    echo "kernel $kpkg $(candidate_version "$kpkg")"
    for p in busybox-static libc6-dev gcc "${COPIED_PKGS[@]}"; do echo "$p $(pkg_version "$p")"; done
    echo "modules ${WANT_MODULES[*]}"
  } | sha256sum | cut -c1-16
}

print_paths() {
  echo "VNSNAP_GUEST_KERNEL=$1/vmlinuz"
  echo "VNSNAP_GUEST_INITRD=$1/initrd.img"
  echo "VNSNAP_GUEST_TOOL=$1/vnguest"
}

cached() { [ -f "$1/complete" ] && [ -f "$1/vmlinuz" ] && [ -f "$1/initrd.img" ] && [ -x "$1/vnguest" ]; }

# ---------------------------------------------------------------- --print-paths: never builds
if [ "$MODE" = print ]; then
  KPKG="$(kernel_pkg)"
  [ -n "$KPKG" ] || { log "cannot resolve $KERNEL_META (apt lists missing?): not built"; exit 3; }
  DIR="$CACHE_ROOT/$(input_key "$KPKG")"
  cached "$DIR" || { log "not built for the current inputs ($DIR)"; exit 3; }
  print_paths "$DIR"
  exit 0
fi

[ "$(id -u)" = 0 ] || die "run as root (apt-get, mknod)"

# ---------------------------------------------------------------- host packages
missing=()
for p in "${HOST_PKGS[@]}"; do [ -n "$(installed_version "$p")" ] || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  for p in "${missing[@]}"; do [ -n "$(candidate_version "$p")" ] || apt_update_once; done
  log "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y --no-install-recommends "${missing[@]}" >&2 ||
    { apt_update_once; DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y --no-install-recommends "${missing[@]}" >&2; } ||
    die "cannot install ${missing[*]}"
fi
KPKG="$(kernel_pkg)"
if [ -z "$KPKG" ]; then
  apt_update_once
  KPKG="$(kernel_pkg)"
fi
[ -n "$KPKG" ] || die "cannot resolve $KERNEL_META to a kernel package"

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
trap 'rm -rf "$WORK"' EXIT
log "building $KEY in $WORK (kernel $KPKG)"

# ---------------------------------------------------------------- kernel: download + unpack
mkdir -p "$WORK/deb" "$WORK/kernel"
chmod 755 "$WORK" "$WORK/deb"
# (as root into a root-owned directory apt warns that the download is "unsandboxed": harmless)
download() { (cd "$WORK/deb" && "${APT[@]}" download "$KPKG" >"$WORK/download.log" 2>&1); }
download || { apt_update_once; download; } || { cat "$WORK/download.log" >&2; die "apt-get download $KPKG failed"; }
dpkg-deb -x "$WORK"/deb/*.deb "$WORK/kernel"
VMLINUZ="$(ls "$WORK"/kernel/boot/vmlinuz-* | head -1)"
[ -f "$VMLINUZ" ] || die "no vmlinuz in $KPKG"
KVER="$(basename "$VMLINUZ" | sed 's/^vmlinuz-//')"
MODDIR="$WORK/kernel/lib/modules/$KVER"
[ -d "$MODDIR" ] || die "no modules for $KVER"

# ---------------------------------------------------------------- initramfs tree
ROOT="$WORK/root"
mkdir -p "$ROOT"/{bin,sbin,dev,proc,sys,tmp,run,etc,lib/modules}
cp /bin/busybox "$ROOT/bin/busybox"
{ ldd "$ROOT/bin/busybox" 2>&1 || true; } | grep -q 'not a dynamic' || die "/bin/busybox is not static (busybox-static not installed?)"
for applet in $("$ROOT/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$ROOT/bin/$applet"
done
install -m 0755 "$HERE/init.sh" "$ROOT/init"
mknod -m 600 "$ROOT/dev/console" c 5 1
mknod -m 666 "$ROOT/dev/null" c 1 3
echo "root:x:0:0:root:/:/bin/sh" >"$ROOT/etc/passwd"

# modules: resolve dependencies with modinfo, load order = dependencies first
declare -A MODFILE=() SEEN=()
ORDER=()
while IFS= read -r f; do
  b="$(basename "$f")"
  b="${b%%.ko*}"
  MODFILE["$b"]="$f"
  MODFILE["${b//-/_}"]="$f"
done < <(find "$MODDIR/kernel" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')
is_builtin() { grep -qE "/$1\.ko$" "$MODDIR/modules.builtin" 2>/dev/null; }
add_module() {
  local m="${1//-/_}"
  [ -n "${SEEN[$m]:-}" ] && return 0
  SEEN["$m"]=1
  if [ -z "${MODFILE[$m]:-}" ]; then
    is_builtin "$m" && return 0
    die "module $m not found in $KPKG"
  fi
  local deps d
  deps="$(modinfo -F depends "${MODFILE[$m]}" | tr ',' ' ')"
  for d in $deps; do add_module "$d"; done
  ORDER+=("$m")
}
for m in "${WANT_MODULES[@]}"; do add_module "$m"; done
for m in "${ORDER[@]}"; do
  f="${MODFILE[$m]}"
  case "$f" in
    *.ko.xz) xz -dc "$f" >"$ROOT/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$f" >"$ROOT/lib/modules/$m.ko" ;;
    *.ko.gz) gzip -dc "$f" >"$ROOT/lib/modules/$m.ko" ;;
    *) cp "$f" "$ROOT/lib/modules/$m.ko" ;;
  esac
done
printf '%s\n' "${ORDER[@]}" >"$ROOT/lib/modules/load-order"
log "modules: ${ORDER[*]}"

# the workload program, static
gcc -O2 -static -pthread -Wall -Wextra -o "$WORK/vnguest" "$HERE"/src/vnguest.c >&2
strip "$WORK/vnguest"
install -m 0755 "$WORK/vnguest" "$ROOT/bin/vnguest"

# iperf3, dynamically linked: the binary, every library ldd resolves and the loader, each at the
# path ldd prints (/init starts the server only when vnsnap.iperf=1 asks).
IPERF=/usr/bin/iperf3
[ -x "$IPERF" ] || die "$IPERF missing (package iperf3)"
copy_as_is() { mkdir -p "$ROOT$(dirname "$1")" && cp -L "$1" "$ROOT$1"; }
copy_as_is "$IPERF"
while read -r lib; do
  [ -n "$lib" ] && copy_as_is "$lib"
done < <(ldd "$IPERF" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
[ -e "$ROOT/lib64/ld-linux-x86-64.so.2" ] || die "ldd $IPERF named no loader"
log "iperf3: $(ldd "$IPERF" | awk '$2 == "=>" {print $1}' | tr '\n' ' ')"

# pack: reproducible newc cpio (sorted, owner root, fixed mtimes), gzip without name/time
find "$ROOT" -exec touch -h -d @0 {} +
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) | gzip -9n >"$WORK/initrd.img"

OUT="$WORK/out"
mkdir -p "$OUT"
cp "$VMLINUZ" "$OUT/vmlinuz"
mv "$WORK/initrd.img" "$OUT/initrd.img"
cp "$WORK/vnguest" "$OUT/vnguest"
{
  echo "key $KEY"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(($(date +%s) - T0)) s"
  echo "kernel $KPKG $(candidate_version "$KPKG") ($KVER)"
  for p in busybox-static libc6-dev gcc "${COPIED_PKGS[@]}"; do echo "$p $(pkg_version "$p")"; done
  echo "modules ${ORDER[*]}"
  echo "vmlinuz $(stat -c %s "$OUT/vmlinuz") bytes"
  echo "initrd.img $(stat -c %s "$OUT/initrd.img") bytes"
} >"$OUT/manifest.txt"
touch "$OUT/complete"
rm -rf "$DIR"
mv "$OUT" "$DIR"
log "built $DIR: initrd $(stat -c %s "$DIR/initrd.img") bytes, vmlinuz $(stat -c %s "$DIR/vmlinuz") bytes, $(($(date +%s) - T0)) s"
# drop entries of other keys not built or used for 3 days (another checkout may still use a recent one)
find "$CACHE_ROOT" -mindepth 1 -maxdepth 1 -type d ! -name "$KEY" ! -name '.build-*' -mtime +3 -exec rm -rf {} + 2>/dev/null || true
print_paths "$DIR"
