#!/usr/bin/env bash
# A stand-in for python:3.12-slim when no container registry is reachable (this build machine):
# Debian bookworm minbase + python3 + venv from this machine's own apt mirror, imported into buildah's store.
# Prints the image name on its last line. Cached: a second run only checks the image exists.
set -euo pipefail
IMAGE="${LABKEEPER_BASE_IMAGE:-localhost/labkeeper-python-base:bookworm}"
STORAGE=(--storage-driver "${BUILDAH_STORAGE_DRIVER:-vfs}")
# the mirror this machine's apt already uses, so the build reaches only what apt reaches
# (either file style may be absent: awk's complaint about a missing file must not end the script)
MIRROR="${DEBIAN_MIRROR:-$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)}"
if [[ -z "$MIRROR" ]]; then
  MIRROR="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
fi
[[ -n "$MIRROR" ]] || { echo "image-base: set DEBIAN_MIRROR (no apt mirror found in /etc/apt)" >&2; exit 1; }
if buildah "${STORAGE[@]}" inspect --type image "$IMAGE" >/dev/null 2>&1; then
  echo "$IMAGE"; exit 0
fi
command -v debootstrap >/dev/null || { echo "image-base: debootstrap is required (apt-get install debootstrap)" >&2; exit 1; }
WORK="$(mktemp -d /tmp/labkeeper-base.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
ROOTFS="$WORK/rootfs"
echo "image-base: debootstrap bookworm into $ROOTFS" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOTFS" "$MIRROR" >&2
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
ctr="$(buildah "${STORAGE[@]}" from scratch)"
tar -C "$ROOTFS" -cf "$WORK/rootfs.tar" .
buildah "${STORAGE[@]}" add "$ctr" "$WORK/rootfs.tar" / >&2
buildah "${STORAGE[@]}" config --env PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd python3 "$ctr"
buildah "${STORAGE[@]}" commit --rm "$ctr" "$IMAGE" >&2
echo "$IMAGE"
