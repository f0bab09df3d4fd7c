"""What labctl shows, computed from API objects parsed into their models: tables, countdowns, manifests, wait
verdicts."""

from __future__ import annotations

import datetime as dt

import pytest

from labkeeper.api.resources import GPUUser, Workspace
from labkeeper.cli import views

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def ws(name: str, phase: str | None = None, *, generation: int = 1, observed: int | None = 1, user: str = "alice",
       spec: dict | None = None, **status) -> Workspace:
    body = {"metadata": {"name": name, "namespace": f"lab-{user}", "generation": generation},
            "spec": {"image": "busybox", "gpu": {"profile": "1g.10gb", "count": 1}, **(spec or {})}, "status": {}}
    if phase:
        body["status"] = {"phase": phase, "observedGeneration": observed, **status}
    return Workspace.model_validate(body)


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("1d", 86400),
                                                ("90s", 90), ("1.5h", 5400)])
def test_durations_people_type_are_understood(text, seconds):
    assert views.parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "3parsecs", "2 hours", "0m", "h"])
def test_a_bad_duration_says_what_would_be_valid(text):
    with pytest.raises(ValueError, match=r"30m, 2h|longer than zero"):
        views.parse_duration(text)


def test_countdowns_read_in_the_largest_sensible_unit():
    assert views.human_duration(dt.timedelta(minutes=4, seconds=5)) == "4m"
    assert views.human_duration(dt.timedelta(hours=2, minutes=5)) == "2h05m"
    assert views.human_duration(dt.timedelta(days=1, hours=3)) == "1d03h"
    assert views.human_duration(-90) == "-1m"
    assert views.human_bytes(3 * 1024**3) == "3.0 GiB"


def test_ls_shows_idle_countdown_keepalive_and_the_reason_a_workspace_waits():
    items = [
        ws("train", "Running", node="gpu-node-1", runningSince="2026-03-01T10:00:00Z", runtimeSeconds=600,
           idleDeadline="2026-03-01T12:25:00Z", message="running on gpu-node-1"),
        ws("eval", "Pending", reason="QuotaExceeded",
           message="2.00 GPU equivalents in use + 1.00 requested > cap 2.00 for tier student"),
        ws("notebook", "Running", spec={"keepAliveUntil": "2026-03-01T15:00:00Z"}, idleDeadline="2026-03-01T15:00:00Z",
           keepAliveUntil="2026-03-01T15:00:00Z"),
        # asked for four days, granted the policy's cap: ls shows what the operator granted, not the spec
        ws("greedy", "Running", spec={"keepAliveUntil": "2026-03-05T12:00:00Z"}, idleDeadline="2026-03-02T12:00:00Z",
           keepAliveUntil="2026-03-02T12:00:00Z"),
    ]
    headers, rows = views.workspace_rows(items, NOW)
    table = {row[0]: dict(zip(headers, row, strict=True)) for row in rows}
    assert table["train"]["IDLE"] == "stop in 25m"
    assert table["train"]["RUNTIME"] == "2h10m"  # 10 closed minutes + 2 open hours
    assert table["train"]["GPU"] == "1g.10gb"
    assert table["eval"]["PHASE"] == "Pending"
    assert table["eval"]["MESSAGE"].startswith("QuotaExceeded: 2.00 GPU equivalents in use")
    assert table["notebook"]["IDLE"] == "kept 3h00m"
    assert table["greedy"]["IDLE"] == "kept 1d00h"


def test_ls_across_users_names_each_workspace_owner():
    headers, rows = views.workspace_rows([ws("a", "Running", user="bob"), ws("b", "Running")], NOW, with_user=True)
    assert headers[0] == "USER"
    assert [r[:2] for r in rows] == [["alice", "b"], ["bob", "a"]]


def test_waiting_ignores_a_status_written_for_the_previous_spec():
    stale = ws("train", "Stopped", generation=3, observed=2)
    verdict = views.wait_verdict(stale, "Running")
    assert not verdict.done and "operator" in verdict.line


def test_waiting_ends_well_when_running_and_badly_on_quota_with_the_numbers():
    assert views.wait_verdict(ws("t", "Running", message="running on gpu-node-1"), "Running") == views.Verdict(
        True, True, "t: Running: running on gpu-node-1")
    quota = views.wait_verdict(ws("t", "Pending", reason="QuotaExceeded",
                                  message="2.00 GPU equivalents in use + 1.00 requested > cap 2.00"), "Running")
    assert quota.done and not quota.ok
    assert "QuotaExceeded: 2.00 GPU equivalents in use + 1.00 requested > cap 2.00" in quota.line
    failed = views.wait_verdict(ws("t", "Failed", reason="ErrImagePull", message="no such image"), "Running")
    assert failed.done and not failed.ok and "ErrImagePull: no such image" in failed.line


def test_hints_after_waiting_fit_where_the_workspace_stood():
    def hint(**status):
        verdict = views.wait_verdict(ws("t", **status), "Running")
        if not verdict.done:
            verdict = views.Verdict(True, False, "timed out after 5s waiting for t to be Running; last seen: x",
                                    verdict.phase, verdict.reason, verdict.current)
        return views.wait_hint(verdict, "t")

    waiting = hint(phase="Pending", reason="Unschedulable", message="0/2 nodes are available")
    assert "waiting for a device" in waiting and "operator" not in waiting
    assert "operator" in hint(phase="Stopped", generation=2, observed=1)
    count = hint(phase="Pending", reason="QuotaExceeded", message="3 workspaces running, tier student allows 3")
    assert "as many workspaces as your tier allows" in count and "GPUs" not in count
    assert "free GPUs" in hint(phase="Pending", reason="QuotaExceeded", message="2.00 GPU equivalents in use")


def test_labctl_refuses_beyond_the_tier_in_the_operators_words():
    limits = {"cpu": "32", "memory": "32Gi", "allowedProfiles": "1g.10gb,2g.20gb", "allowedImages": "",
              "keepAliveMax": "24h"}
    user = GPUUser.model_validate({"metadata": {"name": "alice"}, "spec": {"tier": "student"}, "status": {
        "effectiveLimits": {field: {"value": value, "source": "tier"} for field, value in limits.items()}}})
    assert views.entitlement_problem(user, {"image": "x", "cpu": "64"}) == \
        "spec.cpu 64 exceeds the tier student limit of 32"
    assert views.entitlement_problem(user, {"image": "x", "gpu": {"profile": "7g.80gb"}}).startswith(
        "spec.gpu.profile '7g.80gb' is not allowed for tier student")
    assert views.entitlement_problem(user, {"image": "x", "cpu": "4", "memory": "16Gi"}) is None
    no_limits = GPUUser.model_validate({"metadata": {"name": "bob"}, "spec": {}, "status": {}})
    assert views.entitlement_problem(no_limits, {"cpu": "999"}) is None  # no limits: operator decides
    assert views.keep_alive_cap(user) == dt.timedelta(hours=24)


def test_waiting_goes_on_while_unschedulable_and_idle_warning_counts_as_running():
    assert not views.wait_verdict(ws("t", "Pending", reason="Unschedulable", message="0/2 nodes"), "Running").done
    assert views.wait_verdict(ws("t", "IdleWarning"), "Running").ok
    assert views.wait_verdict(ws("t", "Stopped"), "Stopped").ok
    assert not views.wait_verdict(None, "Running").ok


def test_workspace_manifest_is_what_kubectl_apply_would_take():
    body = views.workspace_manifest("train", "lab-alice", image="pytorch", gpu="2g.20gb", cpu="4", memory="16Gi")
    assert body == {"apiVersion": "labkeeper.io/v1alpha1", "kind": "Workspace",
                    "metadata": {"name": "train", "namespace": "lab-alice"},
                    "spec": {"image": "pytorch", "gpu": {"profile": "2g.20gb", "count": 1}, "state": "Running",
                             "cpu": "4", "memory": "16Gi"}}
    with pytest.raises(ValueError, match=r"valid: 1g\.10gb"):
        views.workspace_manifest("train", "lab-alice", image="x", gpu="8g.99gb")
    with pytest.raises(ValueError, match="lowercase"):
        views.workspace_manifest("Train_1", "lab-alice", image="x")


def test_gpuuser_manifest_refuses_names_that_cannot_be_a_namespace():
    body = views.gpuuser_manifest("carol", tier="researcher", groups=["vision"], ssh_keys=["ssh-ed25519 AAAA c@x"])
    assert body["spec"] == {"displayName": "carol", "tier": "researcher", "state": "Active", "groups": ["vision"],
                            "sshKeys": ["ssh-ed25519 AAAA c@x"]}
    for bad in ("Carol", "carol_b", "1carol", "c" * 40, "bob-", "c" * 33, "root"):
        with pytest.raises(ValueError, match="lab-"):
            views.gpuuser_manifest(bad, tier="student")
    # the API's rule, not a second one: 32 characters are a valid username
    assert views.gpuuser_manifest("c" * 32, tier="student")["metadata"]["name"] == "c" * 32
    with pytest.raises(ValueError, match="group 'sudo' is a privileged or system group"):
        views.gpuuser_manifest("carol", tier="student", groups=["sudo"])


def test_ssh_key_files_keep_keys_and_skip_comments_but_refuse_private_keys():
    text = "# laptop\nssh-ed25519 AAAAC3 carol@laptop\n\necdsa-sha2-nistp256 AAAAE2 carol@desk\n"
    assert views.ssh_keys_from_text(text, "keys.pub") == ["ssh-ed25519 AAAAC3 carol@laptop",
                                                           "ecdsa-sha2-nistp256 AAAAE2 carol@desk"]
    with pytest.raises(ValueError, match="not an OpenSSH public key"):
        views.ssh_keys_from_text("-----BEGIN OPENSSH PRIVATE KEY-----\n", "id_ed25519")


def test_status_puts_each_limit_beside_its_use():
    user = GPUUser.model_validate({"metadata": {"name": "alice"}, "spec": {"tier": "student"},
            "status": {"phase": "Ready", "usage": {"gpuEquivalents": 1.5},
                       "nodes": [{"node": "a", "homeBytes": 2 * 1024**3}, {"node": "b", "homeBytes": 1024}],
                       "effectiveLimits": {"maxGpuEquivalents": {"value": "2", "source": "tier"},
                                           "cpu": {"value": "32", "source": "tier"},
                                           "maxWorkspaces": {"value": "3", "source": "override"},
                                           "keepAliveMax": {"value": "24h", "source": "default"}}}})
    quota = {"status": {"used": {"requests.cpu": "4", "requests.memory": "8Gi"}}}
    summary = views.usage_summary(user, [ws("a", "Running"), ws("b", "Stopped")], quota)
    assert summary["keepAliveMax"] == "24h"
    lines = {what: (used, limit) for what, used, limit in summary["lines"]}
    assert lines["GPU equivalents"] == ("1.5", "2")
    assert lines["CPU"] == ("4", "32")
    assert lines["running workspaces"] == ("1", "3")
    assert lines["disk (home)"][0] == "2.0 GiB"
    _, rows = views.limits_rows(user)
    assert rows[-2:] == [["maxWorkspaces", "3", "override"], ["keepAliveMax", "24h", "default"]]


def test_a_long_queue_names_the_first_few_ahead_and_counts_the_rest_from_the_position():
    queue = {"position": 9, "ahead": ["a/w", "b/w", "c/w", "d/w", "e/w"], "reason": "no free 1g.10gb slice (7 in use)"}
    waiting = ws("slice", "Pending", reason="WaitingForDevice", waitingSince="2026-03-01T11:50:00.000000Z",
                 queue=queue)
    assert views.queue_text(waiting, NOW).startswith("#9 in the queue behind a/w, b/w, c/w and 5 more: ")
    _headers, rows = views.queue_rows([waiting], NOW)
    assert rows[0][2] == "a/w, b/w, c/w, d/w, e/w ..."


def test_a_waiting_workspace_shows_its_place_who_is_ahead_why_and_when_it_may_start():
    queue = {"position": 2, "ahead": ["bob/slice"], "reason": "no free 1g.10gb slice (2 in use); 1 workspace ahead of you",
             "relativeUsage": 1.5, "estimatedStart": "2026-03-01T12:12:00Z",
             "estimateBasis": "the hold of carol/train expires"}
    waiting = ws("slice", "Pending", reason="WaitingForDevice", message="no free 1g.10gb slice (2 in use); 1 workspace "
                 "ahead of you", waitingSince="2026-03-01T11:50:00.000000Z", queue=queue)
    text = ("#2 in the queue behind bob/slice: no free 1g.10gb slice (2 in use); 1 workspace ahead of you; may start "
            "at 12:12:00 UTC, in 12m (the hold of carol/train expires)")
    assert views.queue_text(waiting, NOW) == text
    _headers, rows = views.workspace_rows([waiting, ws("other", "Running")], NOW)
    assert rows[1][-1] == text  # labctl ls: the MESSAGE column
    headers, rows = views.queue_rows([waiting, ws("other", "Running")], NOW)
    assert headers == ["WAITING", "PLACE", "AHEAD", "YOUR USAGE", "WHY"]
    assert rows == [["slice", "2", "bob/slice", "1.5", text]]
