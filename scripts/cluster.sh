#!/usr/bin/env bash
# A local three-node keel cluster on 127.0.0.1, for trying keel out.
#
#   scripts/cluster.sh up        build release binaries if needed, start the nodes, wait for a leader
#   scripts/cluster.sh up --tls  the same with TLS: a development CA and certificates in
#                                <dir>/tls (keelctl cert), TLS on the client ports, mutual TLS
#                                between members; later commands on this cluster use TLS too
#   scripts/cluster.sh down      stop the nodes (SIGTERM; data is kept)
#   scripts/cluster.sh status    keelctl status
#   scripts/cluster.sh logs [N]  follow the logs (of node N, or all)
#   scripts/cluster.sh stop N    stop node N (SIGTERM); start N starts it again
#   scripts/cluster.sh endpoints print the client endpoints
#   scripts/cluster.sh purge     stop and delete the data
#
# Nodes listen on 127.0.0.1: clients 7001-7003, peers 7101-7103, metrics 9001-9003.
# Data and logs live in .cluster/ (ignored by git). Environment:
#   KEEL_CLUSTER_DIR  where to keep data and logs        (default: <repo>/.cluster)
#   KEEL_BIN_DIR      use the binaries in this directory  (default: build target/release)
#   KEEL_BASE_PORT    client ports BASE+1..3, peer BASE+101..103, metrics BASE+2001..2003 (default 7000)
#   KEEL_CLUSTER_NODES  how many nodes, 1 to 9 (default 3): ports BASE+1..N and so on
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="${KEEL_CLUSTER_DIR:-$repo/.cluster}"
base="${KEEL_BASE_PORT:-7000}"
count="${KEEL_CLUSTER_NODES:-3}"
case "$count" in
  [1-9]) ;;
  *) echo "cluster.sh: KEEL_CLUSTER_NODES must be 1 to 9, got '$count'" >&2; exit 2 ;;
esac
mapfile -t nodes < <(seq 1 "$count")

client_addr() { echo "127.0.0.1:$((base + $1))"; }
peer_addr() { echo "127.0.0.1:$((base + 100 + $1))"; }
metrics_addr() { echo "127.0.0.1:$((base + 2000 + $1))"; }
endpoints() { local e=(); for n in "${nodes[@]}"; do e+=("$(client_addr "$n")"); done; (IFS=,; echo "${e[*]}"); }

bin_dir() {
  if [ -n "${KEEL_BIN_DIR:-}" ]; then
    echo "$KEEL_BIN_DIR"
    return
  fi
  local out="$repo/target/release"
  if [ ! -x "$out/keel" ] || [ ! -x "$out/keelctl" ] || [ -n "$(find "$repo/crates" "$repo/proto" -newer "$out/keel" -type f -print -quit 2>/dev/null)" ]; then
    echo "cluster.sh: building release binaries (cargo build --release)..." >&2
    (cd "$repo" && cargo build --release -q -p keel-server -p keel-cli) >&2
  fi
  echo "$out"
}

# The cluster uses TLS once `up --tls` has made its certificates (until purge).
tls_on() { [ -f "$dir/tls/ca/ca.pem" ]; }

# make_certs BIN: a development CA, a certificate per node (its IP and localhost) and a client
# certificate, unless they exist.
make_certs() {
  local bin=$1 t="$dir/tls"
  tls_on && return 0
  mkdir -p "$t"
  "$bin/keelctl" cert ca --out "$t/ca" --name "keel development CA ($dir)" >/dev/null
  for n in "${nodes[@]}"; do
    "$bin/keelctl" cert issue --ca "$t/ca" --name "member-$n" --san 127.0.0.1,localhost --out "$t/node$n" >/dev/null
  done
  "$bin/keelctl" cert issue --ca "$t/ca" --name client --client --out "$t/client" >/dev/null
}

# tls_flags N: node N's TLS flags (none without TLS).
tls_flags() {
  tls_on || return 0
  local t="$dir/tls"
  echo --cert-file "$t/node$1/cert.pem" --key-file "$t/node$1/key.pem" \
    --peer-cert-file "$t/node$1/cert.pem" --peer-key-file "$t/node$1/key.pem" --peer-trusted-ca-file "$t/ca/ca.pem"
}

# keelctl with the cluster's CA when it uses TLS.
ctl() {
  local bin=$1; shift
  if tls_on; then
    "$bin/keelctl" --cacert "$dir/tls/ca/ca.pem" "$@"
  else
    "$bin/keelctl" "$@"
  fi
}

# running N: node N's process exists and is not a zombie (a killed node whose parent, this
# script, has exited stays a zombie until init reaps it, and kill -0 still finds it).
running() {
  local f="$dir/node$1.pid"
  [ -f "$f" ] || return 1
  local pid; pid=$(cat "$f")
  kill -0 "$pid" 2>/dev/null || return 1
  ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

# start_node N BIN INITIAL: start node N unless it runs (--initial-cluster is ignored on restarts).
start_node() {
  local n=$1 bin=$2 initial=$3
  if running "$n"; then
    echo "node $n is already running (pid $(cat "$dir/node$n.pid"))"
    return
  fi
  # shellcheck disable=SC2046 # paths under $dir: split into flags on purpose
  "$bin/keel" --id "$n" --data-dir "$dir/node$n" \
    --peer-addr "$(peer_addr "$n")" --client-addr "$(client_addr "$n")" --metrics-addr "$(metrics_addr "$n")" \
    --initial-cluster "$initial" $(tls_flags "$n") >>"$dir/node$n.log" 2>&1 &
  echo $! >"$dir/node$n.pid"
}

initial_cluster() {
  local initial=""
  for n in "${nodes[@]}"; do initial+="${initial:+,}$n=$(peer_addr "$n")"; done
  echo "$initial"
}

# stop_node N: SIGTERM node N and wait for it (a leader hands leadership over first).
stop_node() {
  local n=$1
  running "$n" || return 0
  local pid; pid=$(cat "$dir/node$n.pid")
  kill -TERM "$pid"
  local deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then
      echo "cluster.sh: node $n (pid $pid) did not stop after SIGTERM; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    sleep 0.1
  done
  rm -f "$dir/node$n.pid"
}

up() {
  local bin; bin="$(bin_dir)"
  mkdir -p "$dir"
  if [ "${1:-}" = "--tls" ]; then
    if ! tls_on && [ -d "$dir/node1" ]; then
      echo "cluster.sh: $dir holds a plain-text cluster; run 'scripts/cluster.sh purge' first to start over with --tls" >&2
      exit 1
    fi
    make_certs "$bin"
  fi
  local initial; initial="$(initial_cluster)"
  for n in "${nodes[@]}"; do
    start_node "$n" "$bin" "$initial"
  done
  # A linearizable read succeeds only once there is a leader with a quorum.
  local deadline=$((SECONDS + 30))
  until ctl "$bin" --endpoints "$(endpoints)" --timeout 1s get keel-cluster-sh-probe >/dev/null 2>&1; do
    for n in "${nodes[@]}"; do
      if ! running "$n"; then
        echo "cluster.sh: node $n exited; last lines of $dir/node$n.log:" >&2
        tail -n 20 "$dir/node$n.log" >&2
        exit 1
      fi
    done
    if [ $SECONDS -ge $deadline ]; then
      echo "cluster.sh: no leader after 30 s; see $dir/node*.log" >&2
      exit 1
    fi
    sleep 0.2
  done
  # Members publish their client addresses right after the first election.
  until [ "$(ctl "$bin" --endpoints "$(endpoints)" --timeout 1s member list -o json 2>/dev/null |
            grep -o '"client_addr":"[^"]' | wc -l)" -eq ${#nodes[@]} ]; do
    if [ $SECONDS -ge $deadline ]; then
      echo "cluster.sh: members did not publish their addresses within 30 s; see $dir/node*.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "keel is up: ${#nodes[@]} nodes, data in $dir"
  echo "  endpoints: $(endpoints)"
  echo "  try:       export KEEL_ENDPOINTS=$(endpoints)"
  if tls_on; then
    echo "  TLS:       client ports over TLS, mutual TLS between members; certificates in $dir/tls"
    echo "             export KEEL_CACERT=$dir/tls/ca/ca.pem"
    echo "             (a client certificate, for members started with --client-cert-auth:"
    echo "              KEEL_CERT=$dir/tls/client/cert.pem KEEL_KEY=$dir/tls/client/key.pem)"
  fi
  echo "             $bin/keelctl put hello world && $bin/keelctl get hello"
  echo "             $bin/keelctl status"
  echo "  stop:      scripts/cluster.sh down"
}

down() {
  local stopped=0
  for n in "${nodes[@]}"; do
    if running "$n"; then
      stop_node "$n"
      stopped=$((stopped + 1))
    fi
  done
  rm -f "$dir"/node*.pid
  echo "keel is down ($stopped nodes stopped; data kept in $dir)"
}

case "${1:-}" in
  up) up "${2:-}" ;;
  stop) stop_node "${2:?usage: cluster.sh stop N}"; echo "node $2 stopped" ;;
  start) start_node "${2:?usage: cluster.sh start N}" "$(bin_dir)" "$(initial_cluster)"; echo "node $2 started" ;;
  endpoints) endpoints ;;
  down) down ;;
  status) ctl "$(bin_dir)" --endpoints "$(endpoints)" status ;;
  logs)
    if [ -n "${2:-}" ]; then tail -F "$dir/node$2.log"; else tail -F "$dir"/node*.log; fi ;;
  purge) down; rm -rf "$dir"; echo "deleted $dir" ;;
  *) sed -n '2,19p' "$0"; exit 2 ;;
esac
