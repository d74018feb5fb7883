#!/usr/bin/env bash
# Installs the tools the test suite needs beyond cargo (Debian packages). Idempotent.
#   strace: injects EIO into fsync-family calls for the storage fault test.
set -euo pipefail
need=()
command -v strace >/dev/null 2>&1 || need+=(strace)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: need ${need[*]} but not root; tests that need them will say SKIPPED" >&2
    exit 0
  fi
  echo "install-test-deps: installing ${need[*]}"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
