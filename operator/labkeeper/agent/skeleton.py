"""Contents of the files the agent writes for people: pure functions of the lab's trees."""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from labkeeper.agent.model import HostUser, SharedTree

PROFILE_PATH = ("etc", "profile.d", "labkeeper.sh")


def tree_env(tree: SharedTree, host_path: str) -> list[tuple[str, str]]:
    return [(name, value.replace("$(PATH)", host_path)) for name, value in tree.env]


def profile_d(trees: list[tuple[SharedTree, str]], lab_gid: int, bin_dirs: Sequence[str] = ()) -> str:
    """`/etc/profile.d/labkeeper.sh`: every cache's and store's variables; umask 002 for lab members;
    the shared toolchains' bin directories in front of PATH (each once, however often the file is sourced);
    an interactive login prints the user's labkeeper notices."""
    lines = ["# written by the labkeeper agent; changes here are overwritten", ""]
    lines += [f'case " $(id -G 2>/dev/null) " in *" {lab_gid} "*) umask 002 ;; esac', ""]
    for directory in reversed(bin_dirs):
        quoted = shlex.quote(directory)
        lines.append(f'case ":$PATH:" in *:{quoted}:*) ;; *) PATH={quoted}"${{PATH:+:$PATH}}" ;; esac')
    if bin_dirs:
        lines += ["export PATH", ""]
    seen: set[str] = set()
    for tree, host_path in sorted(trees, key=lambda t: (t[0].kind, t[0].name)):
        for name, value in tree_env(tree, host_path):
            if name in seen:
                lines.append(f"# {name} from {tree.kind}/{tree.name} ignored: already set above")
                continue
            seen.add(name)
            lines.append(f"export {name}={shlex.quote(value)}")
    # an interactive login shows what the agent left in ~/.labkeeper/notices (idle and runtime warnings)
    lines += ["", 'case $- in *i*)',
              '  for notice in "$HOME"/.labkeeper/notices/*; do [ -f "$notice" ] && cat -- "$notice"; done ;;',
              "esac"]
    return "\n".join(lines) + "\n"


def hub_cache(trees: list[tuple[SharedTree, str]]) -> str | None:
    for tree, host_path in sorted(trees, key=lambda t: t[0].name):
        if tree.type == "huggingface":
            for name, value in tree_env(tree, host_path):
                if name == "HF_HUB_CACHE":
                    return value
            return f"{host_path}/hub"
    return None


def conda_pkgs(trees: list[tuple[SharedTree, str]]) -> str | None:
    for tree, host_path in sorted(trees, key=lambda t: t[0].name):
        if tree.type == "conda":
            return host_path
    return None


def skeleton(user: HostUser, trees: list[tuple[SharedTree, str]]) -> dict[str, str]:
    """File name in the home → content. Each is written once; a file the agent cannot fill yet
    (no conda cache) is left out and written when it can."""
    hub = hub_cache(trees)
    bashrc = [
        f"# ~/.bashrc for {user.name}, written once by labkeeper: it is yours to edit",
        "[ -r /etc/bash.bashrc ] && . /etc/bash.bashrc",
        "[ -r /etc/profile.d/labkeeper.sh ] && . /etc/profile.d/labkeeper.sh",
        "# group-writable files, so shared caches stay usable by everyone in the lab",
        "umask 002",
        '# your own HF_HOME: tokens stay private, downloaded models go to the shared hub cache',
        'export HF_HOME="$HOME/.cache/huggingface"',
    ]
    if hub:
        bashrc.append(f"export HF_HUB_CACHE={shlex.quote(hub)}")
    files = {
        ".bashrc": "\n".join(bashrc) + "\n",
        ".profile": "# ~/.profile, written once by labkeeper\n[ -n \"$BASH_VERSION\" ] && [ -r \"$HOME/.bashrc\" ] "
                    "&& . \"$HOME/.bashrc\"\n",
    }
    conda = conda_pkgs(trees)
    if conda:
        files[".condarc"] = (f"# written once by labkeeper: packages come from the lab's shared cache, environments\n"
                             f"# stay in your home (the shared toolchains are read-only)\npkgs_dirs:\n  - {conda}\n"
                             "envs_dirs:\n  - ~/.conda/envs\n")
    return files


def authorized_keys(user: HostUser) -> str:
    header = f"# managed by labkeeper from GPUUser {user.name} spec.sshKeys; edits here are replaced\n"
    return header + "".join(key.strip() + "\n" for key in user.ssh_keys)
