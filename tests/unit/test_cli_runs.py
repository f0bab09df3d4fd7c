"""What labctl shows of batch runs, and the exit code `labctl run` returns, from Workspace models."""

from __future__ import annotations

import datetime as dt

import pytest

from labkeeper.api.resources import Workspace
from labkeeper.cli import views

NOW = dt.datetime(2026, 12, 6, 21, 0, tzinfo=dt.UTC)


def run(name: str, phase: str | None = None, *, mode: str = "Batch", **status) -> Workspace:
    return Workspace.model_validate({"metadata": {"name": name, "namespace": "lab-eve", "creationTimestamp": "2026-12-06T20:50:00Z"},
            "spec": {"mode": mode, "image": "busybox", "command": ["python", "train.py"],
                     "gpu": {"profile": "2g.20gb", "count": 1}},
            "status": {"phase": phase, **status} if phase else {}})


@pytest.mark.parametrize(("status", "code"), [
    ({"phase": "Succeeded", "exitCode": 0}, 0),
    ({"phase": "Failed", "exitCode": 3}, 3),
    ({"phase": "Failed", "exitCode": 137, "reason": "OOMKilled"}, 137),
    ({"phase": "Failed", "exitCode": 0, "reason": "DeadlineExceeded"}, 1),  # the pod failed, not the command
    ({"phase": "Failed", "reason": "Evicted"}, 1),
    ({"phase": "Stopped", "reason": "Idle"}, 1),  # culled before its command ended
])
def test_labctl_run_exits_with_the_commands_code(status, code):
    assert views.run_exit_code(run("r", **status)) == code


def test_labctl_runs_lists_only_runs_with_phase_exit_code_gpu_and_age():
    waiting = run("queued", "Pending", reason="WaitingForDevice", waitingSince="2026-12-06T20:55:00Z",
                  queue={"position": 2, "ahead": ["bob/train"], "reason": "no free 2g.20gb slice (1 in use)"})
    items = [run("ok", "Succeeded", exitCode=0, reason="Completed", message="the command completed with exit code 0"),
             run("bad", "Failed", exitCode=3, reason="Error", message="the command exited with code 3"),
             waiting, run("notebook", "Running", mode="Interactive")]
    headers, rows = views.run_rows(items, NOW)
    assert headers == ["NAME", "PHASE", "EXIT", "GPU", "AGE", "MESSAGE"]
    assert rows == [
        ["bad", "Failed", "3", "2g.20gb", "10m", "Error: the command exited with code 3"],
        ["ok", "Succeeded", "0", "2g.20gb", "10m", "Completed: the command completed with exit code 0"],
        ["queued", "Pending", "-", "2g.20gb", "10m", "#2 in the queue behind bob/train: no free 2g.20gb slice (1 in use)"],
    ]


def test_runs_across_users_names_each_runs_owner_beside_its_row():
    theirs = run("eval", "Running").model_copy(update={"metadata": {"name": "eval", "namespace": "lab-bob"}})
    headers, rows = views.run_rows([run("ok", "Succeeded", exitCode=0), theirs], NOW, with_user=True)
    assert headers[:2] == ["USER", "NAME"]
    assert [row[:3] for row in rows] == [["bob", "eval", "Running"], ["eve", "ok", "Succeeded"]]


def test_a_run_needs_a_command_before_anything_is_applied():
    with pytest.raises(ValueError, match="needs a command after --"):
        views.workspace_manifest("r", "lab-eve", image="busybox", gpu="1g.10gb", batch=True)
    spec = views.workspace_manifest("r", "lab-eve", image="busybox", gpu="1g.10gb", command=["python", "t.py"],
                                    batch=True)["spec"]
    assert (spec["mode"], spec["command"]) == ("Batch", ["python", "t.py"])


def test_while_it_waits_labctl_run_says_where_it_stands():
    waiting = run("r", "Pending", reason="WaitingForDevice", waitingSince="2026-12-06T20:55:00Z",
                  queue={"position": 1, "reason": "no free 2g.20gb slice (1 in use); you are next"})
    assert views.run_wait_line(waiting, NOW) == "r: waiting, #1 in the queue: no free 2g.20gb slice (1 in use); you are next"
    over = run("r", "Pending", reason="QuotaExceeded", message="0.29 GPU equivalents in use + 0.29 requested > cap 0.50")
    assert views.run_wait_line(over, NOW) == ("r: Pending (QuotaExceeded: 0.29 GPU equivalents in use + 0.29 requested "
                                              "> cap 0.50)")
    done = run("r", "Failed", reason="Error", message="the command exited with code 3", exitCode=3)
    assert views.run_end_line(done) == "run r Failed (Error): the command exited with code 3"
