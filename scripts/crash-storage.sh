#!/usr/bin/env bash
# Long crash run of the storage core: many more SIGKILL rounds than the test suite's 50.
#   scripts/crash-storage.sh [ROUNDS] [SEED]
# Each round kills a writer child at a random moment and checks, after reopening, that every
# acknowledged log entry and vote is present and that the state machine equals a clean apply.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-test-deps.sh
export KEEL_CRASH_ROUNDS="${1:-500}"
[ -n "${2:-}" ] && export KEEL_CRASH_SEED="$2"
exec cargo test --release -p keel-storage --test crash -- --nocapture --test-threads 1
