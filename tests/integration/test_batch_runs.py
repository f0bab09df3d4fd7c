"""Batch runs (issue 20) on one balanced H100 (2 x 1g.10gb + 2g.20gb + 3g.40gb): a run waits in the lab's queue
behind a full box, starts when a slice frees, ends Succeeded or Failed with its command's exit code, and its slice
goes to the next in line at once (no hold); a user's runs and workspaces share her GPU-equivalent cap. kwok runs no
command: a test ends one by annotating the pod with the exit code (LocalCluster's pod-exit Stage). Real API server,
scheduler and kwok node."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from kubernetes import client as k8s
from kubernetes import watch

from labkeeper.testing.cluster import NodeSpec, cri_log
from labkeeper.testing.kwokstages import EXIT_CODE_ANNOTATION, EXIT_REASON_ANNOTATION
from labkeeper.testing.lab import Lab, example_policy, gpuuser, workspace
from labkeeper.testing.processes import SYSTEM_NAMESPACE, wait_for

pytestmark = pytest.mark.integration

LABCTL = Path(sys.executable).parent / "labctl"
SMALL = ("--image", "busybox", "--cpu", "100m", "--memory", "256Mi")
HOLD = 120  # a stopped workspace would keep its slice this long; an ended run keeps nothing
RETENTION = 40  # seconds an ended run (its pod, so its logs) stays


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    policy = example_policy()
    policy.update({"gpuHoldAfterStop": f"{HOLD}s", "stoppedRetention": f"{RETENTION}s"})
    for tier in policy["tiers"].values():
        tier["allowedProfiles"] = ["1g.10gb", "2g.20gb", "3g.40gb"]
    with Lab((NodeSpec("h100", "h100-balanced"),), policy, tmp_path_factory.mktemp("lab")) as running:
        running.add_users(*(gpuuser(n, "researcher") for n in ("ann", "bob", "cara", "eve")),
                          gpuuser("dora", "researcher", limits={"maxGpuEquivalents": 0.5}),
                          gpuuser("stud", "student"), gpuuser("prof", "faculty"))
        yield running
        print(running.log_tail())


def run(name: str, user: str, profile: str, *command: str) -> dict:
    return workspace(name, user, profile=profile, mode="Batch", command=list(command or ("python", "train.py")))


def end_command(lab: Lab, user: str, name: str, code: int, reason: str | None = None) -> None:
    """What the command's exit is on a real node: kwok's pod-exit Stage reads these annotations."""
    notes = [f"{EXIT_CODE_ANNOTATION}={code}"] + ([f"{EXIT_REASON_ANNOTATION}={reason}"] if reason else [])
    lab.kubectl("annotate", "pod", f"ws-{name}", "-n", f"lab-{user}", *notes)


def pod(lab: Lab, user: str, name: str) -> dict | None:
    return lab.get("pod", f"ws-{name}", f"lab-{user}")


def clear(lab: Lab) -> None:
    lab.kubectl("delete", "workspaces", "--all", "-A", "--wait=false")
    wait_for(lambda: not lab.items("pods", "-A", "-l", "labkeeper.io/role=workspace")
             and not lab.items("workspaces", "-A"), timeout=60, what="all workspaces and their pods gone")


def test_runs_queue_behind_a_full_box_end_with_their_exit_codes_and_hand_the_slice_on_at_once(lab: Lab):
    lab.apply(run("first", "ann", "2g.20gb"))
    lab.wait_phase("first", "ann", "Running")
    first_pod = pod(lab, "ann", "first")
    assert first_pod["spec"]["restartPolicy"] == "Never"
    assert first_pod["spec"]["containers"][0]["command"] == ["python", "train.py"]

    # the box's only 2g.20gb slice is taken: bob's run and then cara's wait in line, with no pod
    lab.apply(run("train", "bob", "2g.20gb", "python", "train.py", "--lr", "3e-4"))
    waiting = wait_for(lambda: (s := lab.status("workspace", "train", "lab-bob")).get("reason") == "WaitingForDevice"
                       and s, what="bob's run waiting for a device")
    assert waiting["queue"]["position"] == 1 and waiting["phase"] == "Pending", waiting
    lab.apply(run("eval", "cara", "2g.20gb"))
    cara = wait_for(lambda: (s := lab.status("workspace", "eval", "lab-cara")).get("queue") and s,
                    what="cara's run in the queue")
    assert cara["queue"]["position"] == 2 and cara["queue"]["ahead"] == ["bob/train"], cara
    assert pod(lab, "bob", "train") is None and pod(lab, "cara", "eval") is None

    # ann's command exits 0: her run Succeeded, and the slice is bob's within a second of the end
    # timed from a watch, as the operator sees the lab, not from a polling loop's own round trips
    core = k8s.CoreV1Api(lab.cluster.api_client())
    since = core.list_pod_for_all_namespaces(label_selector="labkeeper.io/role=workspace").metadata.resource_version
    end_command(lab, "ann", "first", 0)
    ended_at = started_at = None
    for event in watch.Watch().stream(core.list_pod_for_all_namespaces, label_selector="labkeeper.io/role=workspace",
                                    resource_version=since, timeout_seconds=30):
        seen, meta = time.monotonic(), event["object"].metadata
        if ended_at is None and (meta.namespace, meta.name) == ("lab-ann", "ws-first") \
                and event["object"].status.phase == "Succeeded":
            ended_at = seen
        if (meta.namespace, meta.name) == ("lab-bob", "ws-train"):
            started_at = seen
            break
    assert ended_at is not None and started_at is not None, lab.log_tail()
    handed_on = started_at - ended_at
    print(f"slice handed on {handed_on:.3f}s after ann's run ended")
    assert handed_on < 1.0, f"bob's pod came {handed_on:.2f}s after ann's run ended"
    done = lab.wait_phase("first", "ann", "Succeeded", "Failed")
    assert (done["phase"], done["reason"], done["exitCode"]) == ("Succeeded", "Completed", 0), done
    assert done.get("finishedAt") and not done.get("holdNode"), done
    assert done["message"] == "the command completed with exit code 0", done
    # her usage meter, which accounting folds, saw the run hold its slice while it ran and stop at its end
    assert [m["state"] for m in done["meter"]][-2:] == ["active", "off"], done["meter"]
    assert done["meter"][-2]["gpuEquivalents"] == pytest.approx(2 / 7, abs=1e-3)
    assert done["meter"][-1]["reason"] == "Completed", done["meter"]
    # the ended pod stays (its logs with it) but holds nothing
    assert pod(lab, "ann", "first")["status"]["phase"] == "Succeeded"

    # bob's command fails with 3: Failed with that code, and cara's run starts on the slice
    lab.wait_phase("train", "bob", "Running")
    end_command(lab, "bob", "train", 3)
    failed = lab.wait_phase("train", "bob", "Succeeded", "Failed")
    assert (failed["phase"], failed["reason"], failed["exitCode"]) == ("Failed", "Error", 3), failed
    assert failed["message"] == "the command exited with code 3" and not failed.get("holdNode"), failed
    lab.wait_phase("eval", "cara", "Running", timeout=10)

    # cara's is killed for memory: the container's own reason and code
    end_command(lab, "cara", "eval", 137, "OOMKilled")
    oom = lab.wait_phase("eval", "cara", "Succeeded", "Failed")
    assert (oom["phase"], oom["reason"], oom["exitCode"]) == ("Failed", "OOMKilled", 137), oom
    assert "out of memory" in oom["message"]
    events = lab.items("events", "-n", "lab-bob", "--field-selector", "reason=Failed,involvedObject.kind=Workspace")
    assert [e["type"] for e in events] == ["Warning"] and "exited with code 3" in events[0]["message"]

    # an ended run stays ended: nothing restarts it, and after the retention it goes, pod and all
    assert lab.status("workspace", "first", "lab-ann")["phase"] == "Succeeded"
    wait_for(lambda: lab.get("workspace", "first", "lab-ann") is None, timeout=RETENTION + 20,
             what="ann's ended run gone after the retention")
    wait_for(lambda: pod(lab, "ann", "first") is None, timeout=30, what="its pod gone with it")
    clear(lab)


def test_a_users_runs_and_workspaces_share_her_gpu_equivalent_cap(lab: Lab):
    # dora may hold 0.5 GPU equivalents: a 3g.40gb (3/7) and a 1g.10gb (1/7) do not fit together
    lab.apply(run("big", "dora", "3g.40gb"))
    lab.wait_phase("big", "dora", "Running")
    lab.apply(workspace("nb", "dora", profile="1g.10gb"))
    over = wait_for(lambda: (s := lab.status("workspace", "nb", "lab-dora")).get("reason") == "QuotaExceeded" and s,
                    what="dora's workspace over her cap")
    assert over["message"] == "0.43 GPU equivalents in use + 0.14 requested > cap 0.50 for tier researcher", over
    assert pod(lab, "dora", "nb") is None  # although both 1g.10gb slices are free

    # the run ends; its pod stays for its logs but no longer counts: her workspace starts
    end_command(lab, "dora", "big", 0)
    lab.wait_phase("big", "dora", "Succeeded")
    lab.wait_phase("nb", "dora", "Running", timeout=10)
    assert pod(lab, "dora", "big")["status"]["phase"] == "Succeeded"

    # and the other way round: the running workspace leaves no room for another 3g.40gb run
    lab.apply(run("again", "dora", "3g.40gb"))
    again = wait_for(lambda: (s := lab.status("workspace", "again", "lab-dora")).get("reason") == "QuotaExceeded"
                     and s, what="dora's second run over her cap")
    assert again["message"] == "0.14 GPU equivalents in use + 0.43 requested > cap 0.50 for tier researcher", again
    assert lab.status("gpuuser", "dora")["usage"]["gpuEquivalents"] == pytest.approx(1 / 7, abs=1e-3)
    clear(lab)


def labctl(lab: Lab, user: str, *args: str, popen: bool = False):
    """labctl as she runs it, with the kubeconfig the operator issued her."""
    secret = lab.get("secret", f"kubeconfig-{user}", SYSTEM_NAMESPACE)
    kubeconfig = lab.workdir / f"{user}.kubeconfig"
    kubeconfig.write_bytes(base64.b64decode(secret["data"]["config"]))
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "COLUMNS": "250", "NO_COLOR": "1"}
    if popen:
        # Ctrl-C reaches it as at her terminal, even where the test runs as a background job (which ignores SIGINT)
        return subprocess.Popen(["env", "--default-signal=INT", str(LABCTL), *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run([str(LABCTL), *args], capture_output=True, text=True, env=env, timeout=60, check=False)


class Lines:
    """A stream read on a thread of its own, so a test can wait for a line labctl printed without blocking."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=lambda: self.lines.extend(stream), daemon=True)
        self._thread.start()

    def seen(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def text(self) -> str:
        self._thread.join(timeout=30)
        return "".join(self.lines)


def test_labctl_run_shows_its_place_streams_its_output_and_exits_with_the_commands_code(lab: Lab):
    # the box's two 1g.10gb slices are ann's
    lab.apply(workspace("a", "ann", profile="1g.10gb"), workspace("b", "ann", profile="1g.10gb"))
    lab.wait_phase("a", "ann", "Running")
    lab.wait_phase("b", "ann", "Running")
    # what her command will print (kwok serves this file as the pod's log)
    logs = lab.workdir / "eve-hello.log"
    logs.write_text(cri_log(["hello from the run", "epoch 1 loss 0.50"]))

    running = labctl(lab, "eve", "run", "hello", "--gpu", "1g.10gb", *SMALL, "--", "sh", "-c", "echo hi; exit 3",
                     popen=True)
    try:
        waiting = wait_for(lambda: (s := lab.status("workspace", "hello", "lab-eve")).get("queue") and s,
                           what="eve's run in the queue")
        assert waiting["queue"]["position"] == 1
        ws = lab.get("workspace", "hello", "lab-eve")
        assert ws["spec"]["mode"] == "Batch" and ws["spec"]["command"] == ["sh", "-c", "echo hi; exit 3"]
        # labctl polls: the slice frees only once she has been shown her place (a loaded machine is slow to)
        printed = Lines(running.stderr)
        wait_for(lambda: printed.seen("in the queue"), timeout=30, what=lambda: f"labctl's place line in "
                 f"{printed.lines}")
        lab.kubectl("delete", "workspace", "a", "-n", "lab-ann", "--wait=false")
        lab.wait_phase("hello", "eve", "Running", timeout=20)
        lab.cluster.serve_pod("lab-eve", "ws-hello", logs_file=logs)
        end_command(lab, "eve", "hello", 3)
        running.wait(timeout=60)
        out, err = running.stdout.read(), printed.text()
    finally:
        if running.poll() is None:
            running.kill()
    assert running.returncode == 3, out + err
    assert "run hello queued in lab-eve (1g.10gb): sh -c 'echo hi; exit 3'" in out, out
    assert "hello: waiting, #1 in the queue: no free 1g.10gb slice (2 in use); you are next" in err, err
    assert "hello from the run\nepoch 1 loss 0.50\n" in out, out
    assert "run hello Failed (Error): the command exited with code 3" in err, err

    # after the end: the log is still there, and the run is listed with its code
    after = labctl(lab, "eve", "logs", "hello")
    assert after.returncode == 0 and "epoch 1 loss 0.50" in after.stdout, after.stderr
    runs = labctl(lab, "eve", "runs")
    row = next(line.split() for line in runs.stdout.splitlines() if line.startswith("hello"))
    assert row[:4] == ["hello", "Failed", "3", "1g.10gb"], runs.stdout

    # Ctrl-C detaches: labctl exits, the run waits on and starts when a slice frees
    detached = labctl(lab, "eve", "run", "later", "--gpu", "2g.20gb", *SMALL, "--", "python", "eval.py", popen=True)
    lab.apply(workspace("c", "ann", profile="2g.20gb"))  # the 2g.20gb slice is taken: later waits
    try:
        wait_for(lambda: lab.status("workspace", "later", "lab-eve").get("phase"), what="eve's second run seen")
        detached.send_signal(signal.SIGINT)
        _, err = detached.communicate(timeout=30)
    finally:
        if detached.poll() is None:
            detached.kill()
    assert detached.returncode == 130 and "detached; run later goes on" in err, err
    lab.kubectl("delete", "workspace", "c", "-n", "lab-ann", "--wait=false")
    lab.wait_phase("later", "eve", "Running", timeout=20)

    # --detach queues and returns at once
    queued = labctl(lab, "eve", "run", "bg", "--gpu", "1g.10gb", *SMALL, "--detach", "--", "python", "x.py")
    assert queued.returncode == 0 and "follow it with: labctl logs bg -f" in queued.stdout, queued.stderr
    assert lab.get("workspace", "bg", "lab-eve")["spec"]["mode"] == "Batch"
    clear(lab)


def test_a_preempted_run_is_not_ended_it_waits_and_runs_again_from_the_start(lab: Lab):
    lab.apply(run("sweep", "stud", "3g.40gb"))
    first = lab.wait_phase("sweep", "stud", "Running")
    # faculty may preempt: the scheduler takes the student's slice for the professor's run
    lab.apply(run("urgent", "prof", "3g.40gb"))
    lab.wait_phase("urgent", "prof", "Running", timeout=60)
    preempted = lab.wait_phase("sweep", "stud", "Preempted", "Pending", "Succeeded", "Failed", timeout=30)
    assert preempted["phase"] in ("Preempted", "Pending") and preempted.get("exitCode") is None, preempted
    assert lab.items("events", "-n", "lab-stud", "--field-selector", "reason=Preempted,involvedObject.kind=Workspace")
    # the professor's run ends: the student's starts again, in a new pod
    end_command(lab, "prof", "urgent", 0)
    again = lab.wait_phase("sweep", "stud", "Running", timeout=30)
    assert again["podUID"] != first["podUID"] and again.get("exitCode") is None, again
    clear(lab)
