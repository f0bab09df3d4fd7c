#!/usr/bin/env bash
# Debian packages the suite and `make dev` need; installs only what is missing.
set -euo pipefail
need=()
command -v setfacl >/dev/null || need+=(acl)
command -v useradd >/dev/null || need+=(passwd)
command -v tmux >/dev/null || need+=(tmux)
command -v go >/dev/null || need+=(golang-go)
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
