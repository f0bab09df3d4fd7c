"""labctl's reading of an exec's exit status and its find-or-start of JupyterLab, against a scripted
workspace (the end-to-end runs are in tests/cli/test_access_e2e.py)."""

from __future__ import annotations

import json
import re

import pytest

from labkeeper.cli import access
from labkeeper.cli.errors import LabctlError


def test_a_command_that_succeeded_exits_zero():
    assert access.exit_status('{"metadata":{},"status":"Success"}') == (0, "")


def test_a_command_that_exited_non_zero_keeps_its_code():
    status = {"status": "Failure", "reason": "NonZeroExitCode", "message": "command terminated with non-zero exit code",
              "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}}
    assert access.exit_status(json.dumps(status)) == (3, "")


def test_a_command_the_runtime_could_not_run_is_one_with_the_runtimes_reason():
    status = {"status": "Failure", "reason": "InternalError",
              "message": 'exec: "nvidia-smi": executable file not found in $PATH'}
    assert access.exit_status(json.dumps(status)) == (1, 'exec: "nvidia-smi": executable file not found in $PATH')


def test_a_stream_cut_before_the_status_is_a_failure_not_a_success():
    code, message = access.exit_status("")
    assert code == 1 and "closed before the command reported its exit status" in message


class ScriptedWorkspace:
    """Answers labctl's exec calls as a workspace whose JupyterLab lists itself after `ready_after` polls."""

    def __init__(self, *, has_jupyter: bool = True, serving_token: str | None = None, ready_after: int | None = 0):
        self.has_jupyter, self.serving_token, self.ready_after = has_jupyter, serving_token, ready_after
        self.started: list[str] = []
        self.polls_after_start = 0

    def __call__(self, s, pod, command, timeout=30):
        script = command[-1]
        if script.startswith("jupyter server list"):
            if self.started:
                self.polls_after_start += 1
                if self.ready_after is not None and self.polls_after_start > self.ready_after:
                    token = re.search(r"--ServerApp\.token=(\w+)", self.started[-1]).group(1)
                    return 0, json.dumps({"port": 8888, "token": token}) + "\n"
            if self.serving_token is not None:
                return 0, json.dumps({"port": 9999, "token": "other"}) + "\n" + \
                    json.dumps({"port": 8888, "token": self.serving_token}) + "\n"
            return 0, ""
        if script == "command -v jupyter":
            return (0, "/opt/conda/bin/jupyter\n") if self.has_jupyter else (1, "")
        self.started.append(script)
        return 0, ""


def test_a_running_jupyterlab_on_the_port_is_found_not_started_again(monkeypatch):
    workspace = ScriptedWorkspace(serving_token="abc123")
    monkeypatch.setattr(access, "exec_capture", workspace)
    assert access.find_or_start_jupyter(None, "ws-nb", 8888) == ("abc123", False)
    assert workspace.started == []


def test_a_started_jupyterlab_is_returned_only_once_it_lists_itself_with_the_new_token(monkeypatch):
    workspace = ScriptedWorkspace(ready_after=2)
    monkeypatch.setattr(access, "exec_capture", workspace)
    token, started = access.find_or_start_jupyter(None, "ws-nb", 8888, poll_seconds=0)
    assert started and workspace.polls_after_start == 3
    assert len(workspace.started) == 1 and f"--ServerApp.token={token}" in workspace.started[0]
    assert "--port=8888" in workspace.started[0] and "--ip=127.0.0.1" in workspace.started[0]


def test_a_jupyterlab_that_never_serves_is_an_error_pointing_at_its_log(monkeypatch):
    monkeypatch.setattr(access, "exec_capture", ScriptedWorkspace(ready_after=None))
    with pytest.raises(LabctlError) as raised:
        access.find_or_start_jupyter(None, "ws-nb", 8888, wait_seconds=0, poll_seconds=0)
    assert "did not start serving on port 8888" in raised.value.message
    assert ".labctl-jupyter.log" in raised.value.hint


def test_an_image_without_jupyter_says_so_and_starts_nothing(monkeypatch):
    workspace = ScriptedWorkspace(has_jupyter=False)
    monkeypatch.setattr(access, "exec_capture", workspace)
    with pytest.raises(LabctlError, match="has no JupyterLab"):
        access.find_or_start_jupyter(None, "ws-nb", 8888)
    assert workspace.started == []
