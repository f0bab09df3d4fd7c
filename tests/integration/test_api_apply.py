"""The real API server, with the generated CRDs, accepts the examples and refuses every invalid manifest at apply."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
INVALID = REPO_ROOT / "tests" / "manifests" / "invalid"
INVALID_FILES = sorted(INVALID.glob("*/*.yaml"))


def expected_field(path: Path) -> str:
    match = re.search(r"^# expect: (\S+)$", path.read_text(), re.MULTILINE)
    assert match, f"{path} has no '# expect: <field>' line"
    return match.group(1)


def locator(doc: dict) -> list[str]:
    meta = doc["metadata"]
    where = ["-n", meta["namespace"]] if meta.get("namespace") else []
    return [doc["kind"].lower(), meta["name"], *where]


@pytest.fixture(scope="module")
def api(cluster):
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    for namespace in ("lab-invalid", "lab-alice", "labkeeper-system"):
        cluster.kubectl("create", "namespace", namespace, check=False)
    return cluster


def test_there_are_at_least_forty_invalid_manifests_for_every_kind():
    kinds = {p.parent.name for p in INVALID_FILES}
    assert len(INVALID_FILES) >= 40
    assert kinds == {"gpuuser", "sharedcache", "modelstore", "workspace"}


@pytest.mark.parametrize("path", INVALID_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_the_api_server_refuses_the_manifest_naming_the_field(api, path):
    field = expected_field(path)
    *setup, bad = [d for d in yaml.safe_load_all(path.read_text()) if d]
    try:
        for doc in setup:
            api.kubectl("apply", "-f", "-", input=json.dumps(doc))
        refused = api.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
        assert refused.returncode != 0, f"{path.name} was accepted:\n{refused.stdout}"
        assert field in refused.stderr, f"the error does not name {field}:\n{refused.stderr}"
        if setup:
            stored = json.loads(api.kubectl("get", *locator(bad), "-o", "json").stdout)
            assert stored["spec"] == {**stored["spec"], **setup[-1]["spec"]}, "the refused change was stored"
        else:
            assert api.kubectl("get", *locator(bad), check=False).returncode != 0, "the object exists anyway"
    finally:
        for doc in setup:
            api.kubectl("delete", *locator(doc), "--wait=false", check=False)


def test_server_side_apply_refuses_unknown_fields_too(api):
    # a structural schema would prune the field silently; strict field validation turns that into an error
    doc = yaml.safe_load((INVALID / "workspace" / "unknown-field.yaml").read_text())
    refused = api.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(doc), check=False)
    assert refused.returncode != 0
    assert "spec.gpus" in refused.stderr  # SSA says: .spec.gpus: field not declared in schema


def test_every_example_applies_and_kubectl_get_shows_the_printer_columns(api):
    for example in sorted((REPO_ROOT / "examples").glob("*.yaml")):
        api.kubectl("apply", "-f", str(example))
    lines = api.kubectl("get", "gu", "alice").stdout.split("\n")
    assert lines[0].split() == ["NAME", "TIER", "UID", "STATE", "PHASE", "AGE"]
    # the UID and PHASE columns fill in once an operator runs; the spec columns are there at once
    row = dict(zip(["NAME", "TIER"], lines[1].split()[:2], strict=True))
    assert row == {"NAME": "alice", "TIER": "student"} and "Active" in lines[1].split()
    workspaces = api.kubectl("get", "ws", "-n", "lab-alice").stdout
    assert workspaces.split("\n")[0].split() == ["NAME", "STATE", "PHASE", "GPU", "RUNNING", "FOR", "IDLE", "FOR",
                                                  "KEPT", "UNTIL", "AGE"]
    assert "1g.10gb" in workspaces
    # what `make dev` prints: every short name reaches labkeeper's kind (`sc` would have listed StorageClasses)
    both = api.kubectl("get", "gu,ws,scache,ms", "-A").stdout
    for name in ("gpuuser.labkeeper.io/alice", "workspace.labkeeper.io/pytorch", "sharedcache.labkeeper.io/pip",
                 "modelstore.labkeeper.io/huggingface"):
        assert name in both
    caches = api.kubectl("get", "sharedcaches").stdout.split("\n")
    assert caches[0].split() == ["NAME", "TYPE", "PATH", "SIZE", "PHASE", "AGE"]
    assert {line.split()[0] for line in caches[1:] if line} >= {"pip", "conda", "uv", "npm", "yarn"}
    listed = api.kubectl("get", "labkeeper", "-A", "-o", "name").stdout.split()
    assert "modelstore.labkeeper.io/flux" in listed and "gpuuser.labkeeper.io/alice" in listed


def test_defaults_are_filled_in_by_the_api_server(api):
    api.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "labkeeper.io/v1alpha1", "kind": "Workspace",
        "metadata": {"name": "bare", "namespace": "lab-invalid"}, "spec": {"image": "busybox"}}))
    spec = json.loads(api.kubectl("get", "ws", "bare", "-n", "lab-invalid", "-o", "json").stdout)["spec"]
    assert spec["gpu"] == {"profile": "none", "count": 1}
    assert spec["state"] == "Running"
    assert (spec["cpu"], spec["memory"]) == ("1", "2Gi")
    api.kubectl("delete", "ws", "bare", "-n", "lab-invalid")


def test_a_cache_gets_the_default_alert_thresholds(api):
    api.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "labkeeper.io/v1alpha1", "kind": "SharedCache", "metadata": {"name": "bare-cache"},
        "spec": {"type": "custom", "path": "cache/bare"}}))
    spec = json.loads(api.kubectl("get", "sharedcache", "bare-cache", "-o", "json").stdout)["spec"]
    assert spec["alerts"] == {"warnPercent": 80, "criticalPercent": 95}
    api.kubectl("delete", "sharedcache", "bare-cache")


def test_a_pinned_uid_may_be_set_later_but_not_changed(api):
    user = {"apiVersion": "labkeeper.io/v1alpha1", "kind": "GPUUser", "metadata": {"name": "late-pin"},
            "spec": {"tier": "student"}}
    api.kubectl("apply", "-f", "-", input=json.dumps(user))
    user["spec"]["uid"] = 31000
    api.kubectl("apply", "-f", "-", input=json.dumps(user))
    api.kubectl("delete", "gpuuser", "late-pin")


def test_status_is_a_subresource_so_a_spec_apply_cannot_set_it(api):
    # the session operator may be running and write its own status, so the probe is a node entry only
    # an agent would write: a spec apply cannot plant it, the status subresource can
    spoof = {"node": "spoofed-node", "state": "Provisioned", "message": "set by the user"}
    user = {"apiVersion": "labkeeper.io/v1alpha1", "kind": "GPUUser", "metadata": {"name": "no-self-promotion"},
            "spec": {"tier": "student"}, "status": {"phase": "Ready", "uid": 0, "nodes": [spoof]}}
    api.kubectl("apply", "-f", "-", input=json.dumps(user))
    stored = json.loads(api.kubectl("get", "gpuuser", "no-self-promotion", "-o", "json").stdout)
    status = stored.get("status") or {}
    assert status.get("uid") != 0 and not status.get("nodes"), status
    api.kubectl("patch", "gpuuser", "no-self-promotion", "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": {"nodes": [spoof]}}))
    stored = json.loads(api.kubectl("get", "gpuuser", "no-self-promotion", "-o", "json").stdout)
    assert [n["node"] for n in stored["status"]["nodes"]] == ["spoofed-node"], stored["status"]
    api.kubectl("delete", "gpuuser", "no-self-promotion")


# short names that the NVIDIA GPU Operator's CRDs claim (NVIDIADriver: nvd, nvdriver, nvdrivers); the live API
# server below answers for Kubernetes itself
GPU_OPERATOR_SHORT_NAMES = {"nvd", "nvdriver", "nvdrivers"}


def test_labkeepers_short_names_belong_to_no_other_resource(api):
    lines = api.kubectl("api-resources").stdout.splitlines()
    header = lines[0]
    starts = [header.index(column) for column in ("NAME", "SHORTNAMES", "APIVERSION")]
    others = set(GPU_OPERATOR_SHORT_NAMES)
    ours = {}
    for line in lines[1:]:
        shorts = {s for s in line[starts[1]:starts[2]].strip().split(",") if s}
        if line[starts[2]:].split()[0].startswith("labkeeper.io/"):
            ours[line[:starts[1]].strip()] = shorts
        else:
            others |= shorts
    assert ours == {"gpuusers": {"gu"}, "workspaces": {"ws"}, "sharedcaches": {"scache"}, "modelstores": {"ms"}}
    assert "sc" in others  # StorageClass's: what `kubectl get sc` lists
    assert not set().union(*ours.values()) & others
