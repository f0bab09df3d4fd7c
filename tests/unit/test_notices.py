"""What the notice in a user's home says, from the Workspace status the operator writes: no host, no cluster."""

import datetime as dt
import logging

from labkeeper.agent import notices
from labkeeper.agent.activity_loop import ActivityLoop
from labkeeper.api.policy import LabPolicy
from labkeeper.api.resources import GPUUser, Workspace, read_object
from labkeeper.controller.enforcement import enforcement_clock

T0 = dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.UTC)
MIN = dt.timedelta(minutes=1)
HOUR = 60 * MIN


def fmt(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def notice_text(body, now):
    """The notice for a Workspace as the API holds it, read as the agent's activity loop reads it."""
    return notices.notice_text(read_object(Workspace, body)[0], now)


def desired_notices(bodies, node, now):
    return notices.desired_notices([read_object(Workspace, b)[0] for b in bodies], node, now)


def owners_from_users(bodies):
    return notices.owners_from_users([read_object(GPUUser, b)[0] for b in bodies])


def workspace(name="train", *, phase="Running", node="node-a", spec=None, **status):
    return {"metadata": {"name": name, "namespace": "lab-alice"}, "spec": {"image": "img"} | (spec or {}),
            "status": {"phase": phase, "node": node} | status}


def enforced(now, *, idle=30 * MIN, max_runtime=24 * HOUR, runtime_before=0, running_since=T0, reason=None,
             phase="Running", idle_fractions=(0.8, 0.95), runtime_fractions=(0.75, 0.9), spec=None):
    """A running workspace's status as the operator's enforcement writes it at `now`."""
    observed = {"lastActivity": None, "activityReason": reason}
    desired = {"runningSince": fmt(running_since), "runtimeSeconds": runtime_before}
    clock = enforcement_clock(observed, desired, now, T0 - HOUR, idle, max_runtime,
                              keep_alive_until=None, keep_alive_cap=24 * HOUR)
    warnings = [w.as_status(now) for w in clock.due_warnings(idle_fractions, runtime_fractions)]
    return workspace(phase=phase, spec=spec, warnings=warnings, activityReason=reason, **desired, **clock.status())


def test_an_idle_warning_says_when_the_workspace_stops_and_how_to_keep_it():
    ws = enforced(T0 + 24 * MIN, reason="cpu 0.00 cores; gpu idle 24m", phase="IdleWarning")
    assert [w["key"] for w in ws["status"]["warnings"]] == ["idle-80"]
    text = notice_text(ws, T0 + 24 * MIN)
    first, hint = text.splitlines()
    assert first == ("labkeeper: workspace train in lab-alice will be stopped at 2026-11-23T09:30:00Z (in 6m): "
                     "idle for 24m of 30m; last seen: cpu 0.00 cores; gpu idle 24m")
    assert "`labctl keepalive train 2h`" in hint


def test_the_idle_notice_changes_once_a_minute_not_every_sample():
    ws = enforced(T0 + 24 * MIN, reason="cpu 0.00 cores", phase="IdleWarning")
    at_24 = notice_text(ws, T0 + 24 * MIN)
    assert notice_text(ws, T0 + 24 * MIN + dt.timedelta(seconds=40)) == at_24
    assert "(in 5m): idle for 25m of 30m" in notice_text(ws, T0 + 25 * MIN)
    assert "(in 1m): idle for 29m of 30m" in notice_text(ws, T0 + 29 * MIN)
    assert "(in under a minute): idle for 29m of 30m" in notice_text(ws, T0 + 29 * MIN + dt.timedelta(seconds=30))
    assert "(due now)" in notice_text(ws, T0 + 30 * MIN)


def test_a_kept_alive_workspace_says_until_when_it_is_kept():
    ws = enforced(T0 + 25 * MIN, reason="cpu 0.00 cores", phase="IdleWarning")
    ws["spec"]["keepAliveUntil"] = fmt(T0 + 3 * HOUR)
    ws["status"]["idleDeadline"] = fmt(T0 + 3 * HOUR)  # the operator moves the deadline to the keep-alive
    first = notice_text(ws, T0 + 25 * MIN).splitlines()[0]
    assert first == ("labkeeper: workspace train in lab-alice will be stopped at 2026-11-23T12:00:00Z (in 2h35m): "
                     "idle for 25m, kept alive until then; last seen: cpu 0.00 cores")


def test_a_runtime_warning_counts_earlier_runs_and_sends_the_user_to_an_admin():
    # 20 hours in earlier runs, this one from T0: the 24h limit falls at T0+4h; at T0+2h 22h have run
    now = T0 + 2 * HOUR
    ws = enforced(now, idle=None, runtime_before=20 * 3600, reason="gpu 41% SM on 1g.10gb")
    assert [w["key"] for w in ws["status"]["warnings"]] == ["runtime-75", "runtime-90"]
    first, hint = notice_text(ws, now).splitlines()
    assert first == ("labkeeper: workspace train in lab-alice will be stopped at 2026-11-23T13:00:00Z (in 2h00m): "
                     "it has run 22h00m of its 24h00m limit (runtime counts across restarts)")
    assert "ask a lab admin" in hint and "keepalive` does not extend" in hint


def test_idle_and_runtime_warnings_together_list_the_earlier_deadline_first():
    now = T0 + 25 * MIN
    ws = enforced(now, runtime_before=int(23.5 * 3600), phase="IdleWarning")
    text = notice_text(ws, now)
    assert text.index("idle for 25m of 30m") < text.index("it has run 23h55m of its 24h00m limit")
    assert text.count("labkeeper: workspace train") == 2


def test_a_workspace_stopped_as_idle_says_when_why_and_how_to_start_it_again():
    ws = workspace(phase="Stopped", stopReason="Idle", reason="Idle", idleSince=fmt(T0),
                   idleDeadline=fmt(T0 + 30 * MIN), stoppedAt=fmt(T0 + 30 * MIN + 4 * dt.timedelta(seconds=1)),
                   activityReason="cpu 0.00 cores; gpu idle 30m", warnings=[{"key": "idle-80"}, {"key": "idle-95"}])
    assert notice_text(ws, T0 + 40 * MIN) == (
        "labkeeper: workspace train in lab-alice was stopped at 2026-11-23T09:30:00Z because it was idle for 30m "
        "(last seen: cpu 0.00 cores; gpu idle 30m).\n"
        "Your home and files are kept; start it again with `labctl start train`.\n")
    stopping = workspace(phase="Stopping", stopReason="Idle", idleSince=fmt(T0), idleDeadline=fmt(T0 + 30 * MIN),
                         activityReason="cpu 0.00 cores; gpu idle 30m")
    assert notice_text(stopping, T0 + 30 * MIN) == notice_text(ws, T0 + 40 * MIN), "one text from cull to Stopped"


def test_a_workspace_stopped_at_its_runtime_limit_cannot_simply_be_started_again():
    ws = workspace(phase="Stopped", stopReason="MaxRuntime", runtimeSeconds=24 * 3600,
                   runtimeDeadline=fmt(T0 + 4 * HOUR), stoppedAt=fmt(T0 + 4 * HOUR + MIN))
    first, hint = notice_text(ws, T0 + 5 * HOUR).splitlines()
    assert first == ("labkeeper: workspace train in lab-alice was stopped at 2026-11-23T13:00:00Z because it "
                     "reached its runtime limit (24h00m in total).")
    assert "`labctl start train` will not run it again" in hint and "raises your maxRuntime" in hint


def test_no_notice_for_a_running_workspace_without_warnings_or_one_the_user_stopped():
    assert notice_text(enforced(T0 + 10 * MIN), T0 + 10 * MIN) is None
    assert notice_text(workspace(phase="Stopped", stopReason="Stopped"), T0) is None
    assert notice_text(workspace(phase="Starting", stopReason=None, warnings=[{"key": "idle-80"}]), T0) is None
    assert notice_text(workspace(phase="Failed", reason="CrashLoopBackOff"), T0) is None


def test_activity_clears_the_notice():
    warned = enforced(T0 + 25 * MIN, phase="IdleWarning")
    assert notice_text(warned, T0 + 25 * MIN) is not None
    # what the operator writes after the agent reports activity: idle warnings of the old stretch dropped
    active = warned | {"status": warned["status"] | {"phase": "Running", "warnings": []}}
    assert notice_text(active, T0 + 26 * MIN) is None


def test_this_node_writes_notices_of_its_workspaces_and_removes_silent_ones_everywhere():
    now = T0 + 25 * MIN
    here = enforced(now, phase="IdleWarning")
    elsewhere = enforced(now, phase="IdleWarning")
    elsewhere["metadata"]["name"], elsewhere["status"]["node"] = "eval", "node-b"
    quiet = workspace("quiet", node="node-b")
    stopped = workspace("old", phase="Stopped", stopReason="Idle", idleSince=fmt(T0), idleDeadline=fmt(T0 + 30 * MIN))
    foreign = workspace("x") | {"metadata": {"name": "x", "namespace": "default"}}
    bad = workspace("../escape")
    wanted = desired_notices([here, elsewhere, quiet, stopped, foreign, bad], "node-a", now)
    assert set(wanted) == {"alice"}
    alice = wanted["alice"]
    assert alice["train"].startswith("labkeeper: workspace train") and alice["old"].startswith("labkeeper:")
    assert alice["eval"] == "" and alice["quiet"] is None and set(alice) == {"train", "eval", "quiet", "old"}


def test_only_users_with_a_safe_name_and_a_uid_and_not_leaving_get_notices():
    def user(name, status=None, **spec):
        return {"metadata": {"name": name}, "spec": spec, "status": status or {}}

    owners = owners_from_users([
        user("alice", {"uid": 20001, "gid": 20001}), user("bob", {"uid": 20002}), user("carol"),
        user("root", {"uid": 20003}), user("dave", {"uid": 0}), user("erin", {"uid": 20005}, state="Offboarded"),
        {"metadata": {"name": "frank", "deletionTimestamp": fmt(T0)}, "status": {"uid": 20006}},
    ])
    assert {name: (o.uid, o.gid) for name, o in owners.items()} == {"alice": (20001, 20001), "bob": (20002, 20002)}


class FakeKube:
    def __init__(self, workspaces):
        self.workspaces, self.lists = workspaces, 0

    def list(self, kind, namespace=None, **_):
        assert kind == "Workspace"
        self.lists += 1
        return self.workspaces


class QuietMonitor:
    thresholds = None

    def observe(self, workspaces):
        self.observed = workspaces
        return {}


def test_the_activity_loop_hands_its_workspace_list_to_the_notices_without_listing_again():
    listed = [enforced(T0 + 25 * MIN, phase="IdleWarning")]
    kube, seen = FakeKube(listed), []
    loop = ActivityLoop(kube, "node-a", QuietMonitor(), LabPolicy, lambda: T0, notices=seen.append)
    loop.tick()
    assert seen == [[Workspace.model_validate(listed[0])]] and kube.lists == 1


def test_a_failing_notice_is_a_warning_and_sampling_goes_on(caplog):
    def broken(_):
        raise PermissionError(13, "Permission denied")

    monitor = QuietMonitor()
    loop = ActivityLoop(FakeKube([workspace(podUID="u1")]), "node-a", monitor, LabPolicy, lambda: T0, notices=broken)
    with caplog.at_level(logging.WARNING, logger="labkeeper.agent.activity"):
        assert loop.tick() == 0
        loop.tick()
    assert [w.name for w in monitor.observed] == ["train"]
    assert [r.getMessage() for r in caplog.records] == ["notices in users' homes: [Errno 13] Permission denied"]
