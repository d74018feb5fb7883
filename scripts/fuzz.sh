#!/usr/bin/env bash
# Run keel's fuzz targets (crates/keel-fuzz) for longer than CI does: every target, round after
# round, each round with fresh random seeds and many cases, until the time is spent. Then print
# the cases run per target and the findings: each failure with its minimized input. proptest
# keeps a failure's seed in crates/keel-fuzz/regressions/TARGET.txt, which every later run
# (CI's included) replays first: commit it together with the fix.
#
#   scripts/fuzz.sh --minutes 10                  every target, 10 minutes
#   scripts/fuzz.sh --minutes 5 --filter snapshot only the targets whose name contains "snapshot"
#   scripts/fuzz.sh --minutes 30 --cases 20000    more cases per target and round
#
# Exit 0 without findings, 1 with, 2 on a usage error.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: scripts/fuzz.sh --minutes N [--cases N] [--filter TEXT]" >&2
  exit 2
}

minutes=""
cases=4096
filter=""
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) [ $# -ge 2 ] || usage; minutes="$2"; shift 2 ;;
    --cases) [ $# -ge 2 ] || usage; cases="$2"; shift 2 ;;
    --filter) [ $# -ge 2 ] || usage; filter="$2"; shift 2 ;;
    -h|--help) echo "usage: scripts/fuzz.sh --minutes N [--cases N] [--filter TEXT]"; exit 0 ;;
    *) echo "scripts/fuzz.sh: unknown argument: $1" >&2; usage ;;
  esac
done
[[ "$minutes" =~ ^[1-9][0-9]*$ ]] || { echo "scripts/fuzz.sh: --minutes needs a positive whole number" >&2; usage; }
[[ "$cases" =~ ^[1-9][0-9]*$ ]] || { echo "scripts/fuzz.sh: --cases needs a positive whole number" >&2; usage; }

echo "== building the fuzz targets"
mapfile -t binaries < <(cargo test -p keel-fuzz --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p')
[ ${#binaries[@]} -gt 0 ] || { echo "scripts/fuzz.sh: no test binaries built (run: cargo test -p keel-fuzz --no-run)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stats="$work/stats"
: >"$stats"
deadline=$(( $(date +%s) + minutes * 60 ))
round=0
findings=0
echo "== fuzzing for $minutes min, $cases cases per target and round (fewer for the targets that open databases)"
while [ "$(date +%s)" -lt "$deadline" ]; do
  round=$((round + 1))
  for bin in "${binaries[@]}"; do
    left=$(( deadline - $(date +%s) ))
    [ "$left" -gt 0 ] || break
    log="$work/round$round-$(basename "$bin").log"
    args=(--nocapture)
    [ -n "$filter" ] && args=("$filter" "${args[@]}")
    # A round cut off by the deadline counts the targets it finished (each reports at its end).
    set +e
    KEEL_FUZZ_CASES="$cases" KEEL_FUZZ_STATS="$stats" timeout "$left" "$bin" "${args[@]}" >"$log" 2>&1
    rc=$?
    set -e
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ]; then
      findings=$((findings + 1))
      echo "== FINDING in round $round ($(basename "$bin"), exit $rc):"
      grep -A40 -E "keel-fuzz: .* FAILED|has overflowed its stack|memory allocation of" "$log" | grep -v "^\s*[0-9]*: \|^\s*at " | head -60 || true
    fi
  done
done

echo
echo "== cases run per target ($round rounds in $minutes min)"
awk '{ cases[$1] += $2; secs[$1] += $3; runs[$1] += 1 }
     END { for (t in cases) printf "%-45s %10d cases %8.1f s %4d runs\n", t, cases[t], secs[t], runs[t] }' "$stats" | sort
awk '{ total += $2 } END { printf "%-45s %10d cases\n", "total", total }' "$stats"
echo
if [ "$findings" -eq 0 ]; then
  echo "== findings: none"
else
  echo "== findings: $findings (seeds kept in crates/keel-fuzz/regressions/; see above)"
  git status --short crates/keel-fuzz/regressions/ || true
  exit 1
fi
