#!/usr/bin/env bash
# Two builds of keel side by side (before/after a change), measured by the same keel-bench, on
# fresh three-node clusters: each repetition starts a new cluster for A, measures every point,
# stops it, then does the same for B; odd repetitions run A first, even ones B first, so neither
# always pays for a warmer or busier machine. Prints one table of medians and B/A ratios, with
# the CPU time the three members spent per operation (user + system, from /proc): on a shared,
# noisy machine it moves less than throughput does, and it is what a 2-core box runs out of.
#
#   scripts/bench-ab.sh A_BIN_DIR B_BIN_DIR [POINT ...]
#       A_BIN_DIR, B_BIN_DIR: directories holding `keel` and `keelctl` of each build
#       POINT: WORKLOAD:CLIENTS, WORKLOAD one of put, txn, get, sget, mixed (90% gets);
#              default: put:1 put:64 put:256
#   KEEL_AB_SECS=10 KEEL_AB_REPS=3   seconds per point, repetitions
#
# keel-bench comes from this checkout's release build (built here if missing). Only 127.0.0.1;
# ports from 19000. Everything it starts is stopped on exit; logs go to a temporary directory
# that is kept and named if a step fails.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
if [ $# -lt 2 ] || [ ! -x "$1/keel" ] || [ ! -x "$2/keel" ]; then
  echo "usage: $0 A_BIN_DIR B_BIN_DIR [WORKLOAD:CLIENTS ...]   (each BIN_DIR holds keel and keelctl)" >&2
  exit 2
fi
a_dir=$(cd "$1" && pwd) b_dir=$(cd "$2" && pwd)
shift 2
points=("$@")
[ ${#points[@]} -eq 0 ] && points=(put:1 put:64 put:256)
for p in "${points[@]}"; do
  case ${p%%:*} in put | txn | get | sget | mixed) ;; *) echo "unknown workload in $p" >&2; exit 2 ;; esac
  [[ ${p#*:} =~ ^[0-9]+$ ]] || { echo "bad client count in $p" >&2; exit 2; }
done
secs=${KEEL_AB_SECS:-10} reps=${KEEL_AB_REPS:-3}
[ -x target/release/keel-bench ] || cargo build --release -q -p keel-bench
bench="$repo/target/release/keel-bench"

work="$(mktemp -d /tmp/keel-ab.XXXXXX)"
results="$work/results.jsonl"
touch "$results"
status=0
cluster() { KEEL_CLUSTER_DIR="$work/cluster" KEEL_BASE_PORT=19000 KEEL_BIN_DIR="$1" scripts/cluster.sh "${@:2}"; }
cleanup() {
  cluster "$a_dir" down >/dev/null 2>&1 || true
  if [ $status -ne 0 ]; then echo "bench-ab: logs kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
endpoints=127.0.0.1:19001,127.0.0.1:19002,127.0.0.1:19003
# cpu_ticks: user + system clock ticks the three members have used so far.
cpu_ticks() {
  local total=0 pid f
  for pid in $(cat "$work"/cluster/node{1,2,3}.pid); do
    read -r -a f <"/proc/$pid/stat"
    total=$((total + f[13] + f[14]))
  done
  echo "$total"
}
hz=$(getconf CLK_TCK)

# run BUILD_NAME BIN_DIR REP: a fresh cluster of that build, every point measured on it.
run() {
  local name=$1 dir=$2 rep=$3 p w c args log
  cluster "$dir" purge >/dev/null 2>&1 || true
  if ! cluster "$dir" up >"$work/up-$name-$rep.log" 2>&1; then
    echo "bench-ab: cluster $name did not start; see $work/up-$name-$rep.log" >&2
    status=1
    return
  fi
  for p in "${points[@]}"; do
    w=${p%%:*} c=${p#*:}
    case $w in
      put) args=(put) ;;
      txn) args=(txn) ;;
      get) args=(get --keys 10000) ;;
      sget) args=(get --keys 10000 --serializable) ;;
      mixed) args=(mixed --read-percent 90 --keys 10000) ;;
    esac
    if [[ $w == *get || $w == mixed ]] && [ ! -f "$work/preloaded-$name-$rep" ]; then
      "$bench" --endpoints "$endpoints" put --keys 10000 --clients 64 --ops 10000 --duration 60s \
        >"$work/preload-$name-$rep.log" 2>&1 && touch "$work/preloaded-$name-$rep"
    fi
    log="$work/$name-$w-c$c-rep$rep.log"
    local before after
    before=$(cpu_ticks)
    if "$bench" --endpoints "$endpoints" "${args[@]}" --clients "$c" --duration "${secs}s" >"$log" 2>&1; then
      after=$(cpu_ticks)
      tail -n 1 "$log" | grep '^{' |
        sed "s/^{/{\"build\":\"$name\",\"point\":\"$p\",\"cpu_seconds\":$(((after - before) * 1000 / hz))e-3,/" >>"$results"
      echo "bench-ab: $name $p rep $rep: $(grep -o '[0-9]* ops/s' "$log" | head -n 1)" >&2
    else
      echo "bench-ab: FAILED: $name $p rep $rep; see $log" >&2
      status=1
    fi
  done
  cluster "$dir" down >/dev/null 2>&1 || true
}

for r in $(seq "$reps"); do
  if [ $((r % 2)) -eq 1 ]; then run A "$a_dir" "$r"; run B "$b_dir" "$r"; else run B "$b_dir" "$r"; run A "$a_dir" "$r"; fi
done

echo "A: $a_dir"
echo "B: $b_dir"
python3 - "$results" "${points[@]}" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(build, point, field):
    v = [r[field] for r in rows if r["build"] == build and r["point"] == point and r.get(field) is not None]
    return statistics.median(v) if v else None
f = lambda x, d=0: "-" if x is None else f"{x:,.{d}f}"
print("| workload | clients | A ops/s | B ops/s | B/A | A p50 ms | B p50 ms | A p99 ms | B p99 ms "
      "| A CPU µs/op | B CPU µs/op | B/A CPU |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
def cpu(build, point):
    v = [r["cpu_seconds"] * 1e6 / r["ops"] for r in rows if r["build"] == build and r["point"] == point and r.get("ops")]
    return statistics.median(v) if v else None
for p in sys.argv[2:]:
    w, c = p.split(":")
    a, b = med("A", p, "ops_per_sec"), med("B", p, "ops_per_sec")
    ratio = f"{b / a:.2f}x" if a and b else "-"
    ca, cb = cpu("A", p), cpu("B", p)
    cratio = f"{cb / ca:.2f}x" if ca and cb else "-"
    print(f"| {w} | {c} | {f(a)} | {f(b)} | {ratio} | {f(med('A', p, 'p50_ms'), 2)} | {f(med('B', p, 'p50_ms'), 2)} "
          f"| {f(med('A', p, 'p99_ms'), 2)} | {f(med('B', p, 'p99_ms'), 2)} | {f(ca)} | {f(cb)} | {cratio} |")
EOF
exit $status
