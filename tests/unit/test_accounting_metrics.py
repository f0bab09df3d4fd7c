"""The operator's usage metrics from plain objects: the figures `labctl admin report` prints, by user and state; an
API that fails costs one scrape these families, never /metrics as a whole, and registering reads nothing."""

from __future__ import annotations

import datetime as dt

from prometheus_client import CollectorRegistry, generate_latest

from labkeeper.api import accounting as acc
from labkeeper.api.policy import LabPolicy
from labkeeper.controller.accounting import Accountant

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


class Policy:
    current = LabPolicy()


class Kube:
    def __init__(self, objects: dict[str, list[dict]], fail: bool = False) -> None:
        self.objects, self.fail, self.reads = objects, fail, 0

    def list(self, kind: str, namespace: str | None = None, **_):
        self.reads += 1
        if self.fail:
            raise ConnectionError("apiserver restarting")
        return self.objects.get(kind, [])


def lab() -> dict[str, list[dict]]:
    meter = [acc.Mark("active", NOW - dt.timedelta(hours=2), 1.0).as_status(),
             acc.Mark("idle", NOW - dt.timedelta(hours=1), 1.0).as_status()]
    return {"GPUUser": [{"metadata": {"name": "ann"}, "spec": {"tier": "student"}}],
            "Workspace": [{"metadata": {"name": "train", "namespace": "lab-ann"}, "status": {"meter": meter}}],
            "Node": [{"metadata": {"name": "h100"}, "status": {"allocatable": {"nvidia.com/mig-1g.10gb": "7"}}}]}


def test_the_metrics_say_what_the_report_says_by_user_and_state():
    registry = CollectorRegistry(auto_describe=True)  # as prometheus_client's global REGISTRY
    kube = Kube(lab())
    registry.register(Accountant(kube, Policy(), lambda: NOW))
    assert kube.reads == 0  # registering reads nothing
    text = generate_latest(registry).decode()
    assert 'labkeeper_gpu_equivalent_seconds_total{state="active",tier="student",user="ann"} 3600.0' in text
    assert 'labkeeper_gpu_equivalent_seconds_total{state="idle",tier="student",user="ann"} 3600.0' in text
    assert 'labkeeper_lab_capacity_gpu_equivalents 1.0' in text
    assert 'labkeeper_workspaces_waiting{user="ann"} 0.0' in text


def test_an_api_that_fails_costs_the_scrape_these_families_only():
    registry = CollectorRegistry()
    registry.register(Accountant(Kube(lab(), fail=True), Policy(), lambda: NOW))
    assert "labkeeper_gpu_equivalent_seconds" not in generate_latest(registry).decode()
