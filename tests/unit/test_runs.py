"""How a Batch run ended, decided from its pod alone: phase, reason, exit code and the words a person reads."""

from __future__ import annotations

import datetime as dt

import pytest

from labkeeper.api.runs import RunEnd, is_batch, run_end

FINISHED = "2026-12-06T21:00:05Z"


def pod(phase: str | None, terminated: dict | None = None, *, running: bool = False, reason: str | None = None,
        message: str | None = None, name: str = "workspace") -> dict:
    state = {"terminated": {"finishedAt": FINISHED, **terminated}} if terminated is not None else \
        ({"running": {"startedAt": "2026-12-06T21:00:00Z"}} if running else {"waiting": {"reason": "ContainerCreating"}})
    status: dict = {"containerStatuses": [{"name": name, "state": state}]}
    if phase:
        status["phase"] = phase
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    return {"metadata": {"name": "ws-train"}, "status": status}


CASES = [
    # (what happened, pod, phase, reason, exit code, words in the message)
    ("exit 0", pod("Succeeded", {"exitCode": 0, "reason": "Completed"}),
     "Succeeded", "Completed", 0, "completed with exit code 0"),
    ("exit 3", pod("Failed", {"exitCode": 3, "reason": "Error"}), "Failed", "Error", 3, "exited with code 3"),
    ("exit 1 without a reason", pod("Failed", {"exitCode": 1}), "Failed", "Error", 1, "exited with code 1"),
    ("out of memory", pod("Failed", {"exitCode": 137, "reason": "OOMKilled"}),
     "Failed", "OOMKilled", 137, "running out of memory"),
    ("killed by a signal", pod("Failed", {"exitCode": 143, "reason": "Error"}), "Failed", "Error", 143, "code 143"),
    ("the container's own message", pod("Failed", {"exitCode": 2, "reason": "Error", "message": "bad flag\n"}),
     "Failed", "Error", 2, "(bad flag)"),
    ("evicted before it said anything", pod("Failed", None, running=True, reason="Evicted",
                                             message="The node was low on resource: memory."),
     "Failed", "Evicted", None, "low on resource"),
    ("exit 0 but the pod failed", pod("Failed", {"exitCode": 0, "reason": "Completed"}, reason="DeadlineExceeded"),
     "Failed", "DeadlineExceeded", 0, "its pod failed"),
    ("the container is named otherwise", pod("Succeeded", {"exitCode": 0}, name="main"),
     "Succeeded", "Completed", 0, "exit code 0"),
]


@pytest.mark.parametrize(("what", "the_pod", "phase", "reason", "code", "words"), CASES, ids=[c[0] for c in CASES])
def test_the_run_ends_as_its_pod_says(what, the_pod, phase, reason, code, words):
    end = run_end(the_pod)
    assert isinstance(end, RunEnd)
    assert (end.phase, end.reason, end.exit_code) == (phase, reason, code), what
    assert words in end.message


@pytest.mark.parametrize("the_pod", [None, pod(None), pod("Pending"), pod("Running", running=True),
                                     # the container is done but the pod still holds its devices
                                     pod("Running", {"exitCode": 0, "reason": "Completed"})],
                         ids=["no pod", "no phase", "pending", "running", "container done, pod running"])
def test_a_run_whose_pod_has_not_ended_has_not_ended(the_pod):
    assert run_end(the_pod) is None


def test_the_end_is_dated_by_the_container():
    end = run_end(pod("Succeeded", {"exitCode": 0}))
    assert end is not None and end.finished_at == dt.datetime(2026, 12, 6, 21, 0, 5, tzinfo=dt.UTC)


@pytest.mark.parametrize(("spec", "batch"), [({}, False), ({"mode": "Interactive"}, False), ({"mode": "Batch"}, True)])
def test_a_run_is_a_workspace_in_batch_mode(spec, batch):
    assert is_batch({"spec": spec}) is batch
