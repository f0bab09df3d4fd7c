#!/usr/bin/env bash
# Debian packages the suite and `make dev` need; installs only what is missing.
set -euo pipefail
need=()
command -v setfacl >/dev/null || need+=(acl)
command -v useradd >/dev/null || need+=(passwd)
command -v tmux >/dev/null || need+=(tmux)
command -v go >/dev/null || need+=(golang-go)
# the real test node (make e2e): a container runtime, the CNI plugins, and what the kubelet calls
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[[ -x /usr/lib/cni/bridge ]] || need+=(containernetworking-plugins)
command -v iptables >/dev/null || need+=(iptables)
command -v conntrack >/dev/null || need+=(conntrack)
command -v socat >/dev/null || need+=(socat)
command -v ethtool >/dev/null || need+=(ethtool)
command -v busybox >/dev/null || need+=(busybox-static)
# the labkeeper image (make image; the chart on the real node in make e2e)
command -v buildah >/dev/null || need+=(buildah)
command -v debootstrap >/dev/null || need+=(debootstrap)
# a real Prometheus scrapes the operator and runs every query of the shipped Grafana dashboard
command -v prometheus >/dev/null || need+=(prometheus)
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "deps: missing ${need[*]}; install them as root (apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
