"""Fixtures for the chart tests."""

from __future__ import annotations

import pytest
import yaml
from chartlib import CHART, NAMESPACE, Rendered, run_helm, values_args


@pytest.fixture
def render(tmp_path):
    """render(values) → the chart's objects as `helm template` produces them."""

    def _render(values: dict | None = None, *extra: str) -> Rendered:
        out = run_helm("template", "labkeeper", str(CHART), "--namespace", NAMESPACE,
                       *values_args(tmp_path, values), *extra).stdout
        return Rendered([d for d in yaml.safe_load_all(out) if d])

    return _render


@pytest.fixture
def render_error(tmp_path):
    """render_error(values) → helm's error message; fails the test if the chart renders."""

    def _render_error(values: dict) -> str:
        result = run_helm("template", "labkeeper", str(CHART), "--namespace", NAMESPACE,
                          *values_args(tmp_path, values), check=False)
        assert result.returncode != 0, "helm template accepted values it should have refused"
        return result.stderr

    return _render_error
