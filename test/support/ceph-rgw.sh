#!/usr/bin/env bash
# A real S3 object store for tests: a single-node Ceph cluster (one monitor, one memstore OSD,
# one RADOS Gateway) run as plain processes on 127.0.0.1, everything (config, keys, data, logs,
# pid files) in one temporary directory; nothing in /etc/ceph, no systemd.
#
#   ceph-rgw.sh start [PREFIX]   make /tmp/PREFIX.XXXXXX, start mon, osd, rgw, create the test user
#                                and bucket; print the environment (below). On any failure the
#                                processes are stopped and the directory removed.
#   ceph-rgw.sh env DIR          print the environment of a running cluster again
#   ceph-rgw.sh kill-rgw DIR     SIGKILL the gateway (fault tests: an S3 server dying mid-request)
#   ceph-rgw.sh start-rgw DIR    start the gateway again and wait until it answers
#   ceph-rgw.sh quota DIR BYTES|off   set (and enable) or disable the test bucket's size quota
#   ceph-rgw.sh stop DIR         stop rgw, then osd, then mon (the order that does not hang) and
#                                remove DIR, even when a process is already gone
#
# Printed environment (shell syntax): RGW_DIR, RGW_ENDPOINT (http://127.0.0.1:PORT), RGW_BUCKET,
# RGW_REGION, RGW_CREDENTIALS (a JSON file {"accessKeyId","secretAccessKey"}), RGW_COLD_START_MS.
# With RGW_ALSO_LISTEN=ADDR in the environment of `start` the gateway also listens on ADDR (same
# port), for clients in other network namespaces; the printed endpoint stays on 127.0.0.1.
# The keys are fixed test keys. Readiness is awaited by polling real requests, never by sleeping
# a fixed time. The OSD keeps data in RAM (memstore): restarting the OSD loses it, so fault tests
# kill only the gateway. Needs the packages ceph-mon ceph-osd radosgw ceph-common, and root.
set -euo pipefail

ACCESS_KEY=VNSNAPTESTACCESSKEY0
SECRET_KEY=vnsnapTestSecretKey0000000000000000000000
BUCKET=vnsnap-test
REGION=us-east-1
RGW_NAME=client.rgw.test
EMPTY_SHA256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855

die() { echo "ceph-rgw.sh: $*" >&2; exit 1; }

# A TCP port on 127.0.0.1 nobody listens on (random in 20000-39999, checked with ss).
free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 20000))
    if ! ss -Htln "sport = :$p" | grep -q .; then echo "$p"; return 0; fi
  done
  die "no free TCP port found"
}

now_ms() { date +%s%3N; }

# Poll "$@" until it succeeds, at most $1 seconds; $2 names what is awaited.
await() {
  local secs=$1 what=$2; shift 2
  local end=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$end" ] || die "timed out after ${secs}s waiting for $what"
    sleep 0.05
  done
}

# The gateway answers an anonymous ListAllMyBuckets with 200.
rgw_answers() { curl -sf -o /dev/null --max-time 2 "$(cat "$1/endpoint")/"; }

# A signed S3 request without a body, with the test user's keys (curl reads them from a file,
# not argv; RGW wants the payload hash header, which curl 7.88 does not add itself).
s3_curl() {
  local dir=$1; shift
  curl -sf --max-time 5 -K "$dir/curl-user" --aws-sigv4 "aws:amz:$REGION:s3" \
    -H "x-amz-content-sha256: $EMPTY_SHA256" "$@"
}

start_rgw() {
  local dir=$1
  radosgw -c "$dir/ceph.conf" -n "$RGW_NAME"
  await 60 "the RADOS gateway on $(cat "$dir/endpoint")" rgw_answers "$dir"
}

# Stop the daemon whose pid file is $2 (TERM, then KILL after 15 s); no error when it is gone.
stop_daemon() {
  local dir=$1 name=$2 pidf pid
  pidf="$dir/run/$name.pid"
  [ -f "$pidf" ] || return 0
  pid=$(cat "$pidf")
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || { rm -f "$pidf"; return 0; }
  local end=$(( $(date +%s) + 15 ))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$(date +%s)" -ge "$end" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
    sleep 0.05
  done
  rm -f "$pidf"
}

stop_all() {
  local dir=$1
  [ -d "$dir" ] || return 0
  [ -f "$dir/ceph.conf" ] || die "$dir holds no ceph.conf: not a cluster made by this script"
  stop_daemon "$dir" "$RGW_NAME"
  stop_daemon "$dir" osd.0
  stop_daemon "$dir" mon.a
  rm -rf "$dir"
}

print_env() {
  local dir=$1
  [ -f "$dir/env" ] || die "$dir holds no running cluster"
  cat "$dir/env"
}

write_conf() {
  local dir=$1 fsid=$2 monport=$3 rgwport=$4
  cat >"$dir/ceph.conf" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$monport]
public addr = 127.0.0.1
ms bind ipv6 = false
ms bind msgr1 = false
run dir = $dir/run
admin socket = $dir/run/\$name.asok
pid file = $dir/run/\$name.pid
log file = $dir/log/\$name.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
auth allow insecure global id reclaim = false

[mon]
mon data = $dir/mon/\$cluster-\$id
paxos propose interval = 0.05
paxos min wait = 0.01

[osd]
osd data = $dir/osd/\$cluster-\$id
keyring = $dir/osd/\$cluster-\$id/keyring
osd objectstore = memstore
memstore device bytes = 2147483648

[client]
keyring = $dir/admin.keyring

[$RGW_NAME]
keyring = $dir/rgw.keyring
rgw frontends = beast endpoint=127.0.0.1:$rgwport${RGW_ALSO_LISTEN:+ endpoint=$RGW_ALSO_LISTEN:$rgwport}
rgw data = $dir/rgw
rgw gc obj min wait = 30
rgw gc processor period = 30
EOF
}

start_all() {
  local prefix=${1:-vnsnap-rgw}
  [[ "$prefix" =~ ^[A-Za-z0-9._-]+$ ]] || die "bad prefix '$prefix'"
  for b in ceph-mon ceph-osd radosgw ceph ceph-authtool monmaptool radosgw-admin curl ss; do
    command -v "$b" >/dev/null || die "$b is not installed (packages: ceph-mon ceph-osd radosgw ceph-common curl iproute2)"
  done
  local t0 dir fsid monport rgwport osduuid osdkey
  t0=$(now_ms)
  dir=$(mktemp -d "/tmp/$prefix.XXXXXX")
  # From here on any failure stops what was started and removes the directory.
  # (RGW_KEEP_ON_FAILURE=1 keeps it for a post-mortem.)
  trap 'rc=$?; if [ "$rc" -ne 0 ] && [ -z "${RGW_KEEP_ON_FAILURE:-}" ]; then stop_all "'"$dir"'" || true; fi' EXIT
  trap 'exit 130' INT TERM
  mkdir -p "$dir/run" "$dir/log" "$dir/mon" "$dir/osd/ceph-0" "$dir/rgw"
  fsid=$(cat /proc/sys/kernel/random/uuid)
  monport=$(free_port)
  rgwport=$(free_port)
  [ "$monport" != "$rgwport" ] || rgwport=$(free_port)
  write_conf "$dir" "$fsid" "$monport" "$rgwport"
  local c=(-c "$dir/ceph.conf")
  echo "http://127.0.0.1:$rgwport" >"$dir/endpoint"

  # Monitor: its key and the admin key in one keyring, a one-monitor map, mkfs, start.
  ceph-authtool --create-keyring "$dir/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool --create-keyring "$dir/admin.keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
  ceph-authtool "$dir/mon.keyring" --import-keyring "$dir/admin.keyring" >/dev/null
  monmaptool --create --addv a "[v2:127.0.0.1:$monport]" --fsid "$fsid" "$dir/monmap" >/dev/null
  ceph-mon "${c[@]}" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/mon.keyring"
  ceph-mon "${c[@]}" -i a

  # OSD: register it with its key first (mkfs fetches its config from the monitor), then mkfs, start.
  osduuid=$(cat /proc/sys/kernel/random/uuid)
  osdkey=$(ceph-authtool --gen-print-key)
  local id
  id=$(echo "{\"cephx_secret\": \"$osdkey\"}" | ceph "${c[@]}" --connect-timeout 30 osd new "$osduuid" -i -)
  [ "$id" = 0 ] || die "expected OSD id 0, the monitor gave '$id'"
  ceph-authtool --create-keyring "$dir/osd/ceph-0/keyring" --name osd.0 --add-key "$osdkey" >/dev/null
  ceph-osd "${c[@]}" -i 0 --mkfs --osd-uuid "$osduuid" 2>>"$dir/log/osd-mkfs.log"
  ceph-osd "${c[@]}" -i 0 2>>"$dir/log/osd-start.log"

  # Gateway: its key, start, wait for a real answer; the test user with fixed keys; the bucket.
  ceph "${c[@]}" auth get-or-create "$RGW_NAME" mon 'allow rw' osd 'allow rwx' -o "$dir/rgw.keyring"
  start_rgw "$dir"
  radosgw-admin "${c[@]}" user create --uid=vnsnap-test --display-name="vnsnap tests" \
    --access-key="$ACCESS_KEY" --secret-key="$SECRET_KEY" >/dev/null
  printf 'user = "%s:%s"\n' "$ACCESS_KEY" "$SECRET_KEY" >"$dir/curl-user"
  chmod 600 "$dir/curl-user"
  await 30 "bucket $BUCKET to be created" s3_curl "$dir" -X PUT "$(cat "$dir/endpoint")/$BUCKET"
  printf '{"accessKeyId":"%s","secretAccessKey":"%s"}\n' "$ACCESS_KEY" "$SECRET_KEY" >"$dir/credentials.json"
  chmod 600 "$dir/credentials.json"
  cat >"$dir/env" <<EOF
RGW_DIR=$dir
RGW_ENDPOINT=$(cat "$dir/endpoint")
RGW_BUCKET=$BUCKET
RGW_REGION=$REGION
RGW_CREDENTIALS=$dir/credentials.json
RGW_COLD_START_MS=$(( $(now_ms) - t0 ))
EOF
  trap - EXIT INT TERM
  cat "$dir/env"
}

cmd=${1:-}
case "$cmd" in
  start) start_all "${2:-}" ;;
  env) print_env "${2:?usage: ceph-rgw.sh env DIR}" ;;
  stop) stop_all "${2:?usage: ceph-rgw.sh stop DIR}" ;;
  kill-rgw)
    dir=${2:?usage: ceph-rgw.sh kill-rgw DIR}
    kill -KILL "$(cat "$dir/run/$RGW_NAME.pid")"
    pid=$(cat "$dir/run/$RGW_NAME.pid")
    while kill -0 "$pid" 2>/dev/null; do sleep 0.02; done
    rm -f "$dir/run/$RGW_NAME.pid" ;;
  start-rgw) start_rgw "${2:?usage: ceph-rgw.sh start-rgw DIR}" ;;
  quota)
    dir=${2:?usage: ceph-rgw.sh quota DIR BYTES|off}
    if [ "${3:?usage: ceph-rgw.sh quota DIR BYTES|off}" = off ]; then
      radosgw-admin -c "$dir/ceph.conf" quota disable --quota-scope=bucket --bucket="$BUCKET"
    else
      radosgw-admin -c "$dir/ceph.conf" quota set --quota-scope=bucket --bucket="$BUCKET" --max-size="$3"
      radosgw-admin -c "$dir/ceph.conf" quota enable --quota-scope=bucket --bucket="$BUCKET"
    fi ;;
  *) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac
