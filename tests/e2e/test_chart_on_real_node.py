"""`helm install` of charts/labkeeper on a real node, with the image built from the Dockerfile: the operator
Deployment and the agent DaemonSet run as real pods with the chart's own security settings and reach the API
server through the `kubernetes` Service (kube-proxy). On that lab, in this order:

- `labctl admin doctor` calls it healthy and examples/alice.yaml is provisioned by the agent pod into the
  node's sandboxed /etc, /home and data root;
- (issue 17, point 1) the agent pod samples a real workspace's pod cgroup through the host /proc and cgroup
  tree the chart mounts: a CPU burner keeps it Active with a reason naming the cores seen; once the burner
  stops it is warned at the policy's fractions and culled as Idle at its deadline, the notice in her home;
- (point 2) the device ids the fake NVIDIA device plugin hands out reach the agent's file-backed GPU sampler
  (the node's stand-in for NVML): the workspace whose MIG instance is busy stays, its idle MIG neighbour is
  culled;
- (point 3) a power cut of the node (every process at once, the operator and agent pods with it, the node's
  /etc accounts and /home wiped; etcd and the data root kept) and a boot: accounts, home links and the shared
  cache are back, every workspace that ran runs again as a new real process on the same device, the runtime
  left out the downtime and nothing is culled within the first idle window.

The lab's policy gets short idle limits once the chart is installed."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labkeeper.testing.cluster import REPO_ROOT
from labkeeper.testing.devices import ACTIVITY_FILE, process_environ
from labkeeper.testing.images import product_image
from labkeeper.testing.lab import example_policy, gpuuser, policy_configmap, workspace
from labkeeper.testing.processes import SYSTEM_NAMESPACE, wait_for
from labkeeper.testing.reallab import RealLab

LABCTL = Path(sys.executable).parent / "labctl"
NODE = "real-node-chart"
FIGURES: dict[str, float] = {}
IDLE = 20  # seconds: the idle timeout every tier gets once the chart is installed
REPORT = 2  # seconds: the policy's reportInterval
# seconds between the chart's operator's Lease renewals (a third of its 15 s), each of which records until when it
# watched the lab (controller/liveness.py): a power cut may cost a run that much of what it ran
LEASE_RENEWAL = 5


def short_idle_policy() -> dict:
    policy = example_policy()
    policy["defaults"].update({"idleTimeout": f"{IDLE}s", "maxRuntime": "1h"})
    for tier in policy["tiers"].values():
        tier.update({"idleTimeout": f"{IDLE}s", "maxRuntime": "1h"})
    policy.update({"warnings": {"idle": [0.5, 0.8], "runtime": [0.75, 0.9]}, "stoppedRetention": "5m",
                   "gpuHoldAfterStop": "0s"})
    policy["activity"].update({"sampleInterval": "1s", "reportInterval": f"{REPORT}s", "checkInterval": "1s"})
    return policy


@pytest.fixture(scope="module")
def chart_lab(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the real-node suite runs as root")
    if shutil.which("buildah") is None:
        pytest.fail("the labkeeper image is built with buildah: bash hack/deps.sh installs buildah and debootstrap")
    started = time.monotonic()
    image = product_image(REPO_ROOT)
    FIGURES["image_s"] = time.monotonic() - started
    with RealLab(tmp_path_factory.mktemp("chart"), processes=False, node=NODE, images=[image]) as lab:
        lab.image = image
        started = time.monotonic()
        install = lab.install_chart(image)
        assert install.returncode == 0, install.stderr + lab.diagnostics() + pods_described(lab)
        FIGURES["helm_install_s"] = time.monotonic() - started
        lab.install_started = started
        yield lab
    print(f"\nchart on the real node: {FIGURES}")


@pytest.fixture(scope="module")
def short_idle(chart_lab):
    """The short-idle policy, set once the install test has seen the lab come up with the example policy."""
    chart_lab.apply(policy_configmap(short_idle_policy()))
    return chart_lab


def test_the_chart_runs_labkeeper_on_the_real_node_and_the_agent_pod_provisions_alice(chart_lab):
    lab = chart_lab
    pods = json.loads(lab.kubectl("get", "pods", "-n", SYSTEM_NAMESPACE, "-o", "json").stdout)["items"]
    by_component = {p["metadata"]["labels"].get("app.kubernetes.io/component"): p for p in pods}
    for component in ("operator", "agent"):
        pod = by_component[component]
        assert pod["spec"]["nodeName"] == NODE, (component, pod["spec"].get("nodeName"))
        assert all(c["ready"] for c in pod["status"]["containerStatuses"]), pod["status"]
    # as the chart sets them: the operator non-root on a read-only root filesystem
    operator_pod = by_component["operator"]["spec"]
    assert operator_pod["securityContext"]["runAsNonRoot"] is True
    assert operator_pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True

    def doctor_healthy():
        result = subprocess.run([str(LABCTL), "admin", "doctor", "-o", "json"], capture_output=True, text=True,
                                timeout=120, env={**os.environ, "KUBECONFIG": str(lab.cluster.kubeconfig)})
        checks = {c["name"]: c for c in json.loads(result.stdout or "[]")}
        healthy = ("operator", "node agent", "GPU resources", "nvidia RuntimeClass", "CRDs")
        return all(checks.get(n, {}).get("state") == "ok" for n in healthy) and checks

    checks = wait_for(doctor_healthy, timeout=120, interval=2, what=lambda: "doctor healthy; " + lab.diagnostics())
    FIGURES["helm_install_to_lab_ready_s"] = time.monotonic() - lab.install_started
    assert checks["operator"]["state"] == "ok"

    lab.kubectl("apply", "-f", str(REPO_ROOT / "examples" / "alice.yaml"))
    status = wait_for(lambda: (s := lab.status("gpuuser", "alice")).get("phase") == "Ready" and s, timeout=120,
                      what=lambda: f"alice Ready; status {lab.status('gpuuser', 'alice')}\n{lab.component_logs()}")
    host = lab.node.host_root
    passwd = {line.split(":")[0]: line.split(":") for line in (host / "etc" / "passwd").read_text().splitlines()}
    assert int(passwd["alice"][2]) == int(status["uid"])
    home = lab.node.data_root / "users" / "alice"
    assert os.readlink(host / "home" / "alice") == str(home)
    assert (home.stat().st_uid, home.stat().st_gid) == (int(status["uid"]), int(status["gid"]))
    assert "alice@laptop" in (home / ".ssh" / "authorized_keys").read_text()
    assert lab.get("secret", "kubeconfig-alice", SYSTEM_NAMESPACE) is not None
    assert "alice:" not in Path("/etc/passwd").read_text()


# ---- point 1: the agent pod samples a real pod cgroup ---------------------------------------------------------

def parse(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def until_stopped(lab, user: str, name: str) -> tuple[dict, list[dict]]:
    """Her workspace's status once it has a stopReason, and every status seen on the way (warnings, reasons)."""
    seen: list[dict] = []

    def stopped():
        s = lab.status("workspace", name, f"lab-{user}")
        seen.append(s)
        return s.get("stopReason") and s

    return wait_for(stopped, timeout=IDLE + 60, interval=0.5, what=lab.component_logs), seen


def deadline_of(statuses: list[dict]) -> float:
    """The last idle deadline the operator announced before the stop, as a Unix time."""
    return parse([s["idleDeadline"] for s in statuses if s.get("idleDeadline")][-1]).timestamp()


def add_user(lab: RealLab, name: str, tier: str = "student") -> None:
    lab.apply(gpuuser(name, tier))
    wait_for(lambda: lab.status("gpuuser", name).get("phase") == "Ready", timeout=120,
             what=lambda: f"GPUUser {name} Ready; {lab.status('gpuuser', name)}\n{lab.component_logs()}")


def running(lab: RealLab, name: str, user: str, timeout: float = 180) -> dict:
    return wait_for(lambda: (s := lab.status("workspace", name, f"lab-{user}")).get("phase") == "Running" and s,
                    timeout=timeout, what=lambda: f"{name} Running; {lab.diagnostics()}\n{lab.component_logs()}")


def test_the_agent_pod_keeps_a_cpu_burner_active_and_culls_it_once_it_stops(short_idle):
    lab, user = short_idle, "dora"
    add_user(lab, user)
    stop_file = lab.node.data_root / "users" / user / ".burn-stop"
    stop_file.unlink(missing_ok=True)
    # burns one core until the file appears in her home, then sleeps: the container keeps running
    lab.apply(workspace("burn", user, image=lab.node.workspace_image.name, cpu="500m", memory="128Mi",
                        command=["bash", "-c", 'while [ ! -e "$HOME/.burn-stop" ]; do :; done; exec sleep infinity']))
    running(lab, "burn", user)
    # the agent pod's verdict names the CPU it measured in the pod's cgroup: at least the policy's 0.1 cores
    reasons: list[str] = []

    def busy_reason():
        reason = lab.status("workspace", "burn", f"lab-{user}").get("activityReason") or ""
        reasons.append(reason)
        cores = re.search(r"cpu (\d+\.\d+) cores", reason)
        return cores and float(cores.group(1)) >= 0.1 and reason

    busy = wait_for(busy_reason, timeout=60, what=lambda: f"a busy verdict naming cpu cores (seen {sorted(set(reasons))}); "
                    f"{lab.component_logs()}")
    print(f"\nbusy: {busy}")

    # busy for longer than the idle timeout: never warned, never stopped, lastActivity moves with the burner
    started = time.monotonic()
    while time.monotonic() - started < IDLE + 5:
        status = lab.status("workspace", "burn", f"lab-{user}")
        assert status["phase"] == "Running" and not status.get("stopReason"), status
        assert not [w for w in status.get("warnings") or [] if w["key"].startswith("idle-")], status
        time.sleep(1)
    assert (dt.datetime.now(dt.UTC) - parse(status["lastActivity"])).total_seconds() < 10, status

    stop_file.write_text("")  # the burner ends; the container sleeps on
    final, seen_statuses = until_stopped(lab, user, "burn")
    FIGURES["cull_after_idle_deadline_s"] = round(time.time() - deadline_of(seen_statuses), 2)
    print(f"stopped {final['stopReason']}: {final.get('message')}; seen {FIGURES['cull_after_idle_deadline_s']} s "
          "after the idle deadline")
    assert final["stopReason"] == "Idle", final
    warned = {w["key"] for s in seen_statuses for w in s.get("warnings") or []}
    assert {"idle-50", "idle-80"} <= warned, warned
    # idle, the reason says what was measured: CPU from the pod cgroup, network from the pod's netns (a pid of
    # the pod found in the host's /proc: the agent pod sees no pid in cgroup.procs)
    idle = [s.get("activityReason") or "" for s in seen_statuses if "cores" in (s.get("activityReason") or "")][-1]
    assert re.search(r"cpu 0\.0\d cores; network \d+", idle), idle
    events = json.loads(lab.kubectl("get", "events", "-n", f"lab-{user}", "-o", "json").stdout)["items"]
    culled = [e["message"] for e in events if e["reason"] == "Culled" and e["involvedObject"]["name"] == "burn"]
    assert culled and "idle for" in culled[0], culled
    # the idle stretch began after the burner's last busy sample, not before it
    since = {w.get("since") for s in seen_statuses for w in s.get("warnings") or [] if w["key"].startswith("idle-")}
    assert since and all(parse(t) >= parse(status["lastActivity"]) for t in since), (since, status)
    notice = lab.node.data_root / "users" / user / ".labkeeper" / "notices" / "burn"
    text = wait_for(lambda: notice.is_file() and "was stopped at" in notice.read_text() and notice.read_text(),
                    timeout=30, what=f"the stop notice in {notice}")
    assert "idle" in text.lower(), text


# ---- point 2: the device plugin's ids reach the GPU sampler --------------------------------------------------

def devices_of(lab: RealLab, name: str, user: str) -> set[str]:
    """The device ids in the workspace container's environment, as the kubelet set them from the plugin's
    Allocate answer (a workspace without a GPU has `void`, which hides every GPU from it)."""
    pids = lab.workspace_pids(name, user)
    return {d for pid in pids for d in process_environ(Path("/proc"), pid).get("NVIDIA_VISIBLE_DEVICES", "").split(",")
            if d.startswith(("MIG-", "GPU-"))}


def test_a_busy_mig_instance_keeps_exactly_its_workspace_active_and_its_idle_neighbour_is_culled(short_idle):
    lab, user = short_idle, "erin"
    add_user(lab, user)
    image = lab.node.workspace_image.name
    # a process on each instance, as a CUDA job would be: 60 % SM on one, 0 % (memory held, no work) on the other
    for name, util in (("busy", 60), ("neighbour", 0)):
        lab.apply(workspace(name, user, profile="1g.10gb", image=image, cpu="100m", memory="64Mi",
                            command=["bash", "-c", f"exec env LABKEEPER_FAKE_GPU_UTIL={util} sleep infinity"]))
    started = time.monotonic()
    for name in ("busy", "neighbour"):
        running(lab, name, user)
    slices = {d.id for d in lab.node.devices if d.profile == "1g.10gb"}
    busy_ids = wait_for(lambda: devices_of(lab, "busy", user), timeout=30, what="busy's device in its environment")
    neighbour_ids = wait_for(lambda: devices_of(lab, "neighbour", user), timeout=30, what="neighbour's device")
    assert len(busy_ids) == len(neighbour_ids) == 1 and busy_ids | neighbour_ids == slices, (busy_ids, neighbour_ids)
    (busy_id,), (neighbour_id,) = busy_ids, neighbour_ids

    # the node's stand-in for NVML lists each container's process on the instance the kubelet gave it
    def nvml_view():
        doc = json.loads(lab.node.private(ACTIVITY_FILE).read_text())
        by_device = {p["device"]: p["pid"] for p in doc["processes"]}
        util = {m["uuid"]: m["smUtilization"] for g in doc["devices"] for m in g.get("migInstances") or []}
        return (by_device.get(busy_id) in lab.workspace_pids("busy", user) and
                by_device.get(neighbour_id) in lab.workspace_pids("neighbour", user) and util)

    util = wait_for(nvml_view, timeout=30, what=lambda: lab.node.private(ACTIVITY_FILE).read_text())
    assert util[busy_id] == 60 and util[neighbour_id] == 0, util

    busy = wait_for(lambda: "gpu 60% SM on 1g.10gb" in ((s := lab.status("workspace", "busy", f"lab-{user}"))
                                                        .get("activityReason") or "") and s,
                    timeout=60, what=lambda: f"busy's reason naming its instance; {lab.component_logs()}")
    print(f"\nbusy: {busy['activityReason']}")
    stopped, seen_statuses = until_stopped(lab, user, "neighbour")
    assert stopped["stopReason"] == "Idle", stopped
    reasons = {s.get("activityReason") or "" for s in seen_statuses}
    assert any("gpu idle" in r for r in reasons), reasons
    print(f"neighbour culled {time.time() - deadline_of(seen_statuses):.1f} s after its idle deadline; "
          f"reasons seen: {sorted(reasons)}")
    # the busy one outlives its idle timeout by far, unwarned, on the same instance
    while time.monotonic() - started < IDLE + 10:
        time.sleep(1)
    status = lab.status("workspace", "busy", f"lab-{user}")
    assert status["phase"] == "Running" and not status.get("stopReason"), status
    assert not [w for w in status.get("warnings") or [] if w["key"].startswith("idle-")], status
    assert devices_of(lab, "busy", user) == {busy_id}
    lab.kubectl("delete", "workspace", "busy", "-n", f"lab-{user}", "--wait=false")
    wait_for(lambda: lab.pod("busy", user) is None and lab.pod("neighbour", user) is None, timeout=60,
             what="erin's pods gone, her instances free")


# ---- point 3: a power cut --------------------------------------------------------------------------------------

REBOOT_USERS = ("frank", "gina")
# (user, workspace, profile): on a MIG instance each, and one on CPU only
REBOOT_WORKSPACES = (("frank", "train", "1g.10gb"), ("frank", "notes", "none"), ("gina", "eval", "2g.20gb"))
DOWNTIME = 12  # seconds the node stays dark
# the idle timeout while the power-cut test runs: its idle workspaces must outlast the set-up before the cut
REBOOT_IDLE = 45


def reboot_policy() -> dict:
    policy = short_idle_policy()
    policy["defaults"]["idleTimeout"] = f"{REBOOT_IDLE}s"
    for tier in policy["tiers"].values():
        tier["idleTimeout"] = f"{REBOOT_IDLE}s"
    return policy


def total_runtime(status: dict, at: float | None = None) -> float:
    """Closed segments plus the open one, as the operator counts toward maxRuntime."""
    total = float(status.get("runtimeSeconds") or 0)
    if status.get("runningSince"):
        total += (at or time.time()) - parse(status["runningSince"]).timestamp()
    return total


def starts_of(lab: RealLab, user: str, name: str) -> list[float]:
    path = lab.node.data_root / "users" / user / f".starts-{name}"
    return [float(line) for line in path.read_text().split()] if path.exists() else []


def test_after_a_power_cut_every_workspace_runs_again_on_its_device_and_nothing_is_culled_or_overcounted(short_idle):
    lab = short_idle
    lab.apply(policy_configmap(reboot_policy()))
    try:
        power_cut_and_boot(lab)
    finally:
        lab.apply(policy_configmap(short_idle_policy()))


def power_cut_and_boot(lab: RealLab) -> None:
    for name in REBOOT_USERS:
        add_user(lab, name)
    lab.kubectl("apply", "-f", str(REPO_ROOT / "examples" / "caches.yaml"))
    # each start of a workspace's container leaves a line in its home; then it sleeps (idle)
    command = ["bash", "-c", 'date +%s.%N >> "$HOME/.starts-$LABKEEPER_WORKSPACE"; exec env LABKEEPER_FAKE_GPU_UTIL=0 '
               "sleep infinity"]
    for user, name, profile in REBOOT_WORKSPACES:
        lab.apply(workspace(name, user, profile=profile, image=lab.node.workspace_image.name, cpu="100m",
                            memory="64Mi", command=command))
    for user, name, _ in REBOOT_WORKSPACES:
        running(lab, name, user)
    wait_for(lambda: all(starts_of(lab, u, n) for u, n, _ in REBOOT_WORKSPACES), timeout=60, what="first starts")
    devices = {name: devices_of(lab, name, user) for user, name, _ in REBOOT_WORKSPACES}
    assert devices["train"] and devices["eval"] and not devices["notes"], devices
    old_pids = {name: set(lab.workspace_pids(name, user)) for user, name, _ in REBOOT_WORKSPACES}
    users = {name: lab.status("gpuuser", name) for name in REBOOT_USERS}
    profile_d = lab.node.host_root / "etc" / "profile.d" / "labkeeper.sh"
    wait_for(lambda: profile_d.is_file() and "PIP_CACHE_DIR" in profile_d.read_text(), timeout=60,
             what=f"the caches exported in {profile_d}")
    time.sleep(LEASE_RENEWAL + 1)  # at least one renewal of the operator's record after the starts

    cut = time.time()
    seen_before = {name: {k: v for k, v in lab.status("workspace", name, f"lab-{user}").items()
                          if k in ("runtimeSeconds", "runningSince", "lastSeenRunning")}
                   for user, name, _ in REBOOT_WORKSPACES}
    before = {name: total_runtime(seen_before[name], at=cut) for _, name, _ in REBOOT_WORKSPACES}
    lab.power_cut()
    # the operator pod may write a heartbeat until the sweep has killed it: the run may have lasted until here
    cut_done = time.time()
    assert not any(lab.node.pod_pids(lab.status("workspace", n, f"lab-{u}")["podUID"]) for u, n, _ in REBOOT_WORKSPACES)
    assert not (lab.node.host_root / "home" / "frank").exists()
    assert "frank:" not in (lab.node.host_root / "etc" / "passwd").read_text()
    time.sleep(DOWNTIME)
    kubelet_started = lab.power_on()
    print(f"\nnode Ready {time.time() - kubelet_started:.1f} s after its kubelet started")

    # every workspace that ran runs again: a new process of its container, on the same device
    timeline: list[tuple] = []  # train's pod and status as seen after the boot, for a failure message

    def note_train():
        ws = lab.status("workspace", "train", "lab-frank")
        pod = (lab.pod("train", "frank") or {}).get("status") or {}
        entry = (pod.get("phase"), pod.get("reason"), ws.get("phase"), ws.get("reason"), ws.get("runtimeSeconds"),
                 ws.get("runningSince"), ws.get("lastSeenRunning"))
        if not timeline or timeline[-1][1:] != entry:
            timeline.append((round(time.time() - kubelet_started, 1), *entry))

    def all_back():
        note_train()
        return all(len(starts_of(lab, u, n)) >= 2 and (pids := set(lab.workspace_pids(n, u))) and not pids & old_pids[n]
                   for u, n, _ in REBOOT_WORKSPACES)

    wait_for(all_back, timeout=120, interval=0.2,
             what=lambda: f"every workspace's process again; {workspaces_described(lab)}\n{lab.diagnostics()}\n"
                          f"{lab.component_logs(200)}")
    FIGURES["reboot_kubelet_to_all_processes_s"] = round(
        max(starts_of(lab, u, n)[-1] for u, n, _ in REBOOT_WORKSPACES) - kubelet_started, 2)
    print(f"every workspace's process runs again {FIGURES['reboot_kubelet_to_all_processes_s']} s after the kubelet "
          "started")
    for user, name, _ in REBOOT_WORKSPACES:
        assert starts_of(lab, user, name)[-1] > kubelet_started, (name, starts_of(lab, user, name))
        assert devices_of(lab, name, user) == devices[name], (name, devices[name])

    # accounts, home links and the shared cache's export come back from the agent pod
    def host_back():
        passwd = (lab.node.host_root / "etc" / "passwd").read_text()
        return all(f"\n{n}:x:{users[n]['uid']}:" in passwd and
                   os.path.realpath(lab.node.host_root / "home" / n) == str(lab.node.data_root / "users" / n)
                   for n in REBOOT_USERS) and profile_d.is_file() and "PIP_CACHE_DIR" in profile_d.read_text()

    wait_for(host_back, timeout=90, what=lambda: f"accounts, homes and caches back; {lab.component_logs()}")
    acl = subprocess.run(["getfacl", "-n", "-p", str(lab.node.data_root / "cache" / "pip")], capture_output=True,
                         text=True, check=True).stdout
    assert re.search(r"^default:group:\d+:rwx", acl, re.M), acl

    # the operator pod is back and closed each run the cut ended where it was last known alive: the downtime is not
    # runtime
    def reopened():
        note_train()
        statuses = {n: lab.status("workspace", n, f"lab-{u}") for u, n, _ in REBOOT_WORKSPACES}
        return all(s.get("runningSince") and parse(s["runningSince"]).timestamp() >= int(kubelet_started)
                   for s in statuses.values()) and statuses

    statuses = wait_for(reopened, timeout=90, what=lambda: f"runs reopened after the boot; {lab.component_logs()}")

    # nobody is culled within the first idle window after the boot
    while time.time() - kubelet_started < REBOOT_IDLE - 1:
        for user, name, _ in REBOOT_WORKSPACES:
            status = lab.status("workspace", name, f"lab-{user}")
            assert not status.get("stopReason"), (name, status, time.time() - kubelet_started)
        time.sleep(0.5)

    # the run the cut ended was closed where the operator before the cut last recorded it watched: the downtime is
    # not runtime. It records at each Lease renewal, so the cut may cost up to one, and a second of resolution
    overcounted = []
    for _, name, _ in REBOOT_WORKSPACES:
        closed = float(statuses[name].get("runtimeSeconds") or 0)
        assert closed >= before[name] - LEASE_RENEWAL - 1, (name, before[name], closed, seen_before[name])
        until_killed = total_runtime(seen_before[name], at=cut_done)
        if closed > until_killed + 1:
            overcounted.append(f"{name}: {before[name]:.1f} s when the cut began ({until_killed:.1f} s when its "
                               f"last process was killed), {closed:.0f} s closed")
    # the operator pod comes back before the kubelet has rewritten its pods' statuses; it believes a "Running"
    # only once the node's Lease has renewed without a gap for the settle (controller/liveness.py)
    assert not overcounted, (f"the downtime was counted as runtime: {'; '.join(overcounted)}; train after the boot "
                             f"(s after the kubelet started; pod phase, reason; workspace phase, reason, "
                             f"runtimeSeconds, runningSince, lastSeenRunning): {timeline}")


def workspaces_described(lab: RealLab) -> str:
    """Every workspace's status in brief, and every pod, for a failure message."""
    items = json.loads(lab.kubectl("get", "workspaces", "-A", "-o", "json").stdout)["items"]
    brief = {f"{w['metadata']['namespace']}/{w['metadata']['name']}": {
        k: (w.get("status") or {}).get(k) for k in ("phase", "stopReason", "message", "podUID", "runningSince",
                                                     "lastSeenRunning", "runtimeSeconds", "activityReason")}
        for w in items}
    pods = lab.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
    return f"workspaces: {json.dumps(brief, indent=1)}\npods:\n{pods}"


def pods_described(lab: RealLab) -> str:
    return lab.kubectl("describe", "pods", "-n", SYSTEM_NAMESPACE, check=False).stdout[-6000:]
