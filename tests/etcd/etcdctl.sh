#!/usr/bin/env bash
# Real-client compatibility test: drives etcdctl 3.4 (v3 API) against a running cluster and checks
# every output. Written and proven against real etcd 3.4 (tests/etcd/selfcheck.sh) so that it can be
# pointed at keel unchanged.
#
# Run against all members:
#   ENDPOINTS=127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379 tests/etcd/etcdctl.sh
# Run through a single non-leader member only (every request must be forwarded/served by it):
#   FOLLOWER_ONLY=1 ENDPOINTS=127.0.0.1:22379 tests/etcd/etcdctl.sh
#   (the script checks that the endpoint really is a follower; move-leader, which etcdctl can only
#   send to the leader, is then driven through the client URLs from `member list`.)
#
# The auth section adds the user root: run it on a cluster without one (it removes it again).
#
# Output: one `ok - <what>` or `FAIL - <what>: expected X got Y` per check, then a summary. Exit 1
# if any check failed. Keys live under a per-run prefix, so the script can run again on the same
# cluster. Nothing here assumes hashes, IDs, db sizes or absolute revisions: revisions come from the
# `-w json` headers of our own requests.
#
# Needs: etcdctl (scripts/install-test-deps.sh), python3 (JSON parsing only).
set -u
export ETCDCTL_API=3 LC_ALL=C
: "${ENDPOINTS:?set ENDPOINTS=host:port[,host:port...]}"
FOLLOWER_ONLY=${FOLLOWER_ONLY:-0}
PY=${PYTHON:-python3}

if ! command -v etcdctl >/dev/null 2>&1; then
  echo "SKIPPED - etcdctl not installed (run scripts/install-test-deps.sh)"
  exit 0
fi

# A slow shared machine: be generous with timeouts (dial included).
CTL=(etcdctl --command-timeout=10s --dial-timeout=5s)
E() { "${CTL[@]}" --endpoints="$ENDPOINTS" "$@"; }

TMP=$(mktemp -d /tmp/keel-etcdctl.XXXXXX)
BG=()  # PIDs of background etcdctl runs (each wrapped in `timeout`), ended on exit
cleanup() {
  local p
  for p in "${BG[@]}"; do kill "$p" 2>/dev/null; done
  rm -rf "$TMP"
}
trap cleanup EXIT

# Timestamp first so a later run's keys sort after an earlier run's (matters for --from-key).
RUN="$(date +%s)-$$-$RANDOM"
P="keel-ctl-$RUN"

PASS=0 FAILS=0
ok() { echo "ok - $1"; PASS=$((PASS + 1)); }
bad() { echo "FAIL - $1: expected $2 got $3"; FAILS=$((FAILS + 1)); }
# show multi-line values on one line in messages
flat() { printf '%s' "$1" | sed ':a;N;$!ba;s/\n/\\n/g'; }
eq() { # what expected got
  if [ "$2" == "$3" ]; then ok "$1"; else bad "$1" "[$(flat "$2")]" "[$(flat "$3")]"; fi
}
has() { # what needle haystack
  if [[ "$3" == *"$2"* ]]; then ok "$1"; else bad "$1" "text containing [$(flat "$2")]" "[$(flat "$3")]"; fi
}
hasnt() { # what needle haystack
  if [[ "$3" != *"$2"* ]]; then ok "$1"; else bad "$1" "no [$(flat "$2")]" "[$(flat "$3")]"; fi
}
lines() { printf '%s\n' "$@"; }

# run <etcdctl args...>: OUT = stdout (trailing newlines stripped), ERR = stderr, RC = exit code.
run() {
  OUT=$(E "$@" 2>"$TMP/err")
  RC=$?
  ERR=$(cat "$TMP/err")
}
# run_in <stdin-text> <etcdctl args...>; the text is usually a $(...) that lost its trailing newlines,
# which txn needs as section terminators, so they are added back.
run_in() {
  local input=$1
  shift
  OUT=$(printf '%s\n\n\n' "$input" | E "$@" 2>"$TMP/err")
  RC=$?
  ERR=$(cat "$TMP/err")
}
# Expect success: check rc 0 and print stderr on failure to make the FAIL line useful.
ok_rc() { if [ "$RC" -eq 0 ]; then ok "$1 (exit 0)"; else bad "$1" "exit 0" "exit $RC, stderr [$(flat "$ERR" | tail -c 400)]"; fi; }
err_rc() { # what expected-error-text
  if [ "$RC" -ne 0 ] && [[ "$ERR" == *"$2"* ]]; then ok "$1"; else
    bad "$1" "non-zero exit with [$2]" "exit $RC, stdout [$(flat "$OUT")], stderr [$(flat "$ERR" | tail -c 400)]"
  fi
}
# py <expr> evaluates a Python expression over the JSON on stdin as `d`.
py() { "$PY" -c 'import json,sys,base64
b64=lambda s: base64.b64decode(s).decode("latin-1")
d=json.load(sys.stdin)
r='"$1"'
print(r if not isinstance(r,bool) else str(r).lower())'; }
# header revision of a -w json response
rev_of() { printf '%s' "$1" | py 'd["header"]["revision"]' 2>/dev/null; }
# lease IDs as etcdctl prints them: %016x (zero-padded, unlike member IDs, which are %16x in
# `member add` and %x elsewhere)
hex() { "$PY" -c "print('%016x' % int('$1'))"; }
# wait_for <seconds> <file> <text>: bounded poll until the file contains the text
wait_for() {
  local i
  for ((i = 0; i < $1 * 5; i++)); do
    grep -qF -- "$3" "$2" 2>/dev/null && return 0
    sleep 0.2
  done
  return 1
}

echo "# etcdctl $(etcdctl version | head -1 | awk '{print $3}') against ENDPOINTS=$ENDPOINTS FOLLOWER_ONLY=$FOLLOWER_ONLY prefix=$P"

# Without a reachable cluster every check would wait out its timeouts: stop early instead.
run endpoint health
if [ "$RC" -ne 0 ]; then
  bad "preflight: endpoint health" "exit 0" "exit $RC, [$(flat "$OUT$ERR" | tail -c 400)]"
  echo "# etcdctl.sh: $PASS passed, $FAILS failed (cluster unreachable, stopped)"
  exit 1
fi

# ---------------------------------------------------------------- cluster view used by later checks
run endpoint status --cluster -w json
ok_rc "endpoint status --cluster -w json"
STATUS_JSON=$OUT
LEADER_ID=$(printf '%s' "$STATUS_JSON" | py 'd[0]["Status"]["leader"]' 2>/dev/null)
if [ "$FOLLOWER_ONLY" = 1 ]; then
  eq "FOLLOWER_ONLY: ENDPOINTS is a single endpoint" 1 "$(tr ',' '\n' <<<"$ENDPOINTS" | wc -l)"
  run endpoint status -w json
  me=$(printf '%s' "$OUT" | py 'd[0]["Status"]["header"]["member_id"]' 2>/dev/null)
  lead=$(printf '%s' "$OUT" | py 'd[0]["Status"]["leader"]' 2>/dev/null)
  if [ -n "$me" ] && [ -n "$lead" ] && [ "$me" != "$lead" ] && [ "$lead" != 0 ]; then
    ok "FOLLOWER_ONLY: $ENDPOINTS is a follower (leader is another member)"
  else
    bad "FOLLOWER_ONLY: $ENDPOINTS is a follower" "member_id != leader != 0" "member_id=$me leader=$lead"
  fi
fi

# ---------------------------------------------------------------- put
run put "$P/k1" v1
eq "put plain prints OK" OK "$OUT"
run put "$P/k1" v2 --prev-kv
eq "put --prev-kv prints OK and the previous kv" "$(lines OK "$P/k1" v1)" "$OUT"
run get "$P/k1"
eq "get after overwrite" "$(lines "$P/k1" v2)" "$OUT"

run lease grant 120
LEASE=$(awk '/granted/{print $2}' <<<"$OUT")
has "lease grant prints 'granted with TTL(120s)'" "granted with TTL(120s)" "$OUT"
run put "$P/lk" lv --lease="$LEASE"
eq "put --lease prints OK" OK "$OUT"
run get "$P/lk" -w json
eq "get -w json shows the key's lease (hex of kvs[0].lease)" "$LEASE" "$(hex "$(printf '%s' "$OUT" | py 'd["kvs"][0].get("lease",0)')")"
run put "$P/lk" lv2 --ignore-lease
eq "put --ignore-lease prints OK" OK "$OUT"
run get "$P/lk" -w json
eq "put --ignore-lease keeps value change and lease" "lv2 $LEASE" \
  "$(printf '%s' "$OUT" | py 'b64(d["kvs"][0]["value"])') $(hex "$(printf '%s' "$OUT" | py 'd["kvs"][0].get("lease",0)')")"
run put "$P/k1" --ignore-value
eq "put --ignore-value prints OK" OK "$OUT"
run get "$P/k1" -w json
eq "put --ignore-value keeps the value, bumps version to 3" "v2 3" \
  "$(printf '%s' "$OUT" | py 'b64(d["kvs"][0]["value"])+" "+str(d["kvs"][0]["version"])')"
run put "$P/lk" --ignore-value --ignore-lease
eq "put --ignore-value --ignore-lease prints OK" OK "$OUT"
run get "$P/lk" -w json
eq "put --ignore-value --ignore-lease keeps value and lease" "lv2 $LEASE" \
  "$(printf '%s' "$OUT" | py 'b64(d["kvs"][0]["value"])') $(hex "$(printf '%s' "$OUT" | py 'd["kvs"][0].get("lease",0)')")"
# --ignore-value alone sends lease 0, which detaches the key from its lease
run put "$P/lk" --ignore-value
run get "$P/lk" -w json
eq "put --ignore-value without --ignore-lease keeps the value, detaches the lease" "lv2 0" \
  "$(printf '%s' "$OUT" | py 'b64(d["kvs"][0]["value"])+" "+str(d["kvs"][0].get("lease",0))')"
run put "$P/absent" --ignore-value
err_rc "put --ignore-value on a missing key fails" "etcdserver: key not found"
run put "$P/k1" v --ignore-value
err_rc "put --ignore-value with a value is refused by etcdctl" "needs only 1 argument when 'ignore-value' is set"

# ---------------------------------------------------------------- get
# Values chosen so VALUE order differs from KEY order; created in an order unlike key order too.
R="$P/r"
for kv in "c 3" "a 5" "e 1" "b 4" "d 2"; do
  set -- $kv
  E put "$R/$1" "v$2" >/dev/null 2>&1 || bad "setup put $R/$1" OK "error"
done
run get "$R/b"
eq "get single key" "$(lines "$R/b" v4)" "$OUT"
run get "$R/" --prefix
eq "get --prefix lists keys in key order" "$(lines "$R/a" v5 "$R/b" v4 "$R/c" v3 "$R/d" v2 "$R/e" v1)" "$OUT"
run get "$R/b" "$R/d"
eq "get key range_end is [key, end)" "$(lines "$R/b" v4 "$R/c" v3)" "$OUT"
run get "$R/c" --from-key --limit=3 --keys-only
eq "get --from-key (limit 3, keys-only)" "$(lines "$R/c" "" "$R/d" "" "$R/e" "")" "$OUT"
run get "$R/" --prefix --limit=2
eq "get --prefix --limit=2" "$(lines "$R/a" v5 "$R/b" v4)" "$OUT"
run get "$R/" --prefix --limit=2 -w json
eq "get --limit -w json: count is the full count and more=true" "5 true" "$(printf '%s' "$OUT" | py 'str(d["count"])+" "+str(d.get("more",False)).lower()')"
run get "$R/" --prefix --order=DESCEND --keys-only
eq "get --order=DESCEND (sort by key)" "$(lines "$R/e" "" "$R/d" "" "$R/c" "" "$R/b" "" "$R/a" "")" "$OUT"
run get "$R/" --prefix --sort-by=VALUE --print-value-only
eq "get --sort-by=VALUE --print-value-only" "$(lines v1 v2 v3 v4 v5)" "$OUT"
run get "$R/" --prefix --sort-by=CREATE --order=DESCEND --print-value-only
eq "get --sort-by=CREATE --order=DESCEND" "$(lines v2 v4 v1 v5 v3)" "$OUT"
# With an explicit order the limit applies after sorting. (Without --order, etcd 3.4 applies the
# limit in key order first and then sorts: a quirk this script does not require.)
run get "$R/" --prefix --sort-by=MODIFY --order=ASCEND --limit=1 --print-value-only
eq "get --sort-by=MODIFY --order=ASCEND --limit=1 applies the limit after sorting" "v3" "$OUT"
run get "$R/" --prefix --sort-by=VERSION --order=DESCEND --limit=2 --keys-only -w json
eq "get --sort-by=VERSION --order=DESCEND --limit=2: count stays the full count" 5 "$(printf '%s' "$OUT" | py 'd["count"]')"
run get "$R/" --prefix --keys-only
eq "get --keys-only prints keys only" "$(lines "$R/a" "" "$R/b" "" "$R/c" "" "$R/d" "" "$R/e" "")" "$OUT"
if etcdctl get --help 2>&1 | grep -q -- --count-only; then
  run get "$R/" --prefix --count-only -w json
  eq "get --count-only" 5 "$(printf '%s' "$OUT" | py 'str(d["count"])+("" if not d.get("kvs") else " with kvs")')"
else
  # etcdctl 3.4 has no --count-only (it came in 3.5); check the count field instead.
  ok "get --count-only not offered by this etcdctl (3.4); count checked via -w json"
  run get "$R/" --prefix -w json
  eq "get -w json count" 5 "$(printf '%s' "$OUT" | py 'd["count"]')"
fi

run put "$P/hist" old -w json
REV_OLD=$(rev_of "$OUT")
run put "$P/hist" new -w json
REV_NEW=$(rev_of "$OUT")
if [ -n "$REV_OLD" ] && [ -n "$REV_NEW" ] && [ "$REV_NEW" -gt "$REV_OLD" ]; then
  ok "put -w json header revisions increase ($REV_OLD < $REV_NEW)"
else bad "put -w json header revisions increase" "two increasing numbers" "[$REV_OLD] [$REV_NEW]"; fi
run get "$P/hist" --rev="$REV_OLD" --print-value-only
eq "get --rev reads in the past" old "$OUT"
run get "$P/hist" --rev="$((REV_OLD - 1))"
eq "get --rev before the key existed is empty" "" "$OUT"
run get "$P/hist" -w json
eq "get -w json shows header fields, create/mod revision, version" "ok" "$(printf '%s' "$OUT" | py '"ok" if all(d["header"].get(f,0)>0 for f in ("cluster_id","member_id","revision","raft_term")) and d["header"]["revision"]>='"$REV_NEW"' and d["kvs"][0]["create_revision"]=='"$REV_OLD"' and d["kvs"][0]["mod_revision"]=='"$REV_NEW"' and d["kvs"][0]["version"]==2 else d')"
# A serializable read may be served from a lagging member: allow a few bounded retries.
for i in 1 2 3 4 5; do
  run get "$P/hist" --consistency=s --print-value-only
  [ "$OUT" = new ] && break
  sleep 0.5
done
eq "get --consistency=s" new "$OUT"

# ---------------------------------------------------------------- del
D="$P/d"
for k in a b c x1 x2 x3; do E put "$D/$k" "val-$k" >/dev/null 2>&1; done
run del "$D/a"
eq "del single key prints deleted count" 1 "$OUT"
run del "$D/a"
eq "del of a missing key prints 0" 0 "$OUT"
run del "$D/b" --prev-kv
eq "del --prev-kv prints count and the deleted kv" "$(lines 1 "$D/b" val-b)" "$OUT"
run del "$D/x" --prefix
eq "del --prefix" 3 "$OUT"
run get "$D/" --prefix --keys-only
eq "del --prefix left the others" "$(lines "$D/c" "")" "$OUT"
# --from-key deletes to the end of the keyspace, so it runs in a namespace that sorts after every
# printable key (leading 0xff byte) and whose run id orders later runs after this one.
FK=$'\xff'"keel-fromkey-$RUN"
for k in a b c d e; do E put "$FK/$k" "f$k" >/dev/null 2>&1; done
run del "$FK/c" --from-key
eq "del --from-key deletes key and everything after" 3 "$OUT"
run get "$FK/" --prefix --keys-only
eq "del --from-key left the keys before" "$(lines "$FK/a" "" "$FK/b" "")" "$OUT"
E del "$FK/" --prefix >/dev/null 2>&1

# ---------------------------------------------------------------- txn
T="$P/t"
run put "$T/x" one -w json
T_CREATE=$(rev_of "$OUT")
run put "$T/x" two -w json
T_MOD=$(rev_of "$OUT")
# interactive form: compares, blank line, success ops, blank line, failure ops, blank line
run_in "$(printf 'value("%s") = "two"\nversion("%s") = "2"\ncreate("%s") = "%s"\nmod("%s") = "%s"\n\nput %s yes\nget %s\n\nput %s no\n\n' \
  "$T/x" "$T/x" "$T/x" "$T_CREATE" "$T/x" "$T_MOD" "$T/y" "$T/x" "$T/y")" txn -i
has "txn -i with value/version/create/mod compares all true -> SUCCESS" "$(lines SUCCESS "" OK "" "$T/x" two)" "$OUT"
run get "$T/y" --print-value-only
eq "txn success branch applied" yes "$OUT"
run_in "$(printf 'value("%s") = "two"\nversion("%s") = "2"\ncreate("%s") = "%s"\nmod("%s") > "%s"\n\nput %s yes2\n\nput %s no\nget %s\n\n' \
  "$T/x" "$T/x" "$T/x" "$T_CREATE" "$T/x" "$T_MOD" "$T/y" "$T/y" "$T/y")" txn -i
has "txn -i with a false mod compare -> FAILURE, failure ops run" "$(lines FAILURE "" OK "" "$T/y" no)" "$OUT"
run_in "$(printf 'value("%s") != "two"\n\nput %s a\n\ndel %s\n\n' "$T/x" "$T/y" "$T/y")" txn
has "txn (stdin) value != compare false -> FAILURE, del in failure branch" "$(lines FAILURE "" 1)" "$OUT"
run_in "$(printf 'version("%s") < "3"\ncreate("%s") > "0"\nvalue("%s") > "tw"\n\nput %s z\n\nput %s q\n\n' "$T/x" "$T/x" "$T/x" "$T/y" "$T/y")" txn -w json
eq "txn -w json: succeeded=true, header revision past the last write" "true" \
  "$(printf '%s' "$OUT" | py 'd.get("succeeded",False) and d["header"]["revision"]>'"$T_MOD")"
run_in "$(printf 'version("%s") = "0"\n\nput %s first\n\n\n' "$T/new" "$T/new")" txn
has "txn on a missing key: version = 0 is true" "SUCCESS" "$OUT"

# ---------------------------------------------------------------- watch
W="$P/w"
run get "$W" -w json
W_START=$(($(rev_of "$OUT") + 1))
# Start watchers before the writes (live delivery); --rev makes the result independent of when the
# watch is actually created, so there is no race.
timeout 20 "${CTL[@]}" --endpoints="$ENDPOINTS" watch --rev="$W_START" --prefix "$W/" >"$TMP/watch1" 2>"$TMP/watch1.err" &
BG+=($!)
W1=$!
timeout 20 "${CTL[@]}" --endpoints="$ENDPOINTS" watch --rev="$W_START" --prev-kv -w json "$W/k1" >"$TMP/watch2" 2>"$TMP/watch2.err" &
BG+=($!)
W2=$!
sleep 1
run put "$W/k1" a -w json
W_PUT1=$(rev_of "$OUT")
E put "$W/k1" b >/dev/null && E put "$W/k2" c >/dev/null && E del "$W/k1" >/dev/null
# The last event (DELETE of k1) is in both streams; wait (bounded) for it, then stop the watchers.
wait_for 10 "$TMP/watch1" DELETE
for i in $(seq 1 50); do
  [ "$("$PY" -c 'import json,sys
n=0
for l in open(sys.argv[1]):
  l=l.strip()
  if l: n+=len(json.loads(l).get("Events") or [])
print(n)' "$TMP/watch2" 2>/dev/null)" = 3 ] && break
  sleep 0.2
done
kill "$W1" "$W2" 2>/dev/null
wait "$W1" "$W2" 2>/dev/null
eq "watch --rev --prefix delivers PUT, PUT, PUT, DELETE in order" \
  "$(lines PUT "$W/k1" a PUT "$W/k1" b PUT "$W/k2" c DELETE "$W/k1")" "$(sed '/^$/d' "$TMP/watch1")"
eq "watch --prev-kv -w json: events with prev_kv, first at the put's revision" "PUT:a:-:$W_PUT1 PUT:b:a DELETE::b" \
  "$("$PY" -c 'import json,sys,base64
b=lambda s: base64.b64decode(s or "").decode()
ev=[]
for l in open(sys.argv[1]):
  l=l.strip()
  if l: ev+=json.loads(l).get("Events") or []
out=[]
for i,e in enumerate(ev):
  t="DELETE" if e.get("type")==1 else "PUT"
  pv=b(e["prev_kv"]["value"]) if "prev_kv" in e else "-"
  s="%s:%s:%s"%(t,b(e["kv"].get("value")),pv)
  if i==0: s+=":%d"%e["kv"]["mod_revision"]
  out.append(s)
print(" ".join(out))' "$TMP/watch2" 2>&1)"

# ---------------------------------------------------------------- compaction
C="$P/c"
run put "$C" c1 -w json
C1=$(rev_of "$OUT")
run put "$C" c2 -w json
C2=$(rev_of "$OUT")
E put "$C" c3 >/dev/null
run compaction "$C2"
eq "compaction prints the compacted revision" "compacted revision $C2" "$OUT"
run get "$C" --rev="$C1"
err_rc "get --rev below the compaction fails" "etcdserver: mvcc: required revision has been compacted"
run get "$C" --rev="$C2" --print-value-only
eq "get --rev at the compaction revision still works" c2 "$OUT"
run compaction "$C1"
err_rc "compaction at an already compacted revision fails" "etcdserver: mvcc: required revision has been compacted"
OUT=$(timeout 20 "${CTL[@]}" --endpoints="$ENDPOINTS" watch --rev="$C1" "$C" 2>"$TMP/err")
RC=$?
ERR=$(cat "$TMP/err")$OUT
err_rc "watch --rev below the compaction is canceled" "required revision has been compacted"

# ---------------------------------------------------------------- lease
run lease grant 100
L=$(awk '/granted/{print $2}' <<<"$OUT")
eq "lease grant output" "lease $L granted with TTL(100s)" "$OUT"
E put "$P/l/a" 1 --lease="$L" >/dev/null
E put "$P/l/b" 2 --lease="$L" >/dev/null
run lease keep-alive --once "$L"
eq "lease keep-alive --once" "lease $L keepalived with TTL(100)" "$OUT"
run lease timetolive "$L"
if [[ "$OUT" =~ ^lease\ $L\ granted\ with\ TTL\(100s\),\ remaining\(([0-9]+)s\)$ ]] && [ "${BASH_REMATCH[1]}" -le 100 ] && [ "${BASH_REMATCH[1]}" -gt 50 ]; then
  ok "lease timetolive"
else bad "lease timetolive" "lease $L granted with TTL(100s), remaining(51..100s)" "$OUT"; fi
run lease timetolive "$L" --keys -w json
eq "lease timetolive --keys -w json lists attached keys" "$P/l/a $P/l/b 100" \
  "$(printf '%s' "$OUT" | py '" ".join(sorted(b64(k) for k in d.get("keys",[])))+" "+str(d["granted-ttl"])')"
run lease timetolive "$L" --keys
has "lease timetolive --keys (simple) names the keys" "attached keys([" "$OUT"
run lease list
has "lease list shows the lease" "$L" "$OUT"
has "lease list prints a count" "found " "$OUT"
run lease revoke "$L"
eq "lease revoke" "lease $L revoked" "$OUT"
run get "$P/l/" --prefix --keys-only
eq "lease revoke deletes attached keys" "" "$OUT"
run lease timetolive "$L"
eq "lease timetolive after revoke" "lease $L already expired" "$OUT"
run lease revoke "$L"
err_rc "lease revoke of a revoked lease" "etcdserver: requested lease not found"
run lease list
hasnt "lease list no longer shows the revoked lease" "$L" "$OUT"
run lease keep-alive --once "$L"
err_rc "lease keep-alive --once of a revoked lease" "requested lease not found"

# ---------------------------------------------------------------- lock
run lock "$P/lock1" -- sh -c 'echo "KEY=$ETCD_LOCK_KEY"; echo "REV=$ETCD_LOCK_REV"'
ok_rc "lock exec mode"
if [[ "$OUT" =~ KEY=$P/lock1/([0-9a-f]+) ]]; then ok "lock exec mode sets ETCD_LOCK_KEY=<name>/<hex lease>"; else
  bad "lock exec mode sets ETCD_LOCK_KEY" "KEY=$P/lock1/<hex>" "$OUT"
fi
if [[ "$OUT" =~ REV=[1-9][0-9]* ]]; then ok "lock exec mode sets ETCD_LOCK_REV"; else bad "lock exec mode sets ETCD_LOCK_REV" "REV=<n>" "$OUT"; fi
run get "$P/lock1/" --prefix --keys-only
eq "lock key removed after the command exits" "" "$OUT"

# Two lockers: the second must not run until the first's command finishes.
LOG="$TMP/locklog"
: >"$LOG"
timeout 40 "${CTL[@]}" --endpoints="$ENDPOINTS" lock "$P/lock2" -- sh -c "echo first-in >>$LOG; sleep 6; echo first-out >>$LOG" >/dev/null 2>"$TMP/lockA.err" &
LA=$!
BG+=($LA)
wait_for 15 "$LOG" first-in || bad "first locker acquired" first-in "$(cat "$LOG" "$TMP/lockA.err")"
run get "$P/lock2/" --prefix --keys-only
if [ -n "$OUT" ]; then ok "lock key exists while held"; else bad "lock key exists while held" "a key under $P/lock2/" "nothing"; fi
timeout 40 "${CTL[@]}" --endpoints="$ENDPOINTS" lock "$P/lock2" -- sh -c "echo second-in >>$LOG" >/dev/null 2>"$TMP/lockB.err" &
LB=$!
BG+=($LB)
sleep 1.5
hasnt "second locker waits while the first holds" second-in "$(cat "$LOG")"
wait "$LA"
wait_for 15 "$LOG" second-in
wait "$LB"
eq "second locker runs only after the first released" "$(lines first-in first-out second-in)" "$(cat "$LOG")"

# ---------------------------------------------------------------- elect
EL="$P/elect"
timeout 40 "${CTL[@]}" --endpoints="$ENDPOINTS" elect "$EL" cand-A >"$TMP/cand" 2>"$TMP/cand.err" &
CA=$!
BG+=($CA)
wait_for 15 "$TMP/cand" cand-A
if [[ "$(cat "$TMP/cand")" =~ ^$EL/[0-9a-f]+$'\n'cand-A ]]; then ok "elect: candidate wins and prints <name>/<hex lease> and its value"; else
  bad "elect: candidate wins" "$EL/<hex>\\ncand-A" "$(cat "$TMP/cand" "$TMP/cand.err")"
fi
timeout 5 "${CTL[@]}" --endpoints="$ENDPOINTS" elect -l "$EL" >"$TMP/obs" 2>"$TMP/obs.err"
if [[ "$(cat "$TMP/obs")" =~ ^$EL/[0-9a-f]+$'\n'cand-A ]]; then ok "elect -l observes the leader's proposal"; else
  bad "elect -l observes the leader's proposal" "$EL/<hex>\\ncand-A" "$(cat "$TMP/obs" "$TMP/obs.err")"
fi
# SIGTERM makes etcdctl resign, which deletes the election key
kill "$CA" 2>/dev/null
wait "$CA" 2>/dev/null
for i in $(seq 1 25); do
  run get "$EL/" --prefix --keys-only
  [ -z "$OUT" ] && break
  sleep 0.2
done
eq "elect: candidate resigns on SIGTERM (key gone)" "" "$OUT"

# ---------------------------------------------------------------- member
run member list -w table
has "member list -w table has the header" "| IS LEARNER |" "$OUT"
run member list -w json
MEMBERS_JSON=$OUT
NMEMBERS=$(printf '%s' "$OUT" | py 'len(d["members"])')
EP1=$(cut -d, -f1 <<<"$ENDPOINTS")
# keel lists client URLs without their scheme (see crates/keel-server/src/etcd/cluster.rs): compare
# the host:port.
eq "member list -w json: every member started, first endpoint among clientURLs, header member is a member" "ok" \
  "$(printf '%s' "$OUT" | py '"ok" if all(m.get("name") and m.get("clientURLs") and m.get("peerURLs") for m in d["members"]) and any(u.split("//")[-1] == "'"$EP1"'" for m in d["members"] for u in m["clientURLs"]) and d["header"]["member_id"] in [m["ID"] for m in d["members"]] else d')"
if [ "$FOLLOWER_ONLY" != 1 ]; then
  eq "member list has one member per endpoint" "$(tr ',' '\n' <<<"$ENDPOINTS" | wc -l)" "$NMEMBERS"
fi
run member list
eq "member list (simple) prints one line per member, all started" "$NMEMBERS" "$(grep -c ', started, ' <<<"$OUT")"

# A made-up peer URL on 127.0.0.77 (never started, never listened on), unique per run.
PEER="http://127.0.0.77:$((20000 + RANDOM % 40000))"
run member add "learner-$RUN" --learner --peer-urls="$PEER"
# etcdctl prints IDs with %16x, so a short ID is space-padded ("Member  27df56b815ade05 added").
NEWID=$(sed -n 's/^Member *\([0-9a-f]*\) added to cluster *[0-9a-f]*$/\1/p' <<<"$OUT")
if [ -n "$NEWID" ]; then ok "member add --learner prints 'Member <id> added to cluster <id>'"; else
  bad "member add --learner" "Member <id> added to cluster <id>" "$OUT $ERR"
fi
has "member add prints ETCD_INITIAL_CLUSTER_STATE=existing" 'ETCD_INITIAL_CLUSTER_STATE="existing"' "$OUT"
run member list
has "member list shows the learner unstarted" "$NEWID, unstarted, , $PEER, , true" "$OUT"
run member promote "$NEWID"
err_rc "member promote of an unstarted learner fails" "etcdserver: can only promote a learner member which is in sync with leader"
run member remove "$NEWID"
if [[ "$OUT" =~ ^Member\ +$NEWID\ removed\ from\ cluster\ +[0-9a-f]+$ ]]; then ok "member remove"; else
  bad "member remove" "Member $NEWID removed from cluster <id>" "$OUT $ERR"
fi
run member list
# Compare the ID column: a bare substring test would also match a small ID (keel's are 1, 2, 3,
# ...) inside a port number.
hasnt "member list no longer shows the removed learner" "
$NEWID
" "
$(cut -d, -f1 <<<"$OUT")
"
run member remove "$NEWID"
err_rc "member remove of a removed member" "etcdserver: member not found"

# ---------------------------------------------------------------- endpoint
run endpoint status -w json
eq "endpoint status -w json: version, leader, header for each endpoint" "ok" \
  "$(printf '%s' "$OUT" | py '"ok" if len(d)=='"$(tr ',' '\n' <<<"$ENDPOINTS" | wc -l)"' and all(e["Status"]["version"].startswith("3.") and e["Status"]["leader"]!=0 and e["Status"]["header"]["member_id"]!=0 and e["Status"].get("raftIndex",0)>0 for e in d) else d')"
run endpoint status --cluster -w json
eq "endpoint status --cluster: one entry per member, exactly one leader, all agree on it" "$NMEMBERS 1 1" \
  "$(printf '%s' "$OUT" | py '"%d %d %d"%(len(d),sum(e["Status"]["leader"]==e["Status"]["header"]["member_id"] for e in d),len(set(e["Status"]["leader"] for e in d)))')"
run endpoint status
eq "endpoint status (simple) prints one line per endpoint" "$(tr ',' '\n' <<<"$ENDPOINTS" | wc -l)" "$(grep -c . <<<"$OUT")"
run endpoint health
ok_rc "endpoint health"
eq "endpoint health: every endpoint healthy" "$(tr ',' '\n' <<<"$ENDPOINTS" | wc -l)" "$(grep -c 'is healthy: successfully committed proposal' <<<"$OUT$ERR")"
run endpoint health --cluster -w json
eq "endpoint health --cluster -w json: all members healthy" "$NMEMBERS" "$(printf '%s' "$OUT" | py 'sum(1 for e in d if e["health"])')"
# hashkv at one fixed revision so members that are a write apart still hash the same history.
run get "$P" -w json
HREV=$(rev_of "$OUT")
for i in 1 2 3 4 5; do
  run endpoint hashkv --cluster --rev="$HREV" -w json
  HK=$(printf '%s' "$OUT" | py '"%d %d"%(len(d),len(set(e["HashKV"]["hash"] for e in d)))' 2>/dev/null)
  [ "$HK" = "$NMEMBERS 1" ] && break
  sleep 1
done
eq "endpoint hashkv --cluster --rev: all members agree" "$NMEMBERS 1" "$HK"
run endpoint hashkv --rev="$HREV"
eq "endpoint hashkv (simple) one line per endpoint" "$(tr ',' '\n' <<<"$ENDPOINTS" | wc -l)" "$(grep -cE '^[^ ]+, [0-9]+$' <<<"$OUT")"

# ---------------------------------------------------------------- snapshot, defrag, alarm
# snapshot save takes exactly one endpoint; the client verifies the stream's SHA-256 trailer.
SNAP="$TMP/snap.db"
OUT=$("${CTL[@]}" --endpoints="$EP1" snapshot save "$SNAP" 2>"$TMP/err")
RC=$?
ERR=$(cat "$TMP/err")
ok_rc "snapshot save"
has "snapshot save prints the path" "Snapshot saved at $SNAP" "$OUT"
if [ -s "$SNAP" ]; then ok "snapshot file exists and is non-empty ($(stat -c %s "$SNAP") bytes)"; else bad "snapshot file" "non-empty file" "missing or empty"; fi
run defrag
ok_rc "defrag"
eq "defrag: one 'Finished defragmenting' per endpoint" "$(tr ',' '\n' <<<"$ENDPOINTS" | wc -l)" "$(grep -c '^Finished defragmenting etcd member\[' <<<"$OUT")"
run get "$P/hist" --print-value-only
eq "data readable after defrag" new "$OUT"
run alarm list
ok_rc "alarm list"
eq "alarm list is empty" "" "$OUT"

# ---------------------------------------------------------------- move-leader (last: it changes the term)
run endpoint status --cluster -w json
read -r OLD_LEADER TARGET ALL_EPS < <(printf '%s' "$OUT" | "$PY" -c '
import json,sys
d=json.load(sys.stdin); mine=set(sys.argv[1].split(","))
lead=d[0]["Status"]["leader"]
eps=[e["Endpoint"] for e in d]
# move to a member that is not the leader and, in follower-only mode, not our own endpoint,
# so that the next follower-only run still talks to a follower
cands=[e["Status"]["header"]["member_id"] for e in d if e["Status"]["header"]["member_id"]!=lead and e["Endpoint"].split("//")[-1] not in mine]
if not cands: cands=[e["Status"]["header"]["member_id"] for e in d if e["Status"]["header"]["member_id"]!=lead]
print("%x"%lead, "%x"%cands[0] if cands else "none", ",".join(eps))' "$ENDPOINTS")
if [ "${TARGET:-none}" = none ]; then
  bad "move-leader" "a cluster with a non-leader member" "$OUT"
else
  if [ "$FOLLOWER_ONLY" = 1 ]; then
    # etcdctl sends MoveLeader only to the leader, found by Status over the given endpoints
    run move-leader "$TARGET"
    err_rc "move-leader through a follower-only endpoint list is refused by etcdctl" "no leader endpoint given at"
  fi
  OUT=$("${CTL[@]}" --endpoints="$ALL_EPS" move-leader 1234 2>"$TMP/err")
  RC=$?
  ERR=$(cat "$TMP/err")
  err_rc "move-leader to a non-member fails" "etcdserver: bad leader transferee"
  OUT=$("${CTL[@]}" --endpoints="$ALL_EPS" move-leader "$TARGET" 2>"$TMP/err")
  RC=$?
  ERR=$(cat "$TMP/err")
  eq "move-leader prints the transfer" "Leadership transferred from $OLD_LEADER to $TARGET" "$OUT"
  for i in $(seq 1 20); do
    NEW_LEADER=$("${CTL[@]}" --endpoints="$ALL_EPS" endpoint status -w json 2>/dev/null | py '"%x"%d[0]["Status"]["leader"]' 2>/dev/null)
    [ "$NEW_LEADER" = "$TARGET" ] && break
    sleep 0.5
  done
  eq "move-leader: endpoint status reports the new leader" "$TARGET" "$NEW_LEADER"
  # the cluster must still serve writes after the transfer (retried briefly while the term settles)
  for i in 1 2 3 4 5; do
    run put "$P/after-move" ok
    [ "$OUT" = OK ] && break
    sleep 1
  done
  eq "put after move-leader" OK "$OUT"
fi

# ---------------------------------------------------------------- auth (users, roles, permissions)
# Leaves auth disabled and deletes what it added, root included, so the script can run again.
AU="$P-user" AR="$P-role" AK="$P/auth"
run user add root --new-user-password=rootpw
eq "user add root" "User root created" "$OUT"
run user grant-role root root
eq "user grant-role root root" "Role root is granted to user root" "$OUT"
run role add "$AR"
eq "role add" "Role $AR created" "$OUT"
run role grant-permission "$AR" readwrite "$AK/" --prefix
eq "role grant-permission --prefix" "Role $AR updated" "$OUT"
run user add "$AU" --new-user-password=userpw
eq "user add" "User $AU created" "$OUT"
run user grant-role "$AU" "$AR"
eq "user grant-role" "Role $AR is granted to user $AU" "$OUT"
run role get "$AR"
has "role get shows the prefix as a range" "[$AK/, ${AK}0)" "$OUT"
run auth enable
eq "auth enable" "Authentication Enabled" "$OUT"
run put "$AK/k" v
err_rc "auth on: a put without a user is refused" "etcdserver: user name is empty"
run --user "$AU:userpw" put "$AK/k" v
eq "--user put inside the permission" OK "$OUT"
run --user "$AU:userpw" get "$AK/k" --print-value-only
eq "--user get inside the permission" v "$OUT"
run --user "$AU:userpw" put "$P/outside" v
err_rc "--user put outside the permission" "etcdserver: permission denied"
run --user "$AU:wrongpw" get "$AK/k"
err_rc "a wrong password" "etcdserver: authentication failed, invalid user ID or password"
run --user "$AU:userpw" user list
err_rc "user list needs root" "etcdserver: permission denied"
run --user root:rootpw user list
has "user list by root" "$AU" "$OUT"
run --user root:rootpw role revoke-permission "$AR" "$AK/" --prefix
has "role revoke-permission" "revoked" "$OUT"
run --user "$AU:userpw" put "$AK/k" v2
err_rc "a revoked permission refuses the next write" "etcdserver: permission denied"
run --user root:rootpw auth disable
eq "auth disable" "Authentication Disabled" "$OUT"
run get "$AK/k" --print-value-only
eq "auth off: anyone reads again, and the refused write was not applied" v "$OUT"
run user delete "$AU"
eq "user delete" "User $AU deleted" "$OUT"
run role delete "$AR"
eq "role delete" "Role $AR deleted" "$OUT"
run user delete root
eq "user delete root (auth off)" "User root deleted" "$OUT"

# ---------------------------------------------------------------- cleanup of our keys
E del "$P/" --prefix >/dev/null 2>&1

echo "# etcdctl.sh: $PASS passed, $FAILS failed"
[ "$FAILS" -eq 0 ]
