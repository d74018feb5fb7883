#!/usr/bin/env bash
# Memory of a keel node holding many keys: a fresh three-node cluster (scripts/cluster.sh, ports
# 18001-18003, its own temporary directory) is filled with KEYS distinct keys of 8 bytes with
# 256-byte values by keel-bench (64 clients, every key written once), then each node's resident
# memory (VmRSS now, VmHWM peak), keys and database size are printed, and last one JSON line.
#
#   scripts/bench-memory.sh [KEYS]        KEYS defaults to 1000000 (about 2.5 minutes here)
#
# Node settings come from the environment as usual, e.g. KEEL_CACHE_MB=64 (sled's page cache,
# 256 MiB by default). Everything it starts is stopped on exit.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
keys="${1:-1000000}"
case "$keys" in '' | *[!0-9]*) echo "bench-memory: KEYS must be a number, got '$keys'" >&2; exit 2 ;; esac

cargo build --release -q -p keel-server -p keel-cli -p keel-bench
bin="$repo/target/release"
work="$(mktemp -d /tmp/keel-memory.XXXXXX)"
export KEEL_CLUSTER_DIR="$work" KEEL_BASE_PORT=18000 KEEL_BIN_DIR="$bin"
cleanup() {
  scripts/cluster.sh down >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

scripts/cluster.sh up >/dev/null
endpoints="$(scripts/cluster.sh endpoints)"
started=$(date +%s)
"$bin/keel-bench" --endpoints "$endpoints" get --keys "$keys" --preload --clients 1 --ops 1 >/dev/null
loaded=$(( $(date +%s) - started ))

status="$("$bin/keelctl" --endpoints "$endpoints" status -o json)"
json="{\"keys\":$keys,\"load_seconds\":$loaded,\"cache_mb\":${KEEL_CACHE_MB:-256}"
printf '%-5s %10s %10s %10s %12s\n' node rss_mib peak_mib keys db_mib
for n in 1 2 3; do
  pid="$(cat "$work/node$n.pid")"
  rss=$(awk '/^VmRSS/ {print int($2 / 1024)}' "/proc/$pid/status")
  hwm=$(awk '/^VmHWM/ {print int($2 / 1024)}' "/proc/$pid/status")
  read -r nkeys db < <(python3 -c '
import json, sys
for m in json.loads(sys.argv[1])["members"]:
    if m["id"] == int(sys.argv[2]):
        print(m["key_count"], m["db_size"] // 2**20)
' "$status" "$n")
  printf '%-5s %10s %10s %10s %12s\n' "$n" "$rss" "$hwm" "$nkeys" "$db"
  json="$json,\"node${n}_rss_mib\":$rss,\"node${n}_peak_mib\":$hwm,\"node${n}_keys\":$nkeys,\"node${n}_db_mib\":$db"
done
echo "loaded $keys keys in ${loaded}s"
echo "$json}"
