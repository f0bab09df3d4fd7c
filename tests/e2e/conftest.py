"""The real-node suite (`make e2e`): one lab per session whose workspaces run as real containers on a real
node (kubelet, containerd, runc, the fake NVIDIA device plugin), beside a kwok node that offers no GPU.
The operator and agent run as processes; the agent's host root is the node's sandboxed /etc and /home."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from labkeeper.testing.reallab import RealLab
from labkeeper.testing.realnode import missing_tools


# first: `-m "not e2e"` deselects in pytest's own hook, which would otherwise run before this one
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if "e2e" in Path(str(item.fspath)).parts and item.get_closest_marker("e2e") is None:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def real_lab(tmp_path_factory) -> Iterator[RealLab]:
    if os.geteuid() != 0:
        pytest.skip("the real-node suite runs as root (containerd, the kubelet and a private mount namespace)")
    missing = missing_tools()
    if missing:
        pytest.fail(f"missing for the real node: {', '.join(missing)} (bash hack/deps.sh installs them)")
    with RealLab(tmp_path_factory.mktemp("e2e")) as lab:
        print(f"\nreal lab up: {lab.timings}")
        yield lab
