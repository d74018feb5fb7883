#!/usr/bin/env bash
# Build the keel container image FROM scratch: the release binaries plus the shared libraries
# they link (found with ldd). No base image, no registry.
#   scripts/build-image.sh            build target/release binaries if needed, tag keel:dev
#   KEEL_IMAGE=keel:1.2 scripts/build-image.sh
#   KEEL_BIN_DIR=DIR scripts/build-image.sh   use the binaries in DIR
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
tag="${KEEL_IMAGE:-keel:dev}"
bin="${KEEL_BIN_DIR:-$repo/target/release}"
if [ -z "${KEEL_BIN_DIR:-}" ]; then
  (cd "$repo" && cargo build --release -q -p keel-server -p keel-cli)
fi
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/rootfs/bin" "$ctx/rootfs/etc"
# keel runs as uid/gid 65532 (the Dockerfile's USER) and looks up no names itself; the entries
# let `docker run --user keel` resolve and name the uid for anything reading the image's files.
printf 'root:x:0:0:root:/:/sbin/nologin\nkeel:x:65532:65532:keel:/data:/sbin/nologin\n' >"$ctx/rootfs/etc/passwd"
printf 'root:x:0:\nkeel:x:65532:\n' >"$ctx/rootfs/etc/group"
# /data travels apart from rootfs/ so the Dockerfile can give it to uid 65532 (COPY --chown):
# the ownership of files in the build context is not kept.
mkdir "$ctx/data"
cp "$bin/keel" "$bin/keelctl" "$ctx/rootfs/bin/"
# Every library ldd resolves (path after "=>"), and the loader (a bare absolute path).
libs=$(ldd "$bin/keel" "$bin/keelctl" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// && $2 ~ /^\(/ {print $1}' | sort -u)
for lib in $libs; do
  mkdir -p "$ctx/rootfs$(dirname "$lib")"
  cp -L "$lib" "$ctx/rootfs$lib"
done
# The release profile keeps line tables for profiling; the image does not need them.
command -v strip >/dev/null && strip --strip-debug "$ctx/rootfs/bin/keel" "$ctx/rootfs/bin/keelctl"
cp "$repo/deploy/Dockerfile" "$ctx/Dockerfile"
echo "build-image: libraries: $(echo $libs)"
docker build -q -t "$tag" "$ctx" >/dev/null
echo "build-image: built $tag ($(docker image inspect -f '{{.Size}}' "$tag") bytes)"
