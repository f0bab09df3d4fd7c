"""Objects enter labkeeper through api.resources.read_object: parsed into their model, or, when the API holds
what the model refuses, a stand-in that shows the object and says why."""

from __future__ import annotations

import pytest

from labkeeper.api.resources import GPUUser, InvalidObject, Workspace, parse_object, read_object, wire

RUNNING = {"phase": "Running", "node": "node-a", "podUID": "0b8f3a4e", "runtimeSeconds": 60}


def test_a_refusal_names_the_object_each_field_its_value_and_the_rule():
    with pytest.raises(InvalidObject) as refused:
        parse_object(GPUUser, {"metadata": {"name": "mallory"}, "spec": {"groups": ["sudo"], "shell": "bash"}})
    text = str(refused.value)
    assert text.startswith("GPUUser mallory: spec.groups[0]: group 'sudo' is a privileged or system group")
    assert "spec.shell: String should match pattern" in text and "(got 'bash')" in text


def test_an_object_the_model_accepts_is_read_as_it_is():
    body = {"metadata": {"name": "nb", "namespace": "lab-alice"}, "spec": {"image": "busybox"}, "status": RUNNING}
    ws, why = read_object(Workspace, body)
    assert why is None and ws.refused is None and ws == Workspace.model_validate(body)


def test_a_refused_workspace_keeps_its_name_and_status_and_only_its_specs_required_fields():
    # stored before the CEL rule that caps idleTimeout at 168h
    body = {"metadata": {"name": "nb", "namespace": "lab-alice"},
            "spec": {"image": "busybox", "idleTimeout": "999h", "gpu": {"profile": "1g.10gb"}}, "status": RUNNING}
    ws, why = read_object(Workspace, body)
    assert why is not None and why.startswith("Workspace nb: spec.idleTimeout:") and ws.refused == why
    assert (ws.name, ws.namespace, ws.status.phase, ws.status.pod_uid) == ("nb", "lab-alice", "Running", "0b8f3a4e")
    assert ws.spec.image == "busybox" and ws.spec.gpu.profile == "none", "the stand-in asks for no device"


def test_a_status_no_writer_made_leaves_the_stand_in_without_one():
    body = {"metadata": {"name": "nb", "namespace": "lab-alice"}, "spec": {"image": "busybox"},
            "status": {"queue": {"position": 0}}}
    ws, why = read_object(Workspace, body)
    assert why is not None and "status.queue.position" in why and ws.status is None


def test_a_newer_crds_spec_fields_are_left_out_and_a_newer_agents_status_fields_kept():
    # during a rolling upgrade the CRD already has fields this agent or labctl does not know
    body = {"metadata": {"name": "alice"}, "spec": {"tier": "student", "quotaClass": "gold",
                                                    "limits": {"cpu": "4", "maxGpuHours": 100}},
            "status": {"uid": 20001, "nodes": [{"node": "node-b", "state": "Provisioned", "scratchBytes": 7}]}}
    user, why = read_object(GPUUser, body)
    assert why is None and user.spec.tier == "student" and user.spec.limits.cpu == "4"
    assert wire(user.status) == {"uid": 20001, "nodes": [{"node": "node-b", "state": "Provisioned",
                                                          "scratchBytes": 7}]}
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        GPUUser.model_validate(body)  # a manifest a person writes is still held to this version's fields
