#!/usr/bin/env bash
# Installs the tools the test suite needs beyond cargo (Debian packages). Idempotent.
#   strace: injects EIO into fsync-family calls for the storage fault test.
#   prometheus (with promtool): scrapes a test cluster with deploy/prometheus, checks the rules.
#   fuse3 (fusermount3): the lazy filesystem of the power-cut tests (keel-testkit's lazyfs).
set -euo pipefail
need=()
command -v strace >/dev/null 2>&1 || need+=(strace)
command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
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
