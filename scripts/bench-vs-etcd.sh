#!/usr/bin/env bash
# keel and etcd side by side, measured by the same code (keel-bench), on this machine: keel
# through its own API and through its etcd API (keel-etcd: the etcd-client code that drives etcd),
# and etcd; a
# three-node keel (scripts/cluster.sh) and a three-member etcd, both on 127.0.0.1 with fresh data
# directories, one after the other (never at the same time). 8-byte keys, 256-byte values.
#
#   scripts/bench-vs-etcd.sh           put C=1,64,256; txn (compare + put) C=64; linearizable and
#                                      serializable get C=1,64; mixed 90% get / 10% put C=64;
#                                      lease churn C=1,64; lock hand-off C=16; watch fan-out
#                                      (1,000 watchers, 1,000 puts/s); failover x5; 10 s per
#                                      point, 3 repetitions (about 25 min)
#   scripts/bench-vs-etcd.sh --quick   put C=1 and C=256, linearizable get C=64, lease churn C=64,
#                                      lock C=16, watch fan-out, failover x3; 4 s per point, 3
#                                      repetitions (about 6 min)
#   scripts/bench-vs-etcd.sh --coord   only lease churn C=1,64, lock C=2,16 and watch fan-out;
#                                      10 s per point, 3 repetitions (about 8 min)
#   scripts/bench-vs-etcd.sh --api     put C=1,64,256, linearizable and serializable get C=64: what
#                                      keel's etcd API costs over its own; 10 s per point, 4
#                                      repetitions (about 12 min)
#   KEEL_NODE_BIN_DIR=DIR ...          run the keel members from DIR (keel, keelctl of another build)
#
# Lease churn: grant a lease, put a key with it, revoke it (one op = the three calls). Lock
# hand-off: all clients lock one lock, each with its own lease, and unlock at once (one op = the
# wait plus the unlock). Watch fan-out: 1,000 watchers of one prefix on a follower, while puts
# under the prefix arrive at 1,000/s; delivery latency from each put's send to each event's
# arrival, events/s over all watchers, and the serving member's RSS.
#
# Prints the tables (medians of the repetitions, keel/etcd ratios) and, as its last line, one
# JSON object (keel_put_c1, etcd_put_c1, keel_put_c256, ..., keel_failover_ms_median, ...).
# Installs etcd-server, protobuf-compiler and libprotobuf-dev from apt if missing (root).
# Everything it starts runs under one work directory and is stopped on exit.
#
# A step that fails (a measurement, a cluster start, a failover run) is named on stderr with its
# exit status and the end of its log, and the run goes on: the tables print whatever was
# measured, then the failed steps; the exit status is 1 if any step failed, and the work
# directory (every step's log, the members' logs) is then kept and named.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"

mode=full
case "${1:-}" in
  --quick) mode=quick ;;
  --coord) mode=coord ;;
  --api) mode=api ;;
  "") ;;
  *) echo "usage: $0 [--quick|--coord|--api]" >&2; exit 2 ;;
esac
case $mode in
  quick)
    secs=4 reps=3 rounds=3
    matrix=("put 1" "put 256" "get 64" "lease 64" "lock 16" "watch 1000") ;;
  api)
    # An even number of reps, so each API runs first as often as second (see bench below).
    secs=10 reps=4 rounds=0
    matrix=("put 1" "put 64" "put 256" "get 64" "sget 64") ;;
  coord)
    secs=10 reps=3 rounds=0
    matrix=("lease 1" "lease 64" "lock 2" "lock 16" "watch 1000") ;;
  full)
    secs=10 reps=3 rounds=5
    matrix=("put 1" "put 64" "put 256" "txn 64" "get 1" "get 64" "sget 1" "sget 64" "mixed 64" "lease 1"
      "lease 64" "lock 16" "watch 1000") ;;
esac

bench_name=bench-vs-etcd
# shellcheck source=scripts/lib/bench-common.sh
. scripts/lib/bench-common.sh
bench_build

work="$(mktemp -d /tmp/keel-bench.XXXXXX)"
mkdir -p "$work/steps"
failed=()
results="$work/results.jsonl"
cleanup() {
  local status=$?
  KEEL_CLUSTER_DIR="$work/keel" KEEL_BASE_PORT=17000 KEEL_BIN_DIR="$nodes" scripts/cluster.sh down >/dev/null 2>&1 || true
  bench_finish "$status"
}
trap cleanup EXIT
# Anything outside a step that fails ends the run: say where, rather than stop without a word.
trap 'echo "bench-vs-etcd: line $LINENO: \"$BASH_COMMAND\" failed" >&2' ERR

keel_endpoints="127.0.0.1:17001,127.0.0.1:17002,127.0.0.1:17003"
etcd_endpoints="127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379"
write_etcd_starter 3

# pids SYSTEM: the members' process ids, in the order of the endpoints (for the watch's RSS).
pids() {
  case $1 in
    keel | keel-etcd) cat "$work"/keel/node{1,2,3}.pid | paste -sd, ;;
    etcd) cat "$work"/etcd{1,2,3}.pid | paste -sd, ;;
  esac
}
# bench SYSTEMS ENDPOINTS WORKLOAD CLIENTS: one point, $reps times (CLIENTS: watchers, for watch).
# SYSTEMS is one system or several, comma-separated, which take turns rep by rep, in the listed
# order in odd reps and reversed in even ones (A B, B A, ...): a cluster slows as its data grows,
# and a system that always ran second would pay for it (the first --api runs, keel then keel-etcd
# in every rep, put the etcd API 14% behind at 256 clients; in A B B A order the gap was 1.5%).
bench() {
  local systems=$1 endpoints=$2 workload=$3 clients=$4 system order
  for r in $(seq "$reps"); do
    order=${systems//,/ }
    if [ $((r % 2)) -eq 0 ]; then order=$(echo "$order" | tr ' ' '\n' | tac | paste -sd' '); fi
    for system in $order; do
      local args=()
      case $workload in
        put) args=(put --clients "$clients") ;;
        get) args=(get --keys 10000 --clients "$clients") ;;
        sget) args=(get --keys 10000 --serializable --clients "$clients") ;;
        txn) args=(txn --clients "$clients") ;;
        mixed) args=(mixed --read-percent 90 --keys 10000 --clients "$clients") ;;
        lease) args=(lease --clients "$clients") ;;
        lock) args=(lock --clients "$clients") ;;
        watch) args=(watch --watchers "$clients" --rate 1000 --pids "$(pids "$system")") ;;
      esac
      if [[ $workload == *get || $workload == mixed ]] && [ ! -f "$work/$system.preloaded" ]; then
        step "$system-preload" "$bin/keel-bench" --system "$system" --endpoints "$endpoints" put --keys 10000 \
          --clients 64 --ops 10000 --duration 60s && touch "$work/$system.preloaded"
      fi
      local name="$system-$workload-c$clients-rep$r"
      if step "$name" "$bin/keel-bench" --system "$system" --endpoints "$endpoints" "${args[@]}" \
        --duration "${secs}s"; then
        record "$name" "$workload-c$clients" "$r"
      fi
    done
  done
}

touch "$results"
keel_cluster() { KEEL_CLUSTER_DIR="$work/keel" KEEL_BASE_PORT=17000 KEEL_BIN_DIR="$nodes" scripts/cluster.sh "$@"; }

echo "== keel" >&2
if step keel-up keel_cluster up; then
  # keel through its own API and through its etcd API (keel-etcd: the etcd-client code that
  # drives etcd below), taking turns rep by rep, so both see the same machine and cluster.
  for point in "${matrix[@]}"; do bench keel,keel-etcd "$keel_endpoints" $point; done
  if [ "$rounds" -gt 0 ] && step keel-failover "$bin/keel-bench" --system keel --endpoints "$keel_endpoints" \
    failover --rounds "$rounds" \
    --restart-cmd "KEEL_CLUSTER_DIR=$work/keel KEEL_BASE_PORT=17000 KEEL_BIN_DIR=$nodes $repo/scripts/cluster.sh start {id} >/dev/null"; then
    record keel-failover failover
  fi
fi
step keel-down keel_cluster down || true

echo "== etcd $(etcd --version | head -n 1)" >&2
for n in 1 2 3; do "$work/start-etcd.sh" "$n"; done
if step etcd-up etcd_up "$bin" "$etcd_endpoints"; then
  for point in "${matrix[@]}"; do bench etcd "$etcd_endpoints" $point; done
  if [ "$rounds" -gt 0 ] && step etcd-failover "$bin/keel-bench" --system etcd --endpoints "$etcd_endpoints" \
    failover --rounds "$rounds" --restart-cmd "$work/start-etcd.sh {id}"; then
    record etcd-failover failover
  fi
fi

python3 - "$results" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(system, point, field):
    v = [r[field] for r in rows if r["system"] == system and r["point"] == point and r.get(field) is not None]
    return statistics.median(v) if v else None
points = []
for r in rows:
    if r["point"] != "failover" and not r["point"].startswith("watch") and r["point"] not in points:
        points.append(r["point"])
names = {"put": "put", "txn": "txn (compare + put)", "get": "get linearizable", "sget": "get serializable",
         "mixed": "mixed 90% get / 10% put",
         "lease": "lease churn (grant+put+revoke)", "lock": "lock hand-off (lock+unlock)"}
f = lambda x, d=0: "-" if x is None else f"{x:,.{d}f}"
print("| workload | clients | keel ops/s | keel p50 ms | keel p99 ms | keel via etcd API ops/s | via etcd API / keel API "
      "| etcd ops/s | etcd p50 ms | etcd p99 ms | keel/etcd | keel via etcd API / etcd |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for p in points:
    w, c = p.rsplit("-c", 1)
    k, ke, e = med("keel", p, "ops_per_sec"), med("keel-etcd", p, "ops_per_sec"), med("etcd", p, "ops_per_sec")
    r = lambda a, b: f"{a / b:.2f}x" if a and b else "-"
    print(f"| {names.get(w, w)} | {c} | {f(k)} | {f(med('keel', p, 'p50_ms'), 2)} | {f(med('keel', p, 'p99_ms'), 2)} "
          f"| {f(ke)} | {r(ke, k)} | {f(e)} | {f(med('etcd', p, 'p50_ms'), 2)} | {f(med('etcd', p, 'p99_ms'), 2)} "
          f"| {r(k, e)} | {r(ke, e)} |")
kf, ef = med("keel", "failover", "median_ms"), med("etcd", "failover", "median_ms")
if kf or ef:
    ms = lambda x: "-" if x is None else f"{x:.0f} ms median"
    faster = f"{ef / kf:.2f}x faster" if kf and ef else "-"
    print(f"| failover (kill -9 leader → first write) | - | {ms(kf)} | | | | | {ms(ef)} | | | {faster} | |")
for p in sorted({r["point"] for r in rows if r["point"].startswith("watch")}):
    watchers = p.rsplit("-c", 1)[1]
    print()
    print(f"Watch fan-out: {watchers} watchers of one prefix on a follower, puts under it at 1,000/s "
          "(medians of the repetitions; lower is better except events/s)")
    print()
    print("| measure | keel | keel via etcd API | etcd | keel/etcd |")
    print("|---|---|---|---|---|")
    for field, label, d in [("p50_ms", "delivery latency p50, ms", 2), ("p99_ms", "delivery latency p99, ms", 2),
                            ("events_per_sec", "events delivered per second", 0), ("puts_per_sec", "puts per second achieved", 0),
                            ("missing", "events missing", 0), ("setup_seconds", "time to create the watchers, s", 2),
                            ("rss_mib_before", "serving member RSS before the watchers, MiB", 1),
                            ("rss_mib_watching", "serving member RSS with the watchers, MiB", 1),
                            ("rss_mib_peak", "serving member RSS peak under the load, MiB", 1)]:
        k, ke, e = med("keel", p, field), med("keel-etcd", p, field), med("etcd", p, field)
        ratio = f"{k / e:.2f}x" if k and e else "-"
        print(f"| {label} | {f(k, d)} | {f(ke, d)} | {f(e, d)} | {ratio} |")
summary = {}
for p in points:
    w, c = p.rsplit("-c", 1)
    key = {"get": "lin_get", "sget": "ser_get"}.get(w, w) + "_c" + c
    for s in ("keel", "keel-etcd", "etcd"):
        v = med(s, p, "ops_per_sec")
        if v is not None:
            summary[f"{s.replace('-', '_')}_{key}"] = round(v)
for p in {r["point"] for r in rows if r["point"].startswith("watch")}:
    for s in ("keel", "keel-etcd", "etcd"):
        for field in ("p50_ms", "p99_ms", "events_per_sec", "rss_mib_peak"):
            v = med(s, p, field)
            if v is not None:
                summary[f"{s.replace('-', '_')}_{p.replace('-', '_')}_{field}"] = v
summary["keel_failover_ms_median"] = kf
summary["etcd_failover_ms_median"] = ef
print(json.dumps(summary))
EOF
if [ ${#failed[@]} -gt 0 ]; then
  echo "bench-vs-etcd: ${#failed[@]} step(s) failed; the tables above hold only what was measured:" >&2
  printf '    %s\n' "${failed[@]}" >&2
  exit 1
fi
