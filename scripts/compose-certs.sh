#!/usr/bin/env bash
# Certificates for the TLS compose cluster (deploy/compose.tls.yaml), made with keelctl cert:
#   DIR/ca/ca.pem, ca-key.pem        the CA (kept if DIR already has one, so clients keep trusting it)
#   DIR/nodeN/cert.pem, key.pem      node N's certificate, for its client port and the peer port;
#                                    SANs nodeN (its peer address), 127.0.0.1 and localhost
#   DIR/nodeN/ca.pem                 a copy of the CA certificate (a node sees only its own dir)
#   DIR/client/cert.pem, key.pem     a client certificate for keelctl on the host
#
#   scripts/compose-certs.sh DIR      run again to re-issue the node and client certificates
#   KEEL_BIN_DIR=DIR scripts/compose-certs.sh ...   use the keelctl in DIR (default: a release build)
#
# keel runs as uid 65532 in the container and must read its key. Run as root, this gives the node
# directories to 65532 (keys stay 0600). Run as anyone else it cannot, so it makes the node
# directories readable by the caller's group and prints KEEL_COMPOSE_CERT_GID for compose to add
# that group to keel; with the usual one-user-per-group scheme nobody else gains access.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:?usage: scripts/compose-certs.sh DIR}"
bin="${KEEL_BIN_DIR:-$repo/target/release}"
if [ -z "${KEEL_BIN_DIR:-}" ]; then
  (cd "$repo" && cargo build --release -q -p keel-cli)
fi
ctl="$bin/keelctl"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"

if [ ! -f "$dir/ca/ca.pem" ]; then
  "$ctl" cert ca --out "$dir/ca" --name "keel compose CA" >/dev/null
fi
for n in 1 2 3; do
  "$ctl" cert issue --ca "$dir/ca" --name "member-$n" --san "node$n,127.0.0.1,localhost" --out "$dir/node$n" >/dev/null
  cp "$dir/ca/ca.pem" "$dir/node$n/ca.pem"
done
"$ctl" cert issue --ca "$dir/ca" --name client --client --out "$dir/client" >/dev/null

if [ "$(id -u)" = 0 ]; then
  for n in 1 2 3; do
    chown -R 65532:65532 "$dir/node$n"
    chmod 0700 "$dir/node$n"
  done
else
  for n in 1 2 3; do
    chmod 0750 "$dir/node$n"
    chmod 0640 "$dir/node$n/key.pem"
    chmod 0644 "$dir/node$n/cert.pem" "$dir/node$n/ca.pem"
  done
  # The files' group: the caller's primary group, unless DIR is setgid.
  echo "export KEEL_COMPOSE_CERT_GID=$(stat -c %g "$dir/node1/key.pem")"
fi
echo "compose-certs: certificates in $dir; connect with keelctl --cacert $dir/ca/ca.pem" >&2
