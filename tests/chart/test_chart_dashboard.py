"""The Grafana dashboard the chart ships: off by default, and when on a ConfigMap that kube-prometheus-stack's sidecar
picks up, holding the dashboard file whose every query names a series the operator exports (tests/integration/
test_accounting_day.py runs each query against a real Prometheus scraping the operator)."""

from __future__ import annotations

import json
import re

import pytest
from chartlib import CHART, NAMESPACE, run_helm

pytestmark = pytest.mark.unit

DASHBOARD = CHART / "files" / "dashboards" / "labkeeper-usage.json"
OPERATOR_SERIES = {"labkeeper_gpu_equivalent_seconds_total", "labkeeper_waiting_seconds_total",
                   "labkeeper_workspace_stops_total", "labkeeper_fair_share_decayed_gpu_hours",
                   "labkeeper_fair_share_relative_usage", "labkeeper_waiting_time_seconds",
                   "labkeeper_workspaces_waiting", "labkeeper_lab_capacity_gpu_equivalents"}


def dashboard_queries(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_the_dashboard_is_off_by_default_and_on_request_is_labelled_for_the_grafana_sidecar(render, tmp_path):
    assert not [c for c in render().all("ConfigMap") if "grafana_dashboard" in (c["metadata"].get("labels") or {})]
    out = render({"metrics": {"grafanaDashboard": {"enabled": True, "namespace": "monitoring",
                                                    "labels": {"release": "prom"}}}})
    [cm] = [c for c in out.all("ConfigMap") if "grafana_dashboard" in (c["metadata"].get("labels") or {})]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1" and cm["metadata"]["labels"]["release"] == "prom"
    assert cm["metadata"]["namespace"] == "monitoring"
    shipped = json.loads(cm["data"]["labkeeper-usage.json"])
    assert shipped == json.loads(DASHBOARD.read_text())
    switches = tmp_path / "on.yaml"
    switches.write_text("metrics:\n  grafanaDashboard:\n    enabled: true\n")
    run_helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, "--values", str(switches))


def test_every_dashboard_query_reads_only_series_the_operator_exports():
    queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
    assert len(queries) >= 8
    for query in queries:
        names = set(re.findall(r"\blabkeeper_[a-z_]+", query))
        assert names and names <= OPERATOR_SERIES, (query, names - OPERATOR_SERIES)
