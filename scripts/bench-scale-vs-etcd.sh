#!/usr/bin/env bash
# keel and etcd at scale, side by side on this machine: the points of the performance goals that
# bench-vs-etcd.sh does not cover. Each system in turn (never both at once), fresh data
# directories, everything on 127.0.0.1, 8-byte keys and 256-byte values, measured by keel-bench.
#
#   scripts/bench-scale-vs-etcd.sh [KEYS]   KEYS defaults to 1000000 (about 15 minutes here)
#
# 1. Memory, disk and catch-up, one three-member cluster per system: member 3 is stopped
#    (SIGTERM), KEYS distinct keys are written through members 1 and 2 (64 clients, each key
#    once, so KEYS writes), then a marker key. Members 1 and 2 are measured (resident memory,
#    VmRSS; disk, du of the data directory), then member 3 is started and timed from its start
#    until a serializable get of the marker on it answers (a snapshot and the log since, for
#    both systems: etcd 3.4 snapshots every 100,000 entries, keel by its own policy).
# 2. Five members: put at 256 clients, KEEL_SCALE_SECS seconds (10) a point, KEEL_SCALE_REPS
#    repetitions (3), medians.
#
# Prints a table (keel, etcd, keel/etcd) and, as its last line, one JSON object. Installs etcd,
# etcdctl and protoc from apt if missing (root). KEEL_NODE_BIN_DIR=DIR runs the keel members
# from another build.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
bench_name=bench-scale-vs-etcd
keys="${1:-1000000}"
reps="${KEEL_SCALE_REPS:-3}"
secs="${KEEL_SCALE_SECS:-10}"
for v in "$keys" "$reps" "$secs"; do
  case "$v" in '' | *[!0-9]* | 0) echo "$bench_name: KEYS, KEEL_SCALE_REPS and KEEL_SCALE_SECS are positive numbers, got '$v'" >&2; exit 2 ;; esac
done
# shellcheck source=scripts/lib/bench-common.sh
. scripts/lib/bench-common.sh
bench_build

work="$(mktemp -d /tmp/keel-scale.XXXXXX)"
mkdir -p "$work/steps"
results="$work/results.jsonl"
touch "$results"
failed=()
members=3
keel_cluster() {
  KEEL_CLUSTER_DIR="$work/keel$members" KEEL_BASE_PORT=17500 KEEL_BIN_DIR="$nodes" KEEL_CLUSTER_NODES=$members \
    scripts/cluster.sh "$@"
}
cleanup() {
  local status=$?
  for m in 3 5; do members=$m keel_cluster down >/dev/null 2>&1 || true; done
  bench_finish "$status"
}
trap cleanup EXIT
trap 'echo "$bench_name: line $LINENO: \"$BASH_COMMAND\" failed" >&2' ERR

# The members of SYSTEM: where they listen, their processes and data, how to stop and start one.
endpoint() { case $1 in keel) echo "127.0.0.1:$((17500 + $2))" ;; etcd) echo "127.0.0.1:${2}2379" ;; esac; }
endpoints() { for m in $(seq 1 "$2"); do endpoint "$1" "$m"; done | paste -sd,; }
pid_of() { case $1 in keel) cat "$work/keel$members/node$2.pid" ;; etcd) cat "$work/etcd$2.pid" ;; esac; }
data_of() { case $1 in keel) echo "$work/keel$members/node$2" ;; etcd) echo "$work/etcd$2" ;; esac; }
cluster_up() {
  case $1 in
    keel) keel_cluster up ;;
    etcd)
      write_etcd_starter "$members"
      for m in $(seq 1 "$members"); do "$work/start-etcd.sh" "$m"; done
      etcd_up "$bin" "$(endpoints etcd "$members")" ;;
  esac
}
cluster_down() {
  case $1 in
    keel) keel_cluster purge ;;
    etcd)
      for m in $(seq 1 "$members"); do stop_member etcd "$m"; done
      rm -rf "$work"/etcd[0-9]* ;;
  esac
}
stop_member() {
  case $1 in
    keel) keel_cluster stop "$2" ;;
    etcd)
      local pid; pid=$(pid_of etcd "$2")
      kill -TERM "$pid" 2>/dev/null || true
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
      rm -f "$work/etcd$2.pid" ;;
  esac
}
start_member() { case $1 in keel) keel_cluster start "$2" ;; etcd) "$work/start-etcd.sh" "$2" ;; esac; }
# get_serializable SYSTEM M KEY: KEY's value as member M holds it (nothing if it has no such key).
get_serializable() {
  case $1 in
    keel) "$bin/keelctl" --endpoints "$(endpoint keel "$2")" --timeout 1s get --serializable --print-value-only "$3" ;;
    etcd) ETCDCTL_API=3 etcdctl --endpoints "$(endpoint etcd "$2")" --command-timeout 1s get --consistency=s \
      --print-value-only "$3" ;;
  esac 2>/dev/null
}
put() {
  case $1 in
    keel) "$bin/keelctl" --endpoints "$2" put "$3" "$4" ;;
    etcd) ETCDCTL_API=3 etcdctl --endpoints "$2" put "$3" "$4" ;;
  esac >/dev/null
}
since() { awk -v now="$(date +%s.%N)" -v t="$1" 'BEGIN { printf "%.2f", now - t }'; }
rss_mib() { awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$(pid_of "$1" "$2")/status"; }
disk_mib() { du -sk "$(data_of "$1" "$2")" | awk '{printf "%.0f", $1 / 1024}'; }

# scale SYSTEM: point 1 above, one JSON line into the results.
scale() {
  local s=$1 marker="scale-marker" value="after-$1-$keys" started loaded rss=() disk=()
  members=3
  step "$s-up" cluster_up "$s" || return 0
  step "$s-stop-3" stop_member "$s" 3 || return 0
  started=$(date +%s.%N)
  step "$s-load" "$bin/keel-bench" --system "$s" --endpoints "$(endpoints "$s" 2)" get --keys "$keys" --preload \
    --clients 1 --ops 1 || return 0
  loaded=$(since "$started")
  step "$s-marker" put "$s" "$(endpoints "$s" 2)" "$marker" "$value" || return 0
  for m in 1 2; do rss+=("$(rss_mib "$s" "$m")"); disk+=("$(disk_mib "$s" "$m")"); done
  step "$s-start-3" start_member "$s" 3 || return 0
  started=$(date +%s.%N)
  local deadline=$((SECONDS + 900)) caught=""
  until [ "$(get_serializable "$s" 3 "$marker")" = "$value" ]; do
    if [ $SECONDS -ge $deadline ]; then
      echo "$bench_name: FAILED: $s member 3 did not catch up within 900 s" >&2
      failed+=("$s-catch-up")
      break
    fi
    sleep 0.1
  done
  [ $SECONDS -lt $deadline ] && caught=$(since "$started")
  printf '{"system":"%s","point":"scale","keys":%s,"load_s":%s,"catchup_s":%s,"rss_mib":[%s,%s,%s],"disk_mib":[%s,%s,%s]}\n' \
    "$s" "$keys" "$loaded" "${caught:-null}" "${rss[0]}" "${rss[1]}" "$(rss_mib "$s" 3)" \
    "${disk[0]}" "${disk[1]}" "$(disk_mib "$s" 3)" | tee -a "$results" >&2
  step "$s-down" cluster_down "$s" || true
}

# five SYSTEM: point 2 above.
five() {
  local s=$1
  members=5
  step "$s-up-5" cluster_up "$s" || return 0
  for r in $(seq "$reps"); do
    if step "$s-put5-c256-rep$r" "$bin/keel-bench" --system "$s" --endpoints "$(endpoints "$s" 5)" put \
      --clients 256 --duration "${secs}s"; then
      record "$s-put5-c256-rep$r" put5-c256 "$r"
    fi
  done
  step "$s-down-5" cluster_down "$s" || true
}

for s in keel etcd; do
  echo "== $s" >&2
  scale "$s"
  five "$s"
done

python3 - "$results" "$keys" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
keys = int(sys.argv[2])
raw_mib = keys * (8 + 256) / 2**20
def scale(system):
    return next((r for r in rows if r["system"] == system and r["point"] == "scale"), None)
def put5(system, field):
    v = [r[field] for r in rows if r["system"] == system and r["point"] == "put5-c256"]
    return statistics.median(v) if v else None
k, e = scale("keel"), scale("etcd")
get = lambda r, f: None if r is None else f(r)
measures = [
    (f"write {keys:,} distinct keys, 64 clients, s", lambda r: r["load_s"], 1, "lower"),
    ("RSS per member after them (largest of members 1, 2), MiB", lambda r: max(r["rss_mib"][:2]), 0, "lower"),
    (f"disk per member (largest of members 1, 2), MiB; raw data {raw_mib:,.0f} MiB",
     lambda r: max(r["disk_mib"][:2]), 0, "lower"),
    ("disk per member / raw data", lambda r: max(r["disk_mib"][:2]) / raw_mib, 2, "lower"),
    ("member 3 catches up (start → marker readable on it), s", lambda r: r["catchup_s"], 1, "lower"),
    ("member 3 RSS after catching up, MiB", lambda r: r["rss_mib"][2], 0, "lower"),
    ("member 3 disk after catching up, MiB", lambda r: r["disk_mib"][2], 0, "lower"),
]
f = lambda x, d: "-" if x is None else f"{x:,.{d}f}"
print("| measure | keel | etcd | keel/etcd |")
print("|---|---|---|---|")
summary = {"keys": keys}
for label, fn, d, _ in measures:
    kv, ev = get(k, fn), get(e, fn)
    print(f"| {label} | {f(kv, d)} | {f(ev, d)} | {f'{kv / ev:.2f}x' if kv and ev else '-'} |")
for label, field, d in [("ops/s", "ops_per_sec", 0), ("p50 ms", "p50_ms", 2), ("p99 ms", "p99_ms", 2)]:
    kv, ev = put5("keel", field), put5("etcd", field)
    print(f"| 5 members, put at 256 clients, {label} | {f(kv, d)} | {f(ev, d)} "
          f"| {f'{kv / ev:.2f}x' if kv and ev else '-'} |")
    summary[f"keel_put5_c256_{field}"] = kv
    summary[f"etcd_put5_c256_{field}"] = ev
for s, r in (("keel", k), ("etcd", e)):
    if r:
        summary.update({f"{s}_load_s": r["load_s"], f"{s}_catchup_s": r["catchup_s"],
                        f"{s}_rss_mib": max(r["rss_mib"][:2]), f"{s}_disk_mib": max(r["disk_mib"][:2])})
print(json.dumps(summary))
PY
if [ ${#failed[@]} -gt 0 ]; then
  echo "$bench_name: ${#failed[@]} step(s) failed; the table above holds only what was measured:" >&2
  printf '    %s\n' "${failed[@]}" >&2
  exit 1
fi
