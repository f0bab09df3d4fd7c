"""crds/ is exactly what the models generate, and the generated schemas are ones the API server accepts."""

from __future__ import annotations

from pathlib import Path

import yaml

from labkeeper.api import KINDS
from labkeeper.api.crds import CRDS, crd, render_all

REPO_ROOT = Path(__file__).resolve().parents[2]


def walk(schema: dict, path: str = ""):
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")


def test_checked_in_crds_match_the_models():
    checked_in = {p.name: p.read_text() for p in (REPO_ROOT / "crds").glob("*.yaml")}
    assert checked_in == render_all(), "crds/ drifted from operator/labkeeper/api: run `python -m labkeeper.api.crds`"


def test_every_kind_has_its_short_name_category_status_and_age_column():
    shorts = {}
    for info in CRDS:
        spec = crd(info)["spec"]
        version = spec["versions"][0]
        shorts[spec["names"]["kind"]] = spec["names"]["shortNames"]
        assert spec["names"]["categories"] == ["labkeeper"]
        assert version["subresources"] == {"status": {}}
        assert version["additionalPrinterColumns"][-1]["name"] == "Age"
        assert spec["names"]["plural"] == KINDS[info.kind.kind].plural
    # `sc` is StorageClass's short name: kubectl get sc listed StorageClasses, never a SharedCache
    assert shorts == {"GPUUser": ["gu"], "SharedCache": ["scache"], "ModelStore": ["ms"], "Workspace": ["ws"]}
    assert crd(KINDS_INFO["Workspace"])["spec"]["scope"] == "Namespaced"
    assert crd(KINDS_INFO["GPUUser"])["spec"]["scope"] == "Cluster"


KINDS_INFO = {info.kind.kind: info for info in CRDS}


def test_schemas_are_structural_every_node_has_a_type_and_no_refs_or_nulls():
    for info in CRDS:
        schema = crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        assert "$ref" not in yaml.safe_dump(schema)
        for path, node in walk(schema):
            if "anyOf" in node:  # only Kubernetes' int-or-string may use anyOf in a structural schema
                assert node["x-kubernetes-int-or-string"] and node["anyOf"] == [{"type": "integer"}, {"type": "string"}]
            assert node.get("default", "") is not None, f"{info.kind.kind}{path} defaults to null"
            assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{info.kind.kind}{path} has no type"
            assert node.get("additionalProperties") is not False, f"{info.kind.kind}{path}"


def test_every_string_and_list_a_cel_rule_reads_is_bounded():
    # unbounded inputs make the API server reject a CRD whose CEL cost it cannot estimate
    for info in CRDS:
        schema = crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, node in walk(schema):
            if "x-kubernetes-validations" in node and node.get("type") == "string":
                assert "maxLength" in node or "enum" in node, f"{info.kind.kind}{path}"
            if node.get("type") == "array" and path.startswith(".spec"):
                assert "maxItems" in node, f"{info.kind.kind}{path} has no maxItems"
