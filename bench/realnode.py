"""The real node. Two labs, one after the other (root; `make e2e`'s prerequisites):

1. start-up (`--workspaces-started N`): a lab with the operator and agent as processes; time from `kubectl apply` of
   a Workspace with a 1g.10gb slice to its process running in a real container (the process writes the moment into
   its home on the data root), and to the Workspace's phase Running; p50/p99 over N workspaces started one after
   another. Also the lab's start-up (control plane, real node).
2. the chart (`--users U --per-user W`): charts/labkeeper installed on the real node (operator and agent as pods,
   the image from the Dockerfile), U users with W idle workspaces each (four of them on the node's MIG instances):
   - agent CPU while it samples them: the agent pod's cgroup CPU time over a window, as % of one core, at the
     policy's sampleInterval of 1 s (the example policy samples every 30 s);
   - a power cut of the node (every process at once, /etc accounts and /home wiped) and a boot: from the
     kubelet's start to every workspace's container process running again, and to every Workspace Running on a
     pod whose containers started after the boot, as the API shows it;
   - cull reaction on real containers: how long after its idle deadline each workspace's stop was seen.
Prints each figure beside its target and writes bench/results/realnode.json."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kubernetes import client, watch
from kubernetes import config as k8s_config

from labkeeper.api.kinds import GROUP, VERSION, WORKSPACE
from labkeeper.testing.cluster import REPO_ROOT
from labkeeper.testing.images import product_image
from labkeeper.testing.lab import example_policy, gpuuser, policy_configmap, workspace
from labkeeper.testing.processes import SYSTEM_NAMESPACE, wait_for
from labkeeper.testing.reallab import RealLab

RESULTS = Path(__file__).resolve().parent / "results"
USER = "benchy"
CHECK_INTERVAL = 1  # seconds: the policy's checkInterval in the chart lab
# one per MIG instance of the node's default layout; the rest run on CPU only
GPU_PROFILES = ("1g.10gb", "1g.10gb", "2g.20gb", "3g.40gb")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def parse(text: str) -> float:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC).timestamp()


def startup(workspaces: int) -> dict:
    with RealLab(Path(tempfile.mkdtemp(prefix="labkeeper-bench-realnode-"))) as lab:
        assert lab.node is not None and lab.node.workspace_image is not None
        lab.apply(gpuuser(USER, "researcher"))
        lab.wait_user_ready(USER)
        home = lab.node.data_root / "users" / USER
        to_process, to_running = [], []
        for i in range(workspaces):
            name = f"b{i}"
            marker = home / f"started-{name}"
            command = ["bash", "-c", f'date +%s.%N > "$HOME/started-{name}"; exec python3 -m http.server 8000']
            doc = workspace(name, USER, profile="1g.10gb", image=lab.node.workspace_image.name, cpu="100m",
                            memory="128Mi", command=command)
            applied = time.time()
            lab.apply(doc)
            wait_for(lambda m=marker: m.exists() and m.read_text().strip(), timeout=120, interval=0.02,
                     what=lambda n=name: f"{n}'s process; {lab.diagnostics()}")
            to_process.append(float(marker.read_text()) - applied)
            wait_for(lambda n=name: lab.status("workspace", n, f"lab-{USER}").get("phase") == "Running",
                     timeout=60, interval=0.05, what=f"{name} Running")
            to_running.append(time.time() - applied)
            lab.kubectl("delete", "workspace", name, "-n", f"lab-{USER}", "--wait=false")
            wait_for(lambda n=name: lab.pod(n, USER) is None, timeout=120, interval=0.2, what=f"{name}'s pod gone")
        return {
            "workspaces": workspaces,
            "apply_to_process_p50_s": round(statistics.median(to_process), 3),
            "apply_to_process_p99_s": round(percentile(to_process, 0.99), 3),
            "apply_to_running_phase_p50_s": round(statistics.median(to_running), 3),
            "apply_to_running_phase_p99_s": round(percentile(to_running, 0.99), 3),
            **{k: round(v, 2) for k, v in lab.timings.items()},
        }


def bench_policy(idle: int) -> dict:
    policy = example_policy()
    policy["defaults"].update({"idleTimeout": f"{idle}s", "maxRuntime": "2h", "maxWorkspaces": 5})
    for tier in policy["tiers"].values():
        tier.update({"idleTimeout": f"{idle}s", "maxRuntime": "2h", "maxWorkspaces": 5})
    policy.update({"gpuHoldAfterStop": "0s", "stoppedRetention": "10m"})
    policy["activity"].update({"sampleInterval": "1s", "reportInterval": "2s", "checkInterval": f"{CHECK_INTERVAL}s"})
    return policy


def workspaces_by_key(lab: RealLab) -> dict[tuple[str, str], dict]:
    return {(w["metadata"]["namespace"], w["metadata"]["name"]): w
            for w in json.loads(lab.kubectl("get", "workspaces", "-A", "-o", "json").stdout)["items"]}


def starts(lab: RealLab, user: str, name: str) -> list[float]:
    path = lab.node.data_root / "users" / user / f".starts-{name}"
    return [float(x) for x in path.read_text().split()] if path.exists() else []


def agent_cpu_seconds(lab: RealLab) -> float:
    """CPU time of the agent pod's cgroup (cgroup v1 cpuacct, below the node's cgroupRoot)."""
    pod = json.loads(lab.kubectl("get", "pods", "-n", SYSTEM_NAMESPACE, "-l", "app.kubernetes.io/component=agent",
                                 "-o", "json").stdout)["items"][0]
    wanted = f"pod{pod['metadata']['uid']}"
    for hierarchy in ("cpuacct", "cpu,cpuacct"):
        for directory, _, _ in os.walk(Path("/sys/fs/cgroup", hierarchy, lab.node.cgroup)):
            if os.path.basename(directory) == wanted:
                return int(Path(directory, "cpuacct.usage").read_text()) / 1e9
    raise RuntimeError(f"no cgroup {wanted} for the agent pod under {lab.node.cgroup}")


def container_started_after(lab: RealLab, component: str, since: float) -> float | None:
    """Seconds after `since` that the chart's `component` pod's running container started (second resolution)."""
    pods = json.loads(lab.kubectl("get", "pods", "-n", SYSTEM_NAMESPACE, "-o", "json").stdout)["items"]
    for pod in pods:
        if component in pod["metadata"]["name"]:
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                running = (cs.get("state") or {}).get("running")
                if running:
                    return round(parse(running["startedAt"]) - since, 1)
    return None


def cull_reactions(lab: RealLab, keys: list[tuple[str, str]], timeout: float) -> dict[tuple[str, str], float]:
    """Seconds from each Workspace's last announced idle deadline to the watch event that shows its stop
    (status.stopReason Idle); NaN for a stop with another reason or before a deadline was announced."""
    api = client.CustomObjectsApi(k8s_config.new_client_from_config(str(lab.cluster.kubeconfig)))
    deadlines: dict[tuple[str, str], float] = {}
    stopped: dict[tuple[str, str], float] = {}
    end = time.monotonic() + timeout
    while len(stopped) < len(keys) and time.monotonic() < end:
        stream = watch.Watch().stream(api.list_cluster_custom_object, GROUP, VERSION, WORKSPACE.plural,
                                      timeout_seconds=max(1, int(end - time.monotonic())))
        for event in stream:
            now = time.time()
            meta, status = event["object"]["metadata"], event["object"].get("status") or {}
            key = (meta["namespace"], meta["name"])
            if key not in keys or key in stopped:
                continue
            if status.get("stopReason"):
                stopped[key] = now - deadlines[key] if status["stopReason"] == "Idle" and key in deadlines \
                    else float("nan")
            elif status.get("idleDeadline"):
                deadlines[key] = parse(status["idleDeadline"])
            if len(stopped) == len(keys):
                break
    return stopped


def chart_lab(users: int, per_user: int, idle: int, cpu_window: float, downtime: float) -> dict:
    result: dict = {"users": users, "workspaces": users * per_user}
    image = product_image(REPO_ROOT)
    with RealLab(Path(tempfile.mkdtemp(prefix="labkeeper-bench-chart-")), processes=False, node="real-node-bench",
                 images=[image]) as lab:
        install = lab.install_chart(image)
        assert install.returncode == 0, install.stderr + lab.diagnostics()
        lab.apply(policy_configmap(bench_policy(idle)))
        names = [f"u{i}" for i in range(users)]
        lab.apply(*(gpuuser(n) for n in names))
        wait_for(lambda: all(lab.status("gpuuser", n).get("phase") == "Ready" for n in names), timeout=180,
                 what=lambda: "users Ready; " + lab.component_logs())
        command = ["bash", "-c", 'date +%s.%N >> "$HOME/.starts-$LABKEEPER_WORKSPACE"; '
                   "exec env LABKEEPER_FAKE_GPU_UTIL=0 sleep infinity"]
        planned = [(n, f"w{j}") for n in names for j in range(per_user)]
        docs = []
        for k, (user, name) in enumerate(planned):
            profile = GPU_PROFILES[k] if k < len(GPU_PROFILES) else "none"
            docs.append(workspace(name, user, profile=profile, image=lab.node.workspace_image.name, cpu="10m",
                                  memory="32Mi", command=command))
        applied = time.time()
        lab.apply(*docs)

        def all_running() -> bool:
            ws = workspaces_by_key(lab)
            return all((ws.get((f"lab-{u}", n)) or {}).get("status", {}).get("phase") == "Running" for u, n in planned)

        wait_for(all_running, timeout=300, interval=1, what=lambda: "all workspaces Running; " + lab.diagnostics())
        wait_for(lambda: all(starts(lab, u, n) for u, n in planned), timeout=60, what="every first start")
        result["apply_all_to_running_s"] = round(time.time() - applied, 1)

        # agent CPU while it samples them all every second
        time.sleep(3)
        cpu0, t0 = agent_cpu_seconds(lab), time.monotonic()
        load0 = os.getloadavg()[0]
        time.sleep(cpu_window)
        cpu1, t1 = agent_cpu_seconds(lab), time.monotonic()
        result["agent_cpu_percent_of_core_at_1s_samples"] = round(100 * (cpu1 - cpu0) / (t1 - t0), 2)
        result["agent_cpu_window_s"] = round(t1 - t0, 1)
        result["load_average_during_cpu_window"] = round((load0 + os.getloadavg()[0]) / 2, 1)
        print(f"partial: {result}", flush=True)

        # a power cut and the boot after it
        lab.power_cut()
        time.sleep(downtime)
        kubelet_started = lab.power_on()
        result["kubelet_start_to_node_ready_s"] = round(time.time() - kubelet_started, 2)
        wait_for(lambda: all(len(starts(lab, u, n)) >= 2 for u, n in planned), timeout=300, interval=0.2,
                 what=lambda: "every workspace's process again; " + lab.diagnostics())
        result["reboot_kubelet_to_all_processes_s"] = round(
            max(starts(lab, u, n)[-1] for u, n in planned) - kubelet_started, 2)
        # where the time goes: each process's start after the kubelet's, the GPU ones (replaced after the kubelet
        # rejected them before the device plugin registered) apart, and the operator pod's own start
        again = {(u, n): round(starts(lab, u, n)[-1] - kubelet_started, 1) for u, n in planned}
        gpu = set(planned[:len(GPU_PROFILES)])
        result["reboot_gpu_process_starts_s"] = sorted(v for k, v in again.items() if k in gpu)
        result["reboot_cpu_process_starts_s"] = sorted(v for k, v in again.items() if k not in gpu)
        result["reboot_operator_container_started_s"] = container_started_after(lab, "operator", kubelet_started)

        def seen_running_again() -> bool:
            """Every Workspace Running with the pod it names running containers started after the boot, as the
            operator pod sees them (runningSince is not the test: see the power-cut e2e test's known fault)."""
            pods = {(p["metadata"]["namespace"], p["metadata"]["uid"]): p for p in
                    json.loads(lab.kubectl("get", "pods", "-A", "-o", "json").stdout)["items"]}
            ws = workspaces_by_key(lab)
            for u, n in planned:
                status = (ws.get((f"lab-{u}", n)) or {}).get("status") or {}
                pod = pods.get((f"lab-{u}", status.get("podUID")))
                started = [c["state"]["running"]["startedAt"] for c in ((pod or {}).get("status") or {})
                           .get("containerStatuses") or [] if (c.get("state") or {}).get("running")]
                if status.get("phase") != "Running" or not started or parse(min(started)) < int(kubelet_started):
                    return False
            return True

        wait_for(seen_running_again, timeout=300, interval=0.5, what=lambda: "every workspace Running again; "
                 + lab.component_logs())
        result["reboot_kubelet_to_all_running_reopened_s"] = round(time.time() - kubelet_started, 2)
        print(f"partial: {result}", flush=True)
        result["load_average_after_reboot"] = round(os.getloadavg()[0], 1)

        # cull reaction: every workspace is idle; each stop against its last announced idle deadline, the stop's
        # moment taken when the watch delivers it (a poll with kubectl would add its own second)
        keys = [(f"lab-{u}", n) for u, n in planned]
        stopped = cull_reactions(lab, keys, timeout=idle * 3 + 120)
        reactions = [v for v in stopped.values() if v == v]
        result["culled_idle"] = len(reactions)
        if reactions:
            result["cull_after_deadline_p50_s"] = round(statistics.median(reactions), 3)
            result["cull_after_deadline_max_s"] = round(max(reactions), 3)
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspaces-started", type=int, default=20)
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--per-user", type=int, default=2)
    parser.add_argument("--idle", type=int, default=90, help="idle timeout (s) in the chart lab")
    parser.add_argument("--cpu-window", type=float, default=60.0)
    parser.add_argument("--downtime", type=float, default=10.0)
    parser.add_argument("--skip-startup", action="store_true")
    args = parser.parse_args()
    result: dict = {"cores": os.cpu_count()}
    if not args.skip_startup:
        result["startup"] = startup(args.workspaces_started)
    result["chart"] = chart_lab(args.users, args.per_user, args.idle, args.cpu_window, args.downtime)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "realnode.json").write_text(json.dumps(result, indent=2))
    if "startup" in result:
        s = result["startup"]
        print(f"workspace apply -> process running in the container, p50/p99 of {s['workspaces']}: "
              f"{s['apply_to_process_p50_s']} / {s['apply_to_process_p99_s']} s")
        print(f"workspace apply -> phase Running p50/p99: {s['apply_to_running_phase_p50_s']} / "
              f"{s['apply_to_running_phase_p99_s']} s")
        print(f"lab start: control plane {s.get('control_plane_s')} s, real node {s.get('real_node_s')} s")
    c = result["chart"]
    print(f"chart lab: {c['users']} users, {c['workspaces']} workspaces, all Running {c['apply_all_to_running_s']} s "
          "after one apply")
    print(f"agent CPU sampling {c['workspaces']} real workspaces every 1 s: {c['agent_cpu_percent_of_core_at_1s_samples']} "
          f"% of a core over {c['agent_cpu_window_s']} s (load {c['load_average_during_cpu_window']})   target < 2 %")
    print(f"power cut -> every workspace's process running again: {c['reboot_kubelet_to_all_processes_s']} s after the "
          "kubelet started   target <= 30 s")
    print(f"power cut -> every Workspace Running again on a pod started after the boot: "
          f"{c['reboot_kubelet_to_all_running_reopened_s']} s after the kubelet started (node Ready after "
          f"{c['kubelet_start_to_node_ready_s']} s)")
    if c.get("culled_idle"):
        print(f"cull reaction on real containers ({c['culled_idle']} culled): p50 {c['cull_after_deadline_p50_s']} s, "
              f"max {c['cull_after_deadline_max_s']} s after the idle deadline   target <= {CHECK_INTERVAL} s "
              "(one check interval)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
