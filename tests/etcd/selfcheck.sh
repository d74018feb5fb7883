#!/usr/bin/env bash
# Proves the real-client compatibility tests on real etcd 3.4: starts a throwaway 3-member etcd
# cluster on 127.0.0.1 (free ports, data under /tmp), runs tests/etcd/etcdctl.sh and
# tests/etcd/etcd3_test.py against all endpoints, then again through one follower only, and stops
# the cluster. A test that fails here is wrong about etcd, not keel.
#
#   scripts/install-test-deps.sh && tests/etcd/selfcheck.sh
#
# Exit 0 when every run passed; 1 otherwise. Members' logs are printed (tail) on failure.
set -u
cd "$(dirname "$0")/../.."
. scripts/install-test-deps.sh --vars # KEEL_TEST_VENV
PYBIN="$KEEL_TEST_VENV/bin/python"
export ETCDCTL_API=3

for t in etcd etcdctl; do
  if ! command -v "$t" >/dev/null 2>&1; then
    echo "SKIPPED - $t not installed (run scripts/install-test-deps.sh)"
    exit 0
  fi
done

DIR=$(mktemp -d /tmp/keel-etcd-selfcheck.XXXXXX)
PIDS=()
stop() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do
    # bounded: etcd stops in well under a second; SIGKILL after ~5 s
    for _ in $(seq 1 25); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  PIDS=()
}
trap 'stop; rm -rf "$DIR"' EXIT

# Six free ports, all held open until chosen so that none repeats.
read -r -a PORTS < <(python3 -c 'import socket
ss=[socket.socket() for _ in range(6)]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')
CLUSTER=""
for i in 0 1 2; do CLUSTER+="m$i=http://127.0.0.1:${PORTS[i * 2 + 1]},"; done
CLUSTER=${CLUSTER%,}
ENDPOINTS_ALL=""
for i in 0 1 2; do
  cport=${PORTS[i * 2]} pport=${PORTS[i * 2 + 1]}
  ENDPOINTS_ALL+="127.0.0.1:$cport,"
  # Slower heartbeat/election than the defaults: a slow shared machine must not see spurious
  # elections, which would break the follower-only run's premise.
  etcd --name "m$i" --data-dir "$DIR/m$i" \
    --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "$CLUSTER" --initial-cluster-state new --initial-cluster-token "selfcheck-$$" \
    --heartbeat-interval 200 --election-timeout 2000 >"$DIR/m$i.log" 2>&1 &
  PIDS+=($!)
done
ENDPOINTS_ALL=${ENDPOINTS_ALL%,}
echo "# selfcheck: etcd $(etcd --version | awk '/etcd Version/{print $3}') members on $ENDPOINTS_ALL (pids ${PIDS[*]})"

healthy=0
for _ in $(seq 1 60); do
  if etcdctl --endpoints="$ENDPOINTS_ALL" --command-timeout=5s endpoint health >/dev/null 2>&1; then
    healthy=1
    break
  fi
  sleep 0.5
done
if [ "$healthy" != 1 ]; then
  echo "FAIL - etcd cluster did not become healthy in 30 s"
  tail -n 20 "$DIR"/m*.log
  exit 1
fi

# A follower's client endpoint, chosen afresh before each follower run (move-leader moves the leader).
follower() {
  etcdctl --endpoints="$ENDPOINTS_ALL" --command-timeout=10s endpoint status -w json 2>/dev/null | python3 -c '
import json,sys
d=json.load(sys.stdin)
print([e["Endpoint"] for e in d if e["Status"]["leader"] not in (0, e["Status"]["header"]["member_id"])][0])'
}

SUMMARY=()
FAILED=0
# run_test <label> <command...>: bounded, output kept in $DIR and echoed
run_test() {
  local label=$1 rc
  shift
  echo "# ==== $label"
  timeout 600 "$@" 2>&1 | tee "$DIR/out"
  rc=${PIPESTATUS[0]}
  SUMMARY+=("$label: exit $rc, $(grep -c '^ok - ' "$DIR/out") ok, $(grep -c '^FAIL - ' "$DIR/out") FAIL$(grep -q '^SKIPPED' "$DIR/out" && echo ', SKIPPED')")
  [ "$rc" -eq 0 ] || FAILED=1
}

run_test "etcdctl.sh, all endpoints" env ENDPOINTS="$ENDPOINTS_ALL" tests/etcd/etcdctl.sh
if [ -x "$PYBIN" ]; then
  run_test "etcd3_test.py, all endpoints" env ENDPOINTS="$ENDPOINTS_ALL" "$PYBIN" tests/etcd/etcd3_test.py
else
  SUMMARY+=("etcd3_test.py: SKIPPED, no venv at $KEEL_TEST_VENV")
fi
F=$(follower)
run_test "etcdctl.sh, FOLLOWER_ONLY=1 via $F" env FOLLOWER_ONLY=1 ENDPOINTS="$F" tests/etcd/etcdctl.sh
F=$(follower)
if [ -x "$PYBIN" ]; then
  run_test "etcd3_test.py, follower only via $F" env ENDPOINTS="$F" "$PYBIN" tests/etcd/etcd3_test.py
fi

echo "# ==== selfcheck summary"
printf '#   %s\n' "${SUMMARY[@]}"
if [ "$FAILED" != 0 ]; then
  for i in 0 1 2; do
    echo "# ---- m$i.log (tail)"
    tail -n 15 "$DIR/m$i.log"
  done
  echo "# selfcheck: FAILED"
  exit 1
fi
echo "# selfcheck: all passed"
