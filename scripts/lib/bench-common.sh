# Shared by the benchmarks against etcd (bench-vs-etcd.sh, bench-scale-vs-etcd.sh); sourced, not
# run. The caller sets `repo` (the checkout, also its working directory), `bench_name` (its own
# name, for messages) and, before any step, `work` (a scratch directory with steps/ in it) and
# `results` (the JSON lines file), and declares `failed=()`.

# bench_needs: install what the benchmarks need from apt (as root) if it is missing:
# etcd-server, etcdctl, and protoc with its well-known types (keel-bench's `etcd` feature).
bench_needs() {
  local need=()
  command -v etcd >/dev/null || need+=(etcd-server)
  command -v etcdctl >/dev/null || need+=(etcd-client)
  command -v protoc >/dev/null || need+=(protobuf-compiler)
  [ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
  if [ ${#need[@]} -gt 0 ]; then
    echo "$bench_name: installing ${need[*]}" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

# bench_build: what bench_needs installs, then the release binaries; sets `bin` (this checkout's
# target/release) and `nodes` (where the keel members run from: KEEL_NODE_BIN_DIR, another
# build such as the release before a change, or `bin`; keel-bench and keelctl always come from
# this checkout).
bench_build() {
  bench_needs
  echo "$bench_name: building release binaries" >&2
  cargo build --release -q -p keel-server -p keel-cli
  cargo build --release -q -p keel-bench --features etcd
  bin="$repo/target/release"
  nodes="${KEEL_NODE_BIN_DIR:-$bin}"
}

# step NAME CMD...: run CMD with its output in steps/NAME.log; its last line (keel-bench's JSON
# result) is echoed. A failure is reported with the log's end and recorded; the run goes on.
step() {
  local step_name=$1 log="$work/steps/$1.log" rc=0
  shift
  "$@" >"$log" 2>&1 || rc=$?
  if [ $rc -ne 0 ]; then
    echo "$bench_name: FAILED: $step_name (exit $rc); the end of $log:" >&2
    tail -n 5 "$log" | sed 's/^/    /' >&2
    failed+=("$step_name (exit $rc)")
    return 1
  fi
  tail -n 1 "$log" >&2
}

# record NAME POINT [REP]: the JSON line of step NAME, tagged with POINT (and REP), into the
# results.
record() {
  local step_name=$1 point=$2 rep=${3:-}
  local tag="\"point\":\"$point\","
  [ -n "$rep" ] && tag="$tag\"rep\":$rep,"
  tail -n 1 "$work/steps/$step_name.log" | grep '^{' | sed "s/^{/{$tag/" >>"$results" || {
    echo "$bench_name: FAILED: $step_name printed no result line" >&2
    failed+=("$step_name (no result)")
  }
}

# bench_finish STATUS: the end of an EXIT trap, once the caller has stopped its keel clusters:
# stop every etcd member still running, then keep $work if anything failed, else delete it.
bench_finish() {
  local status=$1
  for p in $(cat "$work"/etcd*.pid 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  if [ ${#failed[@]} -gt 0 ] || [ "$status" -ne 0 ]; then
    echo "$bench_name: logs kept in $work (steps/*.log, keel*/node*.log, etcd*.log)" >&2
  else
    rm -rf "$work"
  fi
}

# write_etcd_starter N: $work/start-etcd.sh M starts member M (1..N) of an N-member etcd, clients
# on 127.0.0.1:M2379, peers on M2380, data in $work/etcdM. A script file rather than a function,
# so keel-bench's restart command (run by sh) can call it.
write_etcd_starter() {
  local initial
  initial="$(seq 1 "$1" | sed 's|.*|e&=http://127.0.0.1:&2380|' | paste -sd,)"
  cat >"$work/start-etcd.sh" <<EOS
#!/usr/bin/env bash
n=\$1
etcd --name "e\$n" --data-dir "$work/etcd\$n" \\
  --listen-client-urls "http://127.0.0.1:\${n}2379" --advertise-client-urls "http://127.0.0.1:\${n}2379" \\
  --listen-peer-urls "http://127.0.0.1:\${n}2380" --initial-advertise-peer-urls "http://127.0.0.1:\${n}2380" \\
  --initial-cluster "$initial" --initial-cluster-state new --initial-cluster-token keel-bench \\
  >>"$work/etcd\$n.log" 2>&1 &
echo \$! >"$work/etcd\$n.pid"
EOS
  chmod +x "$work/start-etcd.sh"
}

# etcd_up BIN ENDPOINTS: wait until the etcd at ENDPOINTS takes a write (30 s at most).
etcd_up() {
  local deadline=$((SECONDS + 30))
  until "$1/keel-bench" --system etcd --endpoints "$2" put --ops 1 --duration 2s; do
    [ $SECONDS -ge $deadline ] && { echo "etcd did not answer within 30 s; see $work/etcd*.log"; return 1; }
    sleep 0.3
  done
}
