"""The shared toolchains a Workspace names, as read-only mounts at the same path SSH users see them."""

from __future__ import annotations

from collections.abc import Sequence

from labkeeper.api.policy import Toolchain
from labkeeper.render.pod import Mount

APPS_DIR = "apps"  # agent.toolchains.APPS_DIR: render may not import the agent


def toolchain_mounts(toolchains: Sequence[Toolchain], host_data_root: str,
                     requested: Sequence[str]) -> tuple[list[Mount], list[str]]:
    """(mounts in the order asked, names the policy does not list). The policy's version is mounted; a node where
    it failed to install has no such directory, so the pod waits there rather than getting another version."""
    by_name = {t.name: t for t in toolchains}
    root = host_data_root.rstrip("/")
    mounts = [Mount(name, f"{root}/{APPS_DIR}/{name}-{by_name[name].version}") for name in requested if name in by_name]
    return mounts, [name for name in requested if name not in by_name]
