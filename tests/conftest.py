"""Shared fixtures: one real local control plane per test session."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from labkeeper.testing.cluster import NVIDIA_RUNTIME_CLASS, LocalCluster, NodeSpec
from labkeeper.testing.processes import SYSTEM_NAMESPACE, OperatorProcess

REPO_ROOT = Path(__file__).resolve().parents[1]

SESSION_NODES = (NodeSpec("gpu-node-1", "h100-balanced"), NodeSpec("gpu-node-2", "full-gpus"))


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = Path(str(item.fspath))
        if "integration" in path.parts and "integration" not in item.keywords:
            item.add_marker(pytest.mark.integration)
        if "unit" in path.parts and "unit" not in item.keywords:
            item.add_marker(pytest.mark.unit)
        if "host" in path.parts and "host" not in item.keywords:
            item.add_marker(pytest.mark.host)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    local = LocalCluster(workdir, SESSION_NODES, preload=[REPO_ROOT / "crds"])
    local.start()
    print(f"\nlocal control plane started in {local.startup_seconds:.1f}s at {local.server}")
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="session")
def crds(cluster: LocalCluster) -> LocalCluster:
    """The generated CRDs, installed and established."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(NVIDIA_RUNTIME_CLASS))
    return cluster


@pytest.fixture
def unique() -> str:
    """A short random suffix so tests sharing the session cluster never collide."""
    return uuid.uuid4().hex[:6]


@pytest.fixture
def host_root(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("host provisioning tests run as root (they create accounts under a temporary host root)")
    for tool in ("setfacl", "getfacl", "useradd", "groupadd"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: install Debian packages acl and passwd (make test does)")
    root = tmp_path / "host"
    root.mkdir()
    yield root


@pytest.fixture(scope="session")
def system_namespace(crds: LocalCluster) -> str:
    crds.kubectl("create", "namespace", SYSTEM_NAMESPACE, check=False)
    return SYSTEM_NAMESPACE


@pytest.fixture(scope="session")
def operator(crds: LocalCluster, system_namespace: str, tmp_path_factory) -> Iterator[OperatorProcess]:
    """One operator for the session; tests that kill it restart it before they end."""
    crds.kubectl("apply", "-f", str(REPO_ROOT / "examples" / "policy.yaml"))
    logdir = tmp_path_factory.mktemp("operator")
    op = OperatorProcess(crds, logdir, "--no-require-host", "--data-root", "/data", "--lease-duration", "3").start()
    yield op
    op.stop()
