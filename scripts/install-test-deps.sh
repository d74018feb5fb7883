#!/usr/bin/env bash
# Installs the tools the test suite needs beyond cargo (Debian packages). Idempotent.
#   strace: injects EIO into fsync-family calls for the storage fault test.
#   prometheus (with promtool): scrapes a test cluster with deploy/prometheus, checks the rules.
#   fuse3 (fusermount3): the lazy filesystem of the power-cut tests (keel-testkit's lazyfs).
#   etcd-client (etcdctl 3.4): tests/etcd/etcdctl.sh, the real-client compatibility test.
#   etcd-server (etcd 3.4): only tests/etcd/selfcheck.sh (proves the client tests on real etcd) and
#     the benchmarks against etcd.
#   python3-venv + PyPI etcd3 in $KEEL_TEST_VENV: tests/etcd/etcd3_test.py.
#   protobuf-compiler, libprotobuf-dev: build the Rust etcd-client crate (keel-bench --features etcd).
# Sourcing this file (`. scripts/install-test-deps.sh --vars`) only sets KEEL_TEST_VENV.
KEEL_TEST_VENV=${KEEL_TEST_VENV:-/opt/keel-test-venv}
# etcd3 0.12 (last release) needs protobuf 3 (its generated modules predate protobuf 4) and the
# tenacity 6 wait-callback signature (its Lock.acquire breaks on tenacity >= 7); grpcio is pinned to
# the version these were proven with.
KEEL_TEST_PIP=(etcd3==0.12.0 protobuf==3.20.3 tenacity==6.3.1 grpcio==1.85.3)
if [ "${1:-}" = --vars ]; then return 0 2>/dev/null || exit 0; fi
set -euo pipefail
need=()
command -v strace >/dev/null 2>&1 || need+=(strace)
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
# protoc and its well-known types: the Rust etcd-client crate's build script (keel-bench's `etcd`
# feature: its etcd_client test and the benchmarks against etcd).
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
# the venv is built with Debian's python (a pyenv shim may shadow it on PATH)
[ -x "$KEEL_TEST_VENV/bin/python" ] || /usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: need ${need[*]} but not root; tests that need them will say SKIPPED" >&2
    exit 0
  fi
  echo "install-test-deps: installing ${need[*]}"
  # A failed install (no network, no package) leaves the tests to skip, loudly.
  apt-get update -qq >/dev/null || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null ||
    echo "install-test-deps: could not install ${need[*]}; tests that need them will say SKIPPED" >&2
fi

# Debian's etcd-server package starts nothing without systemd; if it did, the tests would not use
# it anyway (they start their own members on free ports).
if [ -x "$KEEL_TEST_VENV/bin/python" ] &&
  "$KEEL_TEST_VENV/bin/python" - "${KEEL_TEST_PIP[@]}" >/dev/null 2>&1 <<'PY'; then
import sys
from importlib.metadata import version
sys.exit(any(version(n) != v for n, v in (a.split("==") for a in sys.argv[1:])))
PY
  : # already there, pinned versions
elif [ ! -x /usr/bin/python3 ] || ! /usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  echo "install-test-deps: no python3-venv; tests/etcd/etcd3_test.py will say SKIPPED" >&2
else
  echo "install-test-deps: installing ${KEEL_TEST_PIP[*]} into $KEEL_TEST_VENV"
  { [ -x "$KEEL_TEST_VENV/bin/python" ] || /usr/bin/python3 -m venv "$KEEL_TEST_VENV"; } &&
    "$KEEL_TEST_VENV/bin/pip" install -q --disable-pip-version-check "${KEEL_TEST_PIP[@]}" >/dev/null 2>&1 ||
    echo "install-test-deps: could not install ${KEEL_TEST_PIP[*]} into $KEEL_TEST_VENV; tests/etcd/etcd3_test.py will say SKIPPED" >&2
fi
exit 0
