#!/usr/bin/env bash
# Chaos soaks: a workload of puts, linearizable gets and compare-and-swaps under random faults,
# checked for linearizability and lost writes, beside watchers, lock users (a fenced counter) and
# lease holders, each checked as well. Each run starts its own cluster and prints the
# seed, the fault timeline, the ok/failed/unknown counts and the verdict; several runs end with
# a summary table.
#
#   scripts/chaos.sh [--duration S] [--seed N] [--faults kill,pause,partition,delay,membership,transfer,power]
#                    [--overlap]
#                    [--backend process|in-process|docker] [--runs N] [--clients N] [--keys N]
#
# Examples:
#   scripts/chaos.sh --duration 60 --runs 20            twenty one-minute runs, random seeds
#   scripts/chaos.sh --seed 424242 --faults partition   replay one scenario with one fault kind
#   scripts/chaos.sh --overlap --duration 60 --runs 20  up to two faults at once (a kill during a
#                                                       partition, a power cut beside a pause, ...)
#   scripts/chaos.sh --backend docker --duration 60     against the compose deployment
#
# Builds release binaries (KEEL_BIN_DIR overrides); the docker backend builds its image from
# them with scripts/build-image.sh. Exit status: 0 if every run passed, 1 if
# one failed (its node logs and report are kept under target/chaos/seed-N), 2 for bad flags.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
if [ -z "${KEEL_BIN_DIR:-}" ]; then
  echo "chaos.sh: building release binaries..." >&2
  cargo build --release -q -p keel-server -p keel-cli -p keel-testkit --bins
  export KEEL_BIN_DIR="$repo/target/release"
fi
exec "$KEEL_BIN_DIR/keel-chaos" "$@"
