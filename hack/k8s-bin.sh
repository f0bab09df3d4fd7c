#!/usr/bin/env bash
# Builds the Kubernetes components that tests and `make dev` run, from their Go modules,
# into a cache outside the repo keyed by the versions. A warm cache builds nothing.
# Prints the directory holding the binaries on its last line.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.7.0}"
HELM_VERSION="${HELM_VERSION:-v3.19.5}"
K8S_GO_VERSION="1.24"   # the `go` line of k8s.io/kubernetes 1.34's own go.mod

CACHE_ROOT="${LABKEEPER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/labkeeper}"
KEY="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
BIN="$CACHE_ROOT/bin/$KEY"
WORK="$CACHE_ROOT/build/$KEY"
TOOLS=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy kwok helm)

all_present() {
  for t in "${TOOLS[@]}"; do [[ -x "$BIN/$t" ]] || return 1; done
}

if all_present; then
  echo "$BIN"
  exit 0
fi

# one build at a time: a second caller waits for the first and then finds the cache warm
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.build.lock"
flock 9
if all_present; then
  echo "$BIN"
  exit 0
fi

command -v go >/dev/null || { echo "k8s-bin: Go is required to build the control plane" >&2; exit 1; }
mkdir -p "$BIN" "$WORK"
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -trimpath"
log() { echo "k8s-bin: $*" >&2; }

build_kubernetes() {
  local mod="$WORK/kubernetes" minor major gomod
  [[ -x "$BIN/kube-apiserver" && -x "$BIN/kube-controller-manager" && -x "$BIN/kube-scheduler" && -x "$BIN/kubectl" && -x "$BIN/kubelet" && -x "$BIN/kube-proxy" ]] && return 0
  mkdir -p "$mod"
  gomod="$(cd "$mod" && GOFLAGS= go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  major="${K8S_VERSION#v}"; major="${major%%.*}"
  minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
  local staging_version="v0.${minor}.$(echo "$K8S_VERSION" | cut -d. -f3)"
  {
    echo "module labkeeper.local/k8s-bin"
    echo
    echo "go ${K8S_GO_VERSION}"
    echo
    echo "godebug default=go${K8S_GO_VERSION}"
    echo
    echo "require k8s.io/kubernetes ${K8S_VERSION}"
    echo
    # every staging module that k8s.io/kubernetes points at ./staging/... is taken from the proxy instead
    grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging/src/k8s\.io/[a-z0-9-]+' "$gomod" \
      | awk -v v="$staging_version" '{print "replace " $1 " => " $1 " " v}'
  } > "$mod/go.mod"
  local pkg="k8s.io/component-base/version" cg="k8s.io/client-go/pkg/version"
  local ldflags="-s -w"
  for p in "$pkg" "$cg"; do
    ldflags+=" -X $p.gitVersion=${K8S_VERSION} -X $p.gitMajor=${major} -X $p.gitMinor=${minor}"
    ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  log "building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy ${K8S_VERSION}"
  (cd "$mod" && go build -mod=mod -tags selinux,notest,grpcnotrace -ldflags "$ldflags" -o "$BIN/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler \
      k8s.io/kubernetes/cmd/kubectl \
      k8s.io/kubernetes/cmd/kubelet \
      k8s.io/kubernetes/cmd/kube-proxy)
}

build_etcd() {
  local mod="$WORK/etcd"
  [[ -x "$BIN/etcd" ]] && return 0
  mkdir -p "$mod"
  cat > "$mod/go.mod" <<GOMOD
module labkeeper.local/etcd-bin

go 1.24

require go.etcd.io/etcd/server/v3 ${ETCD_VERSION}
GOMOD
  cat > "$mod/main.go" <<'GOMAIN'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GOMAIN
  log "building etcd ${ETCD_VERSION}"
  (cd "$mod" && go build -mod=mod -ldflags "-s -w" -o "$BIN/etcd" .)
}

build_kwok() {
  [[ -x "$BIN/kwok" ]] && return 0
  log "building kwok ${KWOK_VERSION}"
  GOBIN="$BIN" go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}"
}

build_helm() {
  [[ -x "$BIN/helm" ]] && return 0
  local minor; minor="$(echo "$K8S_VERSION" | cut -d. -f2)"
  log "building helm ${HELM_VERSION}"
  GOBIN="$BIN" go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} \
    -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${minor}" \
    "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}"
}

build_etcd
build_kwok
build_helm
build_kubernetes
all_present || { log "some binaries are missing from $BIN"; exit 1; }
echo "$BIN"
