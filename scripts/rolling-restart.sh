#!/usr/bin/env bash
# Restart every node of the local cluster (scripts/cluster.sh) one at a time, followers first
# and the leader last (on SIGTERM a leader hands leadership to the most up-to-date voter), waiting
# for each node to rejoin and catch up before the next. Clients carry on throughout.
#
#   scripts/rolling-restart.sh
#
# Rolling upgrade: build the new release, then run this with KEEL_BIN_DIR pointing at the new
# binaries. Each node is stopped (old binary) and started again from KEEL_BIN_DIR (new binary),
# so the cluster runs mixed versions only one node at a time. The same environment variables as
# cluster.sh apply (KEEL_CLUSTER_DIR, KEEL_BASE_PORT).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cs="$repo/scripts/cluster.sh"
bin="${KEEL_BIN_DIR:-$repo/target/release}"
endpoints="$("$cs" endpoints)"
ctl() { "$bin/keelctl" --endpoints "$endpoints" --timeout 2s "$@"; }

# Prints "ID ROLE APPLIED" per reachable member, from keelctl status -o json.
members() {
  ctl status -o json | python3 -c '
import json, sys
for m in json.load(sys.stdin)["members"]:
    if m.get("reachable"):
        print(m["id"], m["role"], m["applied_index"])'
}

leader=$(members | awk '$2 == "leader" {print $1}')
[ -n "$leader" ] || { echo "rolling-restart: no leader; fix the cluster first" >&2; exit 1; }
order=$(members | awk -v l="$leader" '$1 != l {print $1}'; echo "$leader")
echo "rolling restart, in this order: $(echo $order)"
for n in $order; do
  "$cs" stop "$n"
  "$cs" start "$n"
  # Caught up: the node answers, and it has applied what the leader had applied before.
  deadline=$((SECONDS + 120))
  while :; do
    want=$(members | awk '$2 == "leader" {print $3}')
    have=$(members | awk -v n="$n" '$1 == n {print $3}')
    if [ -n "$want" ] && [ -n "$have" ] && [ "$have" -ge "$want" ]; then break; fi
    if [ $SECONDS -ge $deadline ]; then echo "rolling-restart: node $n did not catch up in 120 s" >&2; exit 1; fi
    sleep 0.2
  done
  echo "node $n is back and caught up (applied $have)"
done
echo "rolling restart done; leader now: $(members | awk '$2 == "leader" {print $1}')"
