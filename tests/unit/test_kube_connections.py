"""The operator's client keeps a connection open for each pass thread: with the client's default pool (five for each
CPU, ten on a 2-core machine) the 16 pass threads' requests beyond it each opened a connection and dropped it after
one use ("Connection pool is full, discarding connection" in a full-size run's log)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from labkeeper.kube.client import Kube


def kubeconfig(tmp_path: Path) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(textwrap.dedent("""\
        apiVersion: v1
        kind: Config
        clusters: [{name: lab, cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}}]
        users: [{name: admin, user: {token: abc}}]
        contexts: [{name: lab, context: {cluster: lab, user: admin}}]
        current-context: lab
        """))
    return str(path)


def pool_size(kube: Kube) -> int:
    return int(kube.api.rest_client.pool_manager.connection_pool_kw["maxsize"])


def test_the_pool_holds_as_many_connections_as_asked(tmp_path: Path):
    kube = Kube.from_kubeconfig(kubeconfig(tmp_path), connections=23)
    assert kube.api.configuration.host == "https://127.0.0.1:6443"
    assert pool_size(kube) == 23


def test_the_operator_keeps_a_connection_for_each_pass_thread(tmp_path: Path):
    from labkeeper.controller.main import PASS_THREADS, operator_client

    kube = operator_client(kubeconfig(tmp_path))
    assert pool_size(kube) > PASS_THREADS
    assert kube.field_manager == "labkeeper-operator"
