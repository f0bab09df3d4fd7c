"""A GPUUser whose tier the lab policy does not have is held, named and explained, with nothing provisioned;
naming a tier that exists releases it. Real API server and operator."""

from __future__ import annotations

import json

import pytest

from labkeeper.testing.processes import wait_for

pytestmark = pytest.mark.integration


def get(cluster, *args) -> dict | None:
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def test_an_unknown_tier_is_held_with_the_field_named_and_nothing_is_provisioned(crds, operator, unique):
    name = f"tia-{unique}"
    crds.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "labkeeper.io/v1alpha1", "kind": "GPUUser", "metadata": {"name": name},
        "spec": {"tier": "gold"}}))
    try:
        def held():
            status = (get(crds, "gu", name) or {}).get("status") or {}
            ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})
            return ready.get("reason") == "UnknownTier" and (status, ready)

        status, ready = wait_for(held, timeout=30, what=f"GPUUser {name} held as UnknownTier")
        assert status["phase"] == "Failed" and ready["status"] == "False"
        assert ready["message"].startswith("spec.tier 'gold' is not a tier of the lab policy")
        assert "valid: faculty, researcher, student" in ready["message"]
        assert not status.get("uid") and not status.get("effectiveLimits"), status
        assert get(crds, "namespace", f"lab-{name}") is None, "a namespace was made for an unknown tier"
        events = crds.kubectl("get", "events", "-A", "--field-selector",
                              f"involvedObject.name={name},reason=UnknownTier", "-o", "name").stdout.split()
        assert events, "no UnknownTier event"

        crds.kubectl("patch", "gu", name, "--type=merge", "-p", json.dumps({"spec": {"tier": "researcher"}}))
        wait_for(lambda: ((get(crds, "gu", name) or {}).get("status") or {}).get("phase") == "Ready",
                 timeout=60, what=f"GPUUser {name} Ready once its tier exists")
        limits = get(crds, "gu", name)["status"]["effectiveLimits"]
        assert limits["cpu"] == {"value": "48", "source": "tier"}
        assert get(crds, "namespace", f"lab-{name}") is not None
    finally:
        crds.kubectl("delete", "gu", name, "--wait=false", check=False)


def test_a_member_whose_tier_goes_away_starts_no_new_workspace_on_default_limits(crds, operator, unique):
    name = f"tib-{unique}"
    namespace = f"lab-{name}"
    crds.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "labkeeper.io/v1alpha1", "kind": "GPUUser", "metadata": {"name": name},
        "spec": {"tier": "student"}}))
    try:
        wait_for(lambda: ((get(crds, "gu", name) or {}).get("status") or {}).get("phase") == "Ready",
                 timeout=60, what=f"GPUUser {name} Ready")
        crds.kubectl("patch", "gu", name, "--type=merge", "-p", json.dumps({"spec": {"tier": "gold"}}))
        wait_for(lambda: ((get(crds, "gu", name) or {}).get("status") or {}).get("phase") == "Failed",
                 timeout=30, what=f"GPUUser {name} held")
        crds.kubectl("apply", "-f", "-", input=json.dumps({
            "apiVersion": "labkeeper.io/v1alpha1", "kind": "Workspace",
            "metadata": {"name": "late", "namespace": namespace},
            "spec": {"image": "busybox", "cpu": "100m", "memory": "64Mi"}}))
        status = wait_for(lambda: ((s := (get(crds, "ws", "late", "-n", namespace) or {}).get("status") or {})
                                   .get("reason") == "UserNotReady" and s), timeout=30, what="late UserNotReady")
        assert status["phase"] == "Pending"
        assert status["message"].startswith(f"GPUUser {name}: spec.tier 'gold' is not a tier of the lab policy")
        assert get(crds, "pod", "ws-late", "-n", namespace) is None
    finally:
        crds.kubectl("delete", "gu", name, "--wait=false", check=False)
