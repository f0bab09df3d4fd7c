"""A lab's first day on a real node: alice's workspace is a real container running as her, with her
home; she gets into it with labctl through the real kubelet; two users race for the last 1g.10gb device
and the kubelet's device manager never hands one device to two containers; a stopped workspace's hold
keeps her device for her restart."""

from __future__ import annotations

import concurrent.futures
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from labkeeper.testing.cluster import REPO_ROOT, free_port
from labkeeper.testing.images import WORKSPACE_PORT
from labkeeper.testing.lab import gpuuser
from labkeeper.testing.processes import wait_for
from labkeeper.testing.reallab import NODE, RealLab

LABCTL = Path(sys.executable).parent / "labctl"
SMALL = ("--cpu", "100m", "--memory", "128Mi")


def labctl(*args: str, kubeconfig: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([str(LABCTL), *args], capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)


@pytest.fixture(scope="session")
def image(real_lab: RealLab) -> str:
    assert real_lab.node.workspace_image is not None
    return real_lab.node.workspace_image.name


@pytest.fixture(scope="session")
def people(real_lab: RealLab, tmp_path_factory) -> dict[str, Path]:
    """alice from examples/alice.yaml, bob and carol as students; each with the kubeconfig the operator issued."""
    keys = tmp_path_factory.mktemp("people")
    # the lab's shared trees first, so every workspace pod mounts them
    for example in ("caches.yaml", "models.yaml"):
        real_lab.kubectl("apply", "-f", str(REPO_ROOT / "examples" / example))
    for kind, name in (("sharedcache", "pip"), ("modelstore", "torch"), ("modelstore", "huggingface")):
        wait_for(lambda k=kind, n=name: real_lab.status(k, n).get("phase") == "Ready", timeout=120,
                 what=lambda k=kind, n=name: f"{k} {n} Ready; {real_lab.status(k, n)}")
    real_lab.kubectl("apply", "-f", str(REPO_ROOT / "examples" / "alice.yaml"))
    real_lab.apply(gpuuser("bob"), gpuuser("carol"))
    for name in ("alice", "bob", "carol"):
        real_lab.wait_user_ready(name)
    return {name: real_lab.user_kubeconfig(name, keys) for name in ("alice", "bob", "carol")}


@pytest.fixture(scope="session")
def alice_train(real_lab: RealLab, people, image) -> dict:
    """alice's `train` with one 1g.10gb slice, Running; returns its pod."""
    up = labctl("up", "train", "--gpu", "1g.10gb", "--image", image, *SMALL, "--timeout", "120",
                kubeconfig=people["alice"])
    assert up.returncode == 0, up.stdout + up.stderr + real_lab.diagnostics()
    pod = real_lab.pod("train", "alice")
    assert pod["spec"]["nodeName"] == NODE
    return pod


def in_workspace(user: str, workspace: str, script: str, people) -> str:
    result = labctl("shell", workspace, "--", "bash", "-c", script, kubeconfig=people[user])
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_alices_workspace_is_a_real_container_running_as_her_with_her_home(real_lab, people, alice_train):
    status = real_lab.status("gpuuser", "alice")
    uid, gid = int(status["uid"]), int(status["gid"])
    out = in_workspace("alice", "train", 'whoami; id -u; id -g; id -G; echo "$HOME"; pwd; '
                       'echo "written by $(whoami)" > "$HOME/from-the-container"; '
                       "bash -ic 'echo \"prompt: ${PS1@P}\"' 2>/dev/null", people)
    lines = out.splitlines()
    # an image that never heard of her uid still knows her name: the host's user database is mounted
    assert lines[0] == "alice", out
    assert "I have no name" not in out
    assert (int(lines[1]), int(lines[2])) == (uid, gid)
    lab_groups = set(alice_train["spec"]["securityContext"]["supplementalGroups"])
    assert lab_groups and lab_groups | {gid} <= {int(g) for g in lines[3].split()}, lines[3]
    assert lines[4] == "/home/alice" and lines[5] == "/home/alice"
    assert re.search(r"prompt: alice@ws-train:", out), out

    # the file she wrote is on the data root, in her persistent home, owned by her
    written = real_lab.node.data_root / "users" / "alice" / "from-the-container"
    assert written.read_text() == "written by alice\n"
    st = written.stat()
    assert (st.st_uid, st.st_gid) == (uid, gid)


def test_alice_gets_in_with_shell_logs_and_port_forward_through_the_kubelet_and_bob_cannot(
        real_lab, people, alice_train, image):
    # port-forward to the image's HTTP server, which serves her home
    local = free_port()
    forward = subprocess.Popen([str(LABCTL), "port-forward", "train", f"{WORKSPACE_PORT}:{local}"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "KUBECONFIG": str(people["alice"]), "NO_COLOR": "1"})
    try:
        first = forward.stdout.readline()
        assert f"forwarding 127.0.0.1:{local} -> train:{WORKSPACE_PORT}" in first, first + forward.stderr.read()
        body = urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=30).read().decode()
        assert "from-the-container" in body or "Directory listing" in body
    finally:
        forward.terminate()
        forward.wait(10)
    # the HTTP server's own request log is the container's output
    logs = wait_for(lambda: (r := labctl("logs", "train", kubeconfig=people["alice"])).returncode == 0
                    and "GET / HTTP" in r.stdout and r, timeout=30, what="the GET in labctl logs")
    assert "Traceback" not in logs.stderr

    up = labctl("up", "secret-work", "--image", image, *SMALL, "--timeout", "120", kubeconfig=people["bob"])
    assert up.returncode == 0, up.stdout + up.stderr
    assert in_workspace("bob", "secret-work", "whoami", people).strip() == "bob"
    for args in (("shell", "secret-work", "--", "id"), ("logs", "secret-work")):
        refused = labctl("--user", "bob", *args, kubeconfig=people["alice"])
        assert refused.returncode == 1, (args, refused.stdout)
        assert refused.stderr.startswith("error: Forbidden: "), (args, refused.stderr)
        assert 'User "alice" cannot' in refused.stderr
    forward = subprocess.run([str(LABCTL), "--user", "bob", "port-forward", "secret-work", "8000:0"],
                             capture_output=True, text=True, timeout=60,
                             env={**os.environ, "KUBECONFIG": str(people["alice"]), "NO_COLOR": "1"})
    assert forward.returncode == 1 and forward.stderr.startswith("error: Forbidden: "), forward.stderr
    down = labctl("down", "secret-work", "--yes", kubeconfig=people["bob"])
    assert down.returncode == 0, down.stderr
    wait_for(lambda: real_lab.pod("secret-work", "bob") is None, timeout=90, what="bob's pod gone")


def test_alice_shares_the_pip_cache_with_bob_and_reads_a_store_she_may_not_write(real_lab, people, alice_train,
                                                                                image):
    up = labctl("up", "pipper", "--image", image, *SMALL, "--timeout", "120", kubeconfig=people["bob"])
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        in_workspace("bob", "pipper", 'echo bob > "$PIP_CACHE_DIR/from-bob"', people)
        out = in_workspace("alice", "train", 'echo alice > "$PIP_CACHE_DIR/from-alice" && rm "$PIP_CACHE_DIR/from-bob" '
                           '&& echo removed; touch "$TORCH_HOME/x" 2>&1; echo "torch: $?"; '
                           'mkdir -p "$HF_HUB_CACHE" && touch "$HF_HUB_CACHE/from-alice" && echo "hf: written"', people)
        assert "removed" in out, out
        assert "Read-only file system" in out and "torch: 1" in out, out
        assert "hf: written" in out, out  # a writer of the huggingface store
        cache = real_lab.node.data_root / "cache" / "pip"
        assert not (cache / "from-bob").exists()
        uid = int(real_lab.status("gpuuser", "alice")["uid"])
        assert (cache / "from-alice").stat().st_uid == uid
    finally:
        labctl("down", "pipper", "--yes", kubeconfig=people["bob"])
        wait_for(lambda: real_lab.pod("pipper", "bob") is None, timeout=90, what="bob's pipper gone")


def visible_devices(user: str, workspace: str, people) -> str:
    return in_workspace(user, workspace, 'printf %s "$NVIDIA_VISIBLE_DEVICES"', people)


def test_two_users_race_for_the_last_1g_device_and_the_loser_waits(real_lab, people, alice_train, image):
    devices = {d.id for d in real_lab.node.devices if d.profile == "1g.10gb"}
    assert len(devices) == 2
    alices = visible_devices("alice", "train", people)
    assert alices in devices

    def up(user: str) -> subprocess.CompletedProcess:
        return labctl("up", "race", "--gpu", "1g.10gb", "--image", image, *SMALL, "--no-wait",
                      kubeconfig=people[user])

    barrier = threading.Barrier(2)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda u: (barrier.wait(), up(u))[1], ("bob", "carol")))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]

    def settled():
        phases = {u: real_lab.status("workspace", "race", f"lab-{u}").get("phase") for u in ("bob", "carol")}
        return sorted(phases.values()) == ["Pending", "Running"] and phases

    phases = wait_for(settled, timeout=120, what=lambda: f"one race winner; {real_lab.diagnostics()}")
    winner = next(u for u, p in phases.items() if p == "Running")
    loser = next(u for u, p in phases.items() if p == "Pending")
    winners = visible_devices(winner, "race", people)
    # the kubelet's device manager gave the last device to the winner, and never alice's to anyone else
    assert winners in devices and winners != alices
    waiting = real_lab.status("workspace", "race", f"lab-{loser}")
    assert waiting["reason"] and "1g.10gb" in waiting.get("message", ""), waiting
    loser_pod = real_lab.pod("race", loser)
    assert loser_pod is None or loser_pod["status"].get("phase") == "Pending"
    RACE.update(winner=winner, loser=loser, alices=alices)


RACE: dict = {}


def test_stop_holds_alices_device_and_her_restart_gets_the_same_one(real_lab, people, alice_train):
    if not RACE:
        pytest.skip("needs the race above: both 1g.10gb devices in use and one loser waiting")
    grace = alice_train["spec"]["terminationGracePeriodSeconds"]
    started = time.monotonic()
    stop = labctl("stop", "train", "--timeout", "120", kubeconfig=people["alice"])
    assert stop.returncode == 0, stop.stdout + stop.stderr
    # her process got the SIGTERM and ended; nothing waited out the grace period
    assert time.monotonic() - started < grace / 2, f"stop took {time.monotonic() - started:.0f}s of {grace}s grace"
    # the hold is labkeeper's record; the kubelet sees the device free, and labkeeper admits no one onto it
    held = wait_for(lambda: (st := real_lab.status("workspace", "train", "lab-alice")).get("holdNode") and st,
                    timeout=60, what="alice's hold recorded")
    assert (held["phase"], held["holdNode"], held["holdResource"]) == ("Stopped", NODE, "nvidia.com/mig-1g.10gb")
    wait_for(lambda: real_lab.pod("train", "alice") is None, timeout=60, what="alice's pod gone")
    # the device is free on the kubelet, but offered to no one else: the loser waits, told of the hold
    loser = wait_for(lambda: "held" in (st := real_lab.status("workspace", "race", f"lab-{RACE['loser']}")).get(
        "message", "") and st, timeout=60, what="the loser told of alice's hold")
    assert loser["phase"] == "Pending"

    start = labctl("start", "train", "--timeout", "120", kubeconfig=people["alice"])
    assert start.returncode == 0, start.stdout + start.stderr
    assert visible_devices("alice", "train", people) == RACE["alices"]
    assert real_lab.status("workspace", "race", f"lab-{RACE['loser']}").get("phase") == "Pending"


def test_alice_yaml_made_her_account_and_home_in_the_nodes_sandbox(real_lab, people):
    host = real_lab.node.host_root
    passwd = {line.split(":")[0]: line.split(":") for line in (host / "etc" / "passwd").read_text().splitlines()}
    status = real_lab.status("gpuuser", "alice")
    assert int(passwd["alice"][2]) == int(status["uid"])
    home = real_lab.node.data_root / "users" / "alice"
    assert os.readlink(host / "home" / "alice") == str(home)
    keys = (home / ".ssh" / "authorized_keys").read_text()
    example = yaml.safe_load((REPO_ROOT / "examples" / "alice.yaml").read_text())
    assert example["spec"]["sshKeys"][0] in keys
    # this machine's own user database never heard of her
    assert "alice:" not in Path("/etc/passwd").read_text()
