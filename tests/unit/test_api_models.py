"""The pydantic models say no to the same manifests the API server refuses, so labctl can check offline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from labkeeper.api import KINDS
from labkeeper.api.resources import GPUUser, ModelStore, SharedCache, Workspace

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS = {"GPUUser": GPUUser, "SharedCache": SharedCache, "ModelStore": ModelStore, "Workspace": Workspace}
INVALID = sorted((REPO_ROOT / "tests" / "manifests" / "invalid").glob("*/*.yaml"))
# a change to an immutable field needs the stored object; only the API server can judge it
UPDATES = [p for p in INVALID if "first document applies" in p.read_text()]
CREATES = [p for p in INVALID if p not in UPDATES]


def examples() -> list[dict]:
    docs = []
    for path in sorted((REPO_ROOT / "examples").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] in MODELS]
    return docs


@pytest.mark.parametrize("doc", examples(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_example_is_a_valid_object_and_its_manifest_round_trips(doc):
    obj = MODELS[doc["kind"]].model_validate(doc)
    again = MODELS[doc["kind"]].model_validate(obj.manifest())
    assert again == obj
    assert obj.manifest()["apiVersion"] == KINDS[doc["kind"]].api_version


@pytest.mark.parametrize("path", CREATES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_the_models_refuse_each_invalid_manifest_naming_the_field(path):
    doc = yaml.safe_load(path.read_text())
    field = re.search(r"^# expect: (\S+)$", path.read_text(), re.MULTILINE).group(1)
    with pytest.raises(ValidationError) as caught:
        MODELS[doc["kind"]].model_validate(doc)
    said = " ".join(".".join(map(str, e["loc"])) + " " + e["msg"] for e in caught.value.errors())
    assert re.sub(r"\[\d+\]", "", field).split(".")[-1] in said, said


def test_alices_example_has_her_key_and_the_defaults_fill_the_rest():
    alice = GPUUser.model_validate(yaml.safe_load((REPO_ROOT / "examples" / "alice.yaml").read_text()))
    assert alice.name == "alice"
    assert alice.spec.ssh_keys[0].startswith("ssh-ed25519 ")
    assert (alice.spec.state, alice.spec.shell, alice.spec.limits.cpu) == ("Active", "/bin/bash", None)


def test_a_yaml_number_is_a_quantity_too():
    ws = Workspace.model_validate({"kind": "Workspace", "metadata": {"name": "w", "namespace": "lab-alice"},
                                   "spec": {"image": "busybox", "cpu": 4, "memory": "8Gi"}})
    assert ws.spec.cpu == "4"


def test_the_error_names_the_field_and_the_value():
    with pytest.raises(ValidationError) as caught:
        Workspace.model_validate({"kind": "Workspace", "metadata": {"name": "w"},
                                  "spec": {"image": "busybox", "gpu": {"profile": "2g.10gb"}}})
    problem = caught.value.errors()[0]
    assert problem["loc"] == ("spec", "gpu", "profile") and problem["input"] == "2g.10gb"
    assert "'1g.10gb'" in problem["msg"]


def test_a_gpuuser_manifest_from_the_model_leaves_unset_fields_for_the_api_server_to_default():
    user = GPUUser(metadata={"name": "carol"}, spec={"tier": "researcher", "limits": {"maxGpuEquivalents": 3}})
    assert user.manifest()["spec"]["limits"] == {"maxGpuEquivalents": 3.0}
    assert "status" not in user.manifest() and user.manifest()["kind"] == "GPUUser"


def test_a_manifest_of_another_kind_is_refused():
    with pytest.raises(ValidationError, match="kind 'Workspace' is not GPUUser"):
        GPUUser.model_validate({"kind": "Workspace", "metadata": {"name": "alice"}, "spec": {}})
