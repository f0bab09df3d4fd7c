"""labctl fails in one or two readable lines with exit 1, and refuses wrong usage with exit 2."""

from __future__ import annotations

import json

import pytest
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import MaxRetryError, NewConnectionError

from labkeeper.cli import doctor, errors
from labkeeper.cli.app import hoist_global_options
from labkeeper.cli.main import run


def api_error(status: int, message: str) -> ApiException:
    err = ApiException(status=status, reason="x")
    err.body = json.dumps({"kind": "Status", "message": message})
    return err


def test_forbidden_names_the_verb_the_namespace_and_where_the_user_may_work():
    err = errors.from_api(api_error(403, 'workspaces.labkeeper.io "x" is forbidden: User "alice" cannot get resource '
                                         '"workspaces" in API group "labkeeper.io" in the namespace "lab-bob"'),
                          namespace="lab-bob", own_namespace="lab-alice")
    assert err.lines() == [
        'error: Forbidden: workspaces.labkeeper.io "x" is forbidden: User "alice" cannot get resource "workspaces" '
        'in API group "labkeeper.io" in the namespace "lab-bob"',
        "hint: ask the lab admin if you need this; you can use only your own namespace (lab-alice), not lab-bob"]
    assert err.exit_code == 1
    # carol acting with --user alice is told about her own namespace, never alice's
    carol = errors.from_api(api_error(403, "forbidden"), namespace="lab-alice", own_namespace="lab-carol")
    assert carol.hint.endswith("your own namespace (lab-carol), not lab-alice")


def test_quota_refusals_and_unreachable_servers_read_plainly():
    quota = errors.from_api(api_error(403, 'pods "ws-x" is forbidden: exceeded quota: labkeeper-limits, '
                                           'requested: requests.cpu=8, used: requests.cpu=30, limited: requests.cpu=32'))
    assert quota.message.startswith("QuotaExceeded: ") and "used: requests.cpu=30" in quota.message
    refused = MaxRetryError(None, "/version", NewConnectionError(None, "Failed to establish a new connection: "
                                                                       "[Errno 111] Connection refused"))
    down = errors.from_exception(refused, "https://127.0.0.1:6443")
    assert down.message == "cannot reach the API server at https://127.0.0.1:6443: Connection refused"
    assert errors.from_exception(ValueError("bug")) is None  # a real bug still shows its traceback


def test_missing_kubeconfig_is_one_line_and_exit_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    assert run(["ls"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no kubeconfig found (looked at ")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2


def test_usage_errors_exit_2_before_touching_the_cluster(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    assert run(["up", "train", "--nope"]) == 2
    assert run(["up", "Train_1"]) == 2
    assert "lowercase" in capsys.readouterr().err
    assert run(["keepalive", "train", "forever"]) == 2
    assert run(["admin", "user", "add", "Carol", "--tier", "student", "--dry-run"]) == 2
    assert run(["admin", "user", "offboard", "carol", "--keep", "--delete"]) == 2
    assert "exactly one of" in capsys.readouterr().err


def test_help_exits_0_and_every_command_has_a_summary(capsys):
    assert run(["--help"]) == 0
    text = capsys.readouterr().out
    for command in ("up", "ls", "status", "shell", "logs", "stop", "start", "down", "keepalive", "disk", "admin"):
        assert f"  {command} " in text
    assert run(["admin", "user", "add", "--help"]) == 0
    assert "--ssh-key" in capsys.readouterr().out


def test_global_options_may_come_after_the_command():
    assert hoist_global_options(["ls", "--kubeconfig", "k", "-o", "json", "--user=bob"]) == [
        "--kubeconfig", "k", "--user=bob", "ls", "-o", "json"]
    assert hoist_global_options(["shell", "x", "--", "ls", "--user", "x"]) == ["shell", "x", "--", "ls", "--user", "x"]


def test_dry_run_prints_a_gpuuser_without_any_cluster(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    key = tmp_path / "carol.pub"
    key.write_text("ssh-ed25519 AAAAC3Nz carol@laptop\n")
    assert run(["admin", "user", "add", "carol", "--tier", "researcher", "--ssh-key", str(key), "-g", "vision",
                "--dry-run", "-o", "yaml"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("apiVersion: labkeeper.io/v1alpha1\nkind: GPUUser\nmetadata:\n  name: carol\n")
    assert "- ssh-ed25519 AAAAC3Nz carol@laptop" in out and "tier: researcher" in out


@pytest.mark.parametrize(("state", "shows_fix"), [("fail", True), ("ok", False), ("skip", False)])
def test_doctor_prints_the_fix_only_for_what_failed(state, shows_fix):
    lines = doctor.render([doctor.Check("CRDs", state, "missing: gpuusers.labkeeper.io", "kubectl apply -f crds/")])
    assert ("       fix: kubectl apply -f crds/" in lines) == shows_fix
    assert lines[-1] == ("1 check(s) failed" if state == "fail" else "all checks passed")
