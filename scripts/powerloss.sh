#!/usr/bin/env bash
# Power cuts, many rounds: t31_power_loss at length. Every node's data directory is on a lazy
# filesystem (keel-testkit's lazyfs) that drops whatever was not fsynced when its power is cut;
# each round cuts one node, a majority or all three under writers, restarts them, and checks that
# every acknowledged write survived with its value and revision, that the replicas agree and that
# the next write gets the next revision. Prints one line per round and a summary.
#
#   scripts/powerloss.sh --rounds 200            # random seed (printed)
#   scripts/powerloss.sh --rounds 30 --seed N    # replay
#
# Needs FUSE (/dev/fuse, fuse3: scripts/install-test-deps.sh installs it).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
rounds=100 seed=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "powerloss.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$rounds" in ''|*[!0-9]*) echo "powerloss.sh: --rounds takes a number" >&2; exit 2 ;; esac
scripts/install-test-deps.sh
cargo build -q --workspace --bins
export KEEL_POWERLOSS_ROUNDS="$rounds"
[ -n "$seed" ] && export KEEL_POWERLOSS_SEED="$seed"
exec cargo test -q --test t31_power_loss -- --nocapture
