#!/usr/bin/env bash
# vnsnap-pki.sh: make a vnsnap cluster's certificates with openssl (docs/security.md, "Control
# plane: TLS, identities and roles"; docs/operations.md).
#
#   vnsnap-pki.sh [-d DIR] ca [--days N]                        the cluster CA: ca.pem, ca-key.pem
#   vnsnap-pki.sh [-d DIR] agent ID [--ip A]... [--dns N]...    agent-ID.pem, agent-ID-key.pem
#   vnsnap-pki.sh [-d DIR] coordinator NAME [--ip A]... [--dns N]...
#                                                               coordinator-NAME.pem, coordinator-NAME-key.pem
#   vnsnap-pki.sh [-d DIR] client NAME --role viewer|operator   client-NAME.pem, client-NAME-key.pem
#
# Every leaf certificate is signed by DIR/ca.pem (made first with `ca`), valid --days N (default
# 825; the CA 3650), with an EC P-256 key written 0600. The identities vnsnap reads:
#   agent ID       subject CN=ID, OU=agent; SAN DNS:ID plus each --dns and --ip; clientAuth
#                  and serverAuth (the destination's QEMU serves a live migration's streams
#                  with it). The agent may register only as ID.
#   coordinator    subject CN=NAME, OU=coordinator; SAN DNS:NAME, DNS:localhost, IP:127.0.0.1,
#                  plus each --dns and --ip (every name and address clients and agents dial);
#                  serverAuth.
#   client NAME    subject CN=NAME, OU=ROLE (viewer or operator); clientAuth.
# Options for tests: --days N on any leaf, --expired (valid 2020-01-01..2020-01-02 only).
# DIR defaults to $VNSNAP_PKI_DIR, else ./pki. Existing files are never overwritten.
set -euo pipefail
umask 077

die() { echo "vnsnap-pki: $*" >&2; exit 2; }
usage() { sed -n '4,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

case "${1:-}" in -h|--help|help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
dir=${VNSNAP_PKI_DIR:-./pki}
if [ "${1:-}" = "-d" ]; then [ $# -ge 2 ] || usage; dir=$2; shift 2; fi
[ $# -ge 1 ] || usage
cmd=$1; shift
case "$cmd" in ca|agent|coordinator|client) ;; *) die "unknown command \"$cmd\" (ca, agent, coordinator or client; --help explains)" ;; esac
command -v openssl >/dev/null || die "openssl is not installed (apt-get install openssl)"
mkdir -p "$dir"

name="" role="" days="" expired=0 ips=() dnss=()
if [ "$cmd" != ca ]; then
  [ $# -ge 1 ] && [ "${1#-}" = "$1" ] || die "$cmd: a name is required"
  name=$1; shift
  [[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$ ]] || die "$cmd: \"$name\" is not a valid name (letters, digits, . _ -)"
fi
while [ $# -gt 0 ]; do
  case "$1" in
    --ip) [ $# -ge 2 ] || die "--ip needs an address"; ips+=("$2"); shift 2 ;;
    --dns) [ $# -ge 2 ] || die "--dns needs a name"; dnss+=("$2"); shift 2 ;;
    --role) [ $# -ge 2 ] || die "--role needs viewer or operator"; role=$2; shift 2 ;;
    --days) [ $# -ge 2 ] && [[ "$2" =~ ^[0-9]+$ ]] || die "--days needs a number"; days=$2; shift 2 ;;
    --expired) expired=1; shift ;;
    *) die "$cmd: unknown option $1" ;;
  esac
done

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; chmod 600 "$1"; }
refuse_existing() { for f in "$@"; do [ ! -e "$f" ] || die "$f exists (remove it to make a new one)"; done; }

# sign OUT KEY SUBJECT EXTENSIONS: a leaf certificate for KEY signed by the CA (openssl ca, so
# the validity can be set exactly).
sign() {
  local out=$1 key=$2 subj=$3 ext=$4 work
  [ -f "$dir/ca.pem" ] && [ -f "$dir/ca-key.pem" ] || die "no CA in $dir: run \`vnsnap-pki.sh -d $dir ca\` first"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  : > "$work/index.txt"
  cat > "$work/ca.cnf" <<CNF
[ca]
default_ca = vnsnap
[vnsnap]
database = $work/index.txt
new_certs_dir = $work
serial = $work/serial
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
[any]
commonName = supplied
organizationalUnitName = optional
[leaf]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
$ext
CNF
  openssl rand -hex 16 > "$work/serial"
  openssl req -new -key "$key" -subj "$subj" -out "$work/req.csr"
  local validity=(-days "${days:-825}")
  [ "$expired" = 1 ] && validity=(-startdate 20200101000000Z -enddate 20200102000000Z)
  openssl ca -batch -notext -config "$work/ca.cnf" -extensions leaf -cert "$dir/ca.pem" -keyfile "$dir/ca-key.pem" \
    "${validity[@]}" -in "$work/req.csr" -out "$out" 2>"$work/err" || { cat "$work/err" >&2; die "openssl ca failed"; }
  chmod 644 "$out"
}

san() {
  local s="DNS:$1"; shift
  for d in "${dnss[@]}"; do s="$s,DNS:$d"; done
  for a in "${ips[@]}"; do s="$s,IP:$a"; done
  echo "subjectAltName = $s"
}

case "$cmd" in
  ca)
    refuse_existing "$dir/ca.pem" "$dir/ca-key.pem"
    newkey "$dir/ca-key.pem"
    openssl req -x509 -new -key "$dir/ca-key.pem" -sha256 -days "${days:-3650}" -subj "/CN=vnsnap cluster CA $(openssl rand -hex 4)" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$dir/ca.pem"
    chmod 644 "$dir/ca.pem"
    echo "$dir/ca.pem" ;;
  agent)
    refuse_existing "$dir/agent-$name.pem" "$dir/agent-$name-key.pem"
    newkey "$dir/agent-$name-key.pem"
    sign "$dir/agent-$name.pem" "$dir/agent-$name-key.pem" "/OU=agent/CN=$name" "extendedKeyUsage = clientAuth, serverAuth
$(san "$name")"
    echo "$dir/agent-$name.pem" ;;
  coordinator)
    refuse_existing "$dir/coordinator-$name.pem" "$dir/coordinator-$name-key.pem"
    newkey "$dir/coordinator-$name-key.pem"
    dnss+=(localhost); ips+=(127.0.0.1)
    sign "$dir/coordinator-$name.pem" "$dir/coordinator-$name-key.pem" "/OU=coordinator/CN=$name" "extendedKeyUsage = serverAuth
$(san "$name")"
    echo "$dir/coordinator-$name.pem" ;;
  client)
    case "$role" in viewer|operator) ;; *) die "client: --role viewer|operator is required" ;; esac
    refuse_existing "$dir/client-$name.pem" "$dir/client-$name-key.pem"
    newkey "$dir/client-$name-key.pem"
    sign "$dir/client-$name.pem" "$dir/client-$name-key.pem" "/OU=$role/CN=$name" "extendedKeyUsage = clientAuth"
    echo "$dir/client-$name.pem" ;;
  *) usage ;;
esac
