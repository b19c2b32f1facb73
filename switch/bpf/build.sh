#!/bin/sh
# Compiles the in-kernel data path (vnsnap-dp.bpf.c) into build/bpf/vnsnap-dp.bpf.o at install
# (package.json "install", after the addon). Without clang or libbpf's headers it says so in one
# line and succeeds: the other NIC data paths need neither, and an agent asked for `tap-bpf`
# then refuses it with ERR_FAILED_PRECONDITION naming what is missing.
set -eu
cd "$(dirname "$0")/../.."
out=build/bpf
src=switch/bpf/vnsnap-dp.bpf.c
if ! command -v clang >/dev/null 2>&1 || [ ! -f /usr/include/bpf/bpf_helpers.h ]; then
  echo "vnsnap: clang or libbpf-dev missing: the in-kernel data path (nic tap-bpf) is not built" >&2
  exit 0
fi
mkdir -p "$out"
arch=$(uname -m)
clang -O2 -g -Wall -target bpf "-I/usr/include/${arch}-linux-gnu" -c "$src" -o "$out/vnsnap-dp.bpf.o.tmp"
mv "$out/vnsnap-dp.bpf.o.tmp" "$out/vnsnap-dp.bpf.o"
