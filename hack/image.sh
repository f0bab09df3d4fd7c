#!/usr/bin/env bash
# `make image`: builds the operator/agent image from the Dockerfile with buildah (Debian package;
# no daemon). Where the python base image cannot be pulled, the base is a local Debian python3 image made by
# hack/image-base.sh. Prints the image name on its last line.
#   IMAGE=labkeeper/labkeeper:0.1.0  PYTHON_IMAGE=...  BUILDAH_STORAGE_DRIVER=vfs
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)"
IMAGE="${IMAGE:-localhost/labkeeper/labkeeper:${VERSION}}"
STORAGE=(--storage-driver "${BUILDAH_STORAGE_DRIVER:-vfs}")
command -v buildah >/dev/null || { echo "image: buildah is required (apt-get install buildah)" >&2; exit 1; }
if [[ -z "${PYTHON_IMAGE:-}" ]]; then
  if timeout 60 buildah "${STORAGE[@]}" pull -q python:3.12-slim-bookworm >/dev/null 2>&1; then
    PYTHON_IMAGE=python:3.12-slim-bookworm
  else
    echo "image: python:3.12-slim-bookworm cannot be pulled here; using a local Debian base (hack/image-base.sh)" >&2
    PYTHON_IMAGE="$(bash hack/image-base.sh | tail -1)"
  fi
fi
args=(--isolation chroot --layers=false --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" -t "$IMAGE")
# behind a TLS-inspecting proxy pip needs the host's CA bundle; a build secret, so it stays out of the image
CA="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
[[ -s "$CA" ]] && args+=(--secret "id=ca,src=$CA")
buildah "${STORAGE[@]}" bud "${args[@]}" . >&2
echo "$IMAGE"
