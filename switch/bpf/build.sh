#!/bin/sh
# Compiles the in-kernel data path (vnsnap-dp.bpf.c) into build/bpf/vnsnap-dp.bpf.o at install
# (package.json "install", after the addon). Without clang or libbpf's headers it says so in one
# line and succeeds: the other NIC data paths need neither, and an agent asked for `tap-bpf`
# then refuses it with ERR_FAILED_PRECONDITION naming what is missing.
#   build.sh [OUT [CLANG_FLAG...]]   another object (OUT, an absolute path) built with extra flags,
#                                     e.g. the A/B bench's -DVN_FIXED_TUNNEL=<VNI> build
set -eu
cd "$(dirname "$0")/../.."
obj=${1:-build/bpf/vnsnap-dp.bpf.o}
[ $# -gt 0 ] && shift
src=switch/bpf/vnsnap-dp.bpf.c
if ! command -v clang >/dev/null 2>&1 || [ ! -f /usr/include/bpf/bpf_helpers.h ]; then
  echo "vnsnap: clang or libbpf-dev missing: the in-kernel data path (nic tap-bpf) is not built" >&2
  exit 0
fi
mkdir -p "$(dirname "$obj")"
arch=$(uname -m)
clang -O2 -g -Wall -target bpf "-I/usr/include/${arch}-linux-gnu" "$@" -c "$src" -o "$obj.tmp"
mv "$obj.tmp" "$obj"
