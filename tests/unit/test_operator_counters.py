"""The operator's API counters as Prometheus exposes them: every write and every read, by verb and kind."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from labkeeper.controller.main import WritesCollector
from labkeeper.kube.client import Kube


def test_reads_and_writes_are_counted_apart_by_verb_and_kind():
    kube = Kube(api_client=object())  # type: ignore[arg-type]  # nothing here reaches an API server
    calls = []
    kube._call = lambda method, path, body=None, **kw: calls.append((method, path)) or {"items": []}  # type: ignore[method-assign]
    kube.get("Pod", "ws-a", "lab-alice")
    kube.get("Pod", "ws-b", "lab-alice")
    kube.list("Workspace", "lab-alice")
    kube.count("Workspace")
    kube.patch("GPUUser", "alice", {"status": {}}, subresource="status")
    registry = CollectorRegistry()
    registry.register(WritesCollector(kube))
    text = generate_latest(registry).decode()
    assert 'labkeeper_operator_api_reads_total{kind="Pod",verb="get"} 2.0' in text
    assert 'labkeeper_operator_api_reads_total{kind="Workspace",verb="list"} 2.0' in text
    assert 'labkeeper_operator_api_writes_total{kind="GPUUser/status",verb="patch"} 1.0' in text
    assert "reads_total{kind=\"GPUUser" not in text and len(calls) == 5
