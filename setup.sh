#!/usr/bin/env bash
# vnsnap quick start, step 1: install everything (system packages, npm dependencies, the native
# addon, the TypeScript build) and run the main job, the demo VNE.
#
#   sudo ./setup.sh             install, build, run the demo
#   sudo ./setup.sh --no-demo   install and build only (what CI does before `npm test`)
#
# Needs Debian 12 (bookworm) with Node.js >= 20.19 and root (namespaces, TAP devices).
set -euo pipefail
cd "$(dirname "$0")"

demo=1
for a in "$@"; do
  case "$a" in
    --no-demo) demo=0 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $a (try --help)" >&2; exit 2 ;;
  esac
done

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (apt-get, network namespaces and TAP devices need it): sudo ./setup.sh" >&2
  exit 2
fi

# System packages: a C toolchain for the addon and libzstd-dev (the store's zstd chunks, switch/native/zstd.c); clang, libbpf-dev and bpftool for the in-kernel data
# path (switch/bpf/, built at install, loaded by the agent for nic tap-bpf); iproute2/ping/ethtool for namespaced hosts;
# nftables (tunnel loss in the fault tests: this kernel has no sch_netem) and curl (agents' /debug/vms);
# iperf3, tcpdump and tshark for tests; openvswitch-switch for the benchmark's baseline;
# QEMU, busybox-static and cpio for the guest VMs (test/guest/build-guest.sh); debootstrap for the
# distro guest (test/guest/build-distro-guest.sh); Python's grpcio
# and protoc for the interop test (a gRPC stack other than grpc-js); rsvg-convert for SVG checks;
# openssl for the cluster certificates (coordinator/pki/vnsnap-pki.sh: the demo and tests make theirs);
# Ceph's mon, OSD and RADOS gateway for the S3 store tests (test/support/ceph-rgw.sh; their
# postinst scripts start nothing).
packages=(build-essential libzstd-dev clang libbpf-dev bpftool openssl python3 iproute2 iputils-ping ethtool nftables curl iperf3 tcpdump tshark openvswitch-switch qemu-system-x86 qemu-utils busybox-static cpio debootstrap python3-grpcio python3-grpc-tools protobuf-compiler librsvg2-bin ceph-mon ceph-osd radosgw ceph-common)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== installing system packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get -o DPkg::Lock::Timeout=600 update -q
  apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v node >/dev/null; then
  echo "setup.sh: Node.js >= 20.19 is required and not installed" >&2
  exit 2
fi
node -e 'const [a,b]=process.versions.node.split(".").map(Number); if (a<20||(a===20&&b<19)) { console.error("setup.sh: Node.js >= 20.19 is required, found "+process.versions.node); process.exit(2) }'

echo "== installing npm dependencies and building the native addon"
# `npm install` (not `npm ci`): npm 11 rejects this lock file in `ci` over optional platform
# packages of a lint dependency it never installs here; `install` keeps the locked versions.
# Native modules (ours, better-sqlite3) are compiled here; never fetch prebuilt binaries.
# package.json's allowScripts names the dependencies whose install scripts run (better-sqlite3's
# compile, protobufjs's version check): npm 11 only warns about the others, npm 12 skips them.
export npm_config_build_from_source=true
npm install --no-audit --no-fund
echo "== building"
npm run build --silent

if [ "$demo" -eq 1 ]; then
  echo "== running the demo VNE"
  exec node dist/test/demo/qemu-demo.js
fi
