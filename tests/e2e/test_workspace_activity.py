"""Activity on a real node (issue 17, point 1): the agent, as a process whose host root is the node's sandboxed
/etc and /home, finds a running workspace's real pod cgroup (the kubelet's cgroupfs driver, cgroup v1, below the
node's own cgroupRoot) and samples its CPU. A CPU burner inside keeps the workspace Active with a reason naming
the cores it saw; once the burner stops, the workspace is warned at the policy's fractions and stopped as Idle at
its deadline, and the stop notice is in the user's home on the node.

The session lab's policy gets short idle limits for this module and its own back afterwards."""

from __future__ import annotations

import datetime as dt
import json
import re
import time

import pytest

from labkeeper.testing.lab import example_policy, gpuuser, policy_configmap, workspace
from labkeeper.testing.processes import wait_for
from labkeeper.testing.reallab import RealLab

IDLE = 20  # seconds: the idle timeout every tier gets here
USER = "dora"


def short_idle_policy() -> dict:
    policy = example_policy()
    policy["defaults"].update({"idleTimeout": f"{IDLE}s", "maxRuntime": "1h"})
    for tier in policy["tiers"].values():
        tier.update({"idleTimeout": f"{IDLE}s", "maxRuntime": "1h"})
    policy.update({"warnings": {"idle": [0.5, 0.8], "runtime": [0.75, 0.9]}, "stoppedRetention": "5m"})
    policy["activity"].update({"sampleInterval": "1s", "reportInterval": "2s", "checkInterval": "1s"})
    return policy


@pytest.fixture(scope="module")
def active_lab(real_lab: RealLab):
    real_lab.apply(policy_configmap(short_idle_policy()))
    real_lab.apply(gpuuser(USER))
    real_lab.wait_user_ready(USER)
    try:
        yield real_lab
    finally:
        real_lab.apply(policy_configmap(real_lab.policy))


def parse(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def deadline_of(statuses: list[dict]) -> float:
    """The last idle deadline the operator announced before the stop, as a Unix time."""
    return parse([s["idleDeadline"] for s in statuses if s.get("idleDeadline")][-1]).timestamp()


def test_a_cpu_burner_in_a_real_container_keeps_it_active_and_once_it_stops_it_is_warned_and_culled(active_lab):
    lab = active_lab
    image = lab.node.workspace_image.name
    stop_file = lab.node.data_root / "users" / USER / ".burn-stop"
    stop_file.unlink(missing_ok=True)
    # burns one core until the file appears in her home, then sleeps: the container keeps running
    lab.apply(workspace("burn", USER, image=image, cpu="500m", memory="128Mi",
                        command=["bash", "-c", 'while [ ! -e "$HOME/.burn-stop" ]; do :; done; exec sleep infinity']))
    wait_for(lambda: lab.status("workspace", "burn", f"lab-{USER}").get("phase") == "Running", timeout=180,
             what=lab.diagnostics)
    status = lab.status("workspace", "burn", f"lab-{USER}")
    # the agent's verdict names the CPU it measured in the pod's cgroup
    seen = wait_for(lambda: re.search(r"cpu (\d+\.\d+) cores", (s := lab.status("workspace", "burn", f"lab-{USER}"))
                                      .get("activityReason") or "") and s,
                    timeout=60, what=lambda: f"an activity reason naming cpu cores; {lab.diagnostics()}")
    cores = float(re.search(r"cpu (\d+\.\d+) cores", seen["activityReason"]).group(1))
    assert cores >= 0.1, seen["activityReason"]
    print(f"\nbusy: {seen['activityReason']}")

    # busy for longer than the idle timeout: never warned, never stopped, lastActivity moves with the burner
    started = time.monotonic()
    while time.monotonic() - started < IDLE + 5:
        status = lab.status("workspace", "burn", f"lab-{USER}")
        assert status["phase"] == "Running" and not status.get("stopReason"), status
        assert not [w for w in status.get("warnings") or [] if w["key"].startswith("idle-")], status
        time.sleep(1)
    assert (dt.datetime.now(dt.UTC) - parse(status["lastActivity"])).total_seconds() < 10, status

    stop_file.write_text("")  # the burner ends; the container sleeps on
    seen_statuses = []

    def stopped():
        s = lab.status("workspace", "burn", f"lab-{USER}")
        seen_statuses.append(s)
        return s.get("stopReason") and s

    final = wait_for(stopped, timeout=IDLE + 60, interval=0.5, what=lab.diagnostics)
    print(f"stopped {final['stopReason']}: {final.get('message')}; seen {time.time() - deadline_of(seen_statuses):.1f} s "
          "after the idle deadline")
    assert final["stopReason"] == "Idle", final
    warned = {w["key"] for s in seen_statuses for w in s.get("warnings") or []}
    assert {"idle-50", "idle-80"} <= warned, warned
    events = json.loads(lab.kubectl("get", "events", "-n", f"lab-{USER}", "-o", "json").stdout)["items"]
    culled = [e["message"] for e in events if e["reason"] == "Culled" and e["involvedObject"]["name"] == "burn"]
    assert culled and "idle for" in culled[0], culled
    # the idle stretch began after the burner's last busy sample, not before it
    since = {w.get("since") for s in seen_statuses for w in s.get("warnings") or [] if w["key"].startswith("idle-")}
    assert since and all(parse(t) >= parse(status["lastActivity"]) for t in since), (since, status)
    notice = lab.node.data_root / "users" / USER / ".labkeeper" / "notices" / "burn"
    text = wait_for(lambda: notice.is_file() and "was stopped at" in notice.read_text() and notice.read_text(),
                    timeout=30, what=f"the stop notice in {notice}")
    assert "idle" in text.lower(), text
