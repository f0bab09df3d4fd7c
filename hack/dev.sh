#!/usr/bin/env bash
# `make dev` / `make down`: a local lab on this machine. The control plane, operator and agent
# run detached; their logs and pids live under .dev/.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV="${DEV_DIR:-.dev}"
PY="${VENV:-.venv}/bin/python"
mkdir -p "$DEV"
DEV="$(cd "$DEV" && pwd)"

start_bg() {  # name, then the command as an argument list
  local name=$1; shift
  setsid "$@" >"$DEV/$name.log" 2>&1 < /dev/null &
  echo $! >"$DEV/$name.pid"
}

stop_bg() {
  local pidfile="$DEV/$1.pid"
  [[ -f $pidfile ]] || return 0
  local pid; pid=$(<"$pidfile")
  kill "$pid" 2>/dev/null && echo "stopped $1 ($pid)"
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

case "${1:-up}" in
up)
  "$PY" -m labkeeper.testing.cluster up --dir "$DEV/cluster" \
      --node gpu-node-1=h100-balanced --node gpu-node-2=full-gpus
  export KUBECONFIG="$DEV/cluster/admin.kubeconfig"
  BIN="$(bash hack/k8s-bin.sh | tail -1)"
  "$BIN/kubectl" apply --server-side --force-conflicts -f crds/ >/dev/null
  "$BIN/kubectl" wait --for=condition=Established crd --all --timeout=60s >/dev/null
  "$BIN/kubectl" create namespace labkeeper-system --dry-run=client -o yaml | "$BIN/kubectl" apply -f - >/dev/null
  # k3s with the NVIDIA container toolkit provides this RuntimeClass; kwok ignores the handler
  printf 'apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata: {name: nvidia}\nhandler: nvidia\n' \
    | "$BIN/kubectl" apply -f - >/dev/null
  stop_bg operator; stop_bg agent-gpu-node-1; stop_bg agent-gpu-node-2
  start_bg operator "$PY" -m labkeeper operator --kubeconfig "$KUBECONFIG"
  for node in gpu-node-1 gpu-node-2; do
    mkdir -p "$DEV/host-$node/data"
    start_bg "agent-$node" "$PY" -m labkeeper agent --kubeconfig "$KUBECONFIG" --node "$node" \
        --host-root "$DEV/host-$node" --data-root "$DEV/host-$node/data" --sampler none
  done
  "$BIN/kubectl" apply -f examples/policy.yaml
  "$BIN/kubectl" apply -f examples/alice.yaml -f examples/caches.yaml -f examples/models.yaml
  # the workspace goes in once alice is Ready: her namespace, quota and host account exist by then
  "$BIN/kubectl" wait --for=jsonpath='{.status.phase}'=Ready gpuuser/alice --timeout=180s
  "$BIN/kubectl" apply -f examples/workspace.yaml
  cat <<MSG

labkeeper is running locally.
  export KUBECONFIG=$KUBECONFIG
  export PATH=$BIN:\$PATH
  kubectl get gu,ws,scache,ms -A      # the lab's objects (sc would be StorageClasses)
  .venv/bin/labctl admin board         # the dashboard
  logs: $DEV/operator.log $DEV/agent-gpu-node-*.log $DEV/cluster/logs/
  sandbox host roots: $DEV/host-gpu-node-1, $DEV/host-gpu-node-2 (each with data/ as its data root)
  stop everything: make down
MSG
  ;;
down)
  stop_bg agent-gpu-node-1; stop_bg agent-gpu-node-2; stop_bg operator
  "$PY" -m labkeeper.testing.cluster down --dir "$DEV/cluster"
  ;;
*) echo "usage: hack/dev.sh up|down" >&2; exit 2 ;;
esac
