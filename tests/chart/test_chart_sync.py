"""Generated chart files match their sources: CRDs, values.schema.json, manifests/install.yaml."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml
from chartlib import CHART, REPO_ROOT

pytestmark = pytest.mark.unit


def load_sync():
    spec = importlib.util.spec_from_file_location("chart_sync", REPO_ROOT / "hack" / "chart-sync.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sync = load_sync()


def test_the_chart_carries_the_repo_crds_unchanged():
    source = {p.name: p.read_text() for p in (REPO_ROOT / "crds").glob("*.yaml")}
    copied = {p.name: p.read_text() for p in (CHART / "files" / "crds").glob("*.yaml")}
    assert source, "crds/ is empty: run `make crds`"
    assert copied == source, "chart CRDs drifted from crds/: run `python hack/chart-sync.py`"


def test_values_schema_is_generated_from_the_policy_model():
    checked_in = (CHART / "values.schema.json").read_text()
    assert checked_in == sync.schema_text(), "values.schema.json drifted: run `python hack/chart-sync.py`"
    from labkeeper.api.policy import LabPolicy

    policy = json.loads(checked_in)["properties"]["policy"]
    model_fields = {f.alias or name for name, f in LabPolicy.model_fields.items()}
    assert set(policy["properties"]) == model_fields


def test_the_default_values_satisfy_the_policy_model():
    from labkeeper.api.policy import LabPolicy

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    LabPolicy.model_validate(values["policy"])


def test_install_yaml_is_the_chart_rendered_with_defaults():
    checked_in = (REPO_ROOT / "manifests" / "install.yaml").read_text()
    assert checked_in == sync.install_text(), "manifests/install.yaml drifted: run `python hack/chart-sync.py`"
    kinds = {d["kind"] for d in yaml.safe_load_all(checked_in) if d}
    assert {"Namespace", "CustomResourceDefinition", "Deployment", "DaemonSet", "ConfigMap"} <= kinds
    assert "Pod" not in kinds  # `helm test` pods need helm


def test_the_drift_check_notices_a_hand_edit(tmp_path, monkeypatch):
    schema = tmp_path / "values.schema.json"
    schema.write_text(sync.schema_text().replace('"minimum"', '"minimun"', 1))
    monkeypatch.setattr(sync, "SCHEMA", schema)
    monkeypatch.setattr(sync, "install_text", lambda: (REPO_ROOT / "manifests" / "install.yaml").read_text())
    assert sync.sync(check=True) == 1
