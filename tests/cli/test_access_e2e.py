"""Getting into a workspace end to end: labctl shell, logs, port-forward and jupyter go through the
real API server with alice's own kubeconfig, and kwok answers as the workspace's kubelet (a local
directory stands in for the container, a local process for what serves in it). On bob's workspace
every one of them is Forbidden."""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from labkeeper.render import access as render_access
from labkeeper.render import pod as render_pod
from labkeeper.testing.cluster import LocalCluster, NodeSpec, cri_log, free_port

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
JUPYTER_PORT = 8888

# `jupyter` inside the fake container: `lab --port P --ServerApp.token T` serves on the host port that
# the workspace's port P is forwarded to (LAB_PORT_<P>), `server list --json` lists it once it serves
FAKE_JUPYTER = f"""#!{sys.executable}
import http.server, json, os, sys
from pathlib import Path
state = Path(os.environ["HOME"]) / "jupyter-server.json"
if sys.argv[1:3] == ["server", "list"]:
    print(state.read_text() if state.exists() else "", end="")
    sys.exit(0)
options = dict(arg.lstrip("-").split("=", 1) for arg in sys.argv[2:] if "=" in arg)
port, token = int(options["port"]), options["ServerApp.token"]

class Lab(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        allowed = f"token={{token}}" in self.path
        body = b"JupyterLab" if allowed else b"token required"
        self.send_response(200 if allowed else 403)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

server = http.server.HTTPServer(("127.0.0.1", int(os.environ[f"LAB_PORT_{{port}}"])), Lab)
state.write_text(json.dumps({{"port": port, "token": token, "pid": os.getpid()}}) + "\\n")
server.serve_forever()
"""


@dataclass
class Workspace:
    user: str
    name: str
    container: Path

    @property
    def namespace(self) -> str:
        return f"lab-{self.user}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[LocalCluster]:
    """A cluster of its own: no operator rewrites the Workspace status set here by hand."""
    workdir = tmp_path_factory.mktemp("access")
    with LocalCluster(workdir, [NodeSpec("gpu-node-1", "cpu-only")], preload=[REPO_ROOT / "crds"]) as cluster:
        for user in ("alice", "bob"):
            cluster.kubectl("create", "namespace", f"lab-{user}")
            cluster.kubectl("apply", "-f", "-", input=json.dumps({
                "apiVersion": "v1", "kind": "List",
                "items": [render_access.user_role(user), render_access.user_role_binding(user, render_access.access_group(user, "e2e"))]}))
        yield cluster


def running_workspace(cluster: LocalCluster, user: str, name: str, root: Path, *, ports=None,
                      log_lines=()) -> Workspace:
    """What the operator would leave behind: a Running Workspace and its pod, which kwok serves."""
    container = root / f"{user}-{name}"
    (container / "bin").mkdir(parents=True)
    ws = Workspace(user, name, container)
    manifest = {"apiVersion": "labkeeper.io/v1alpha1", "kind": "Workspace",
                "metadata": {"name": name, "namespace": ws.namespace},
                "spec": {"image": "jupyter/minimal-notebook", "state": "Running"}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    uid = cluster.kubectl("get", "workspace", name, "-n", ws.namespace, "-o", "jsonpath={.metadata.uid}").stdout
    owner = {"apiVersion": "labkeeper.io/v1alpha1", "kind": "Workspace", "name": name, "uid": uid,
             "controller": True, "blockOwnerDeletion": True}
    pod = render_pod.workspace_pod(render_pod.PodInputs(
        workspace=name, namespace=ws.namespace, owner=owner, username=user, uid=20001, gid=20001,
        supplemental_gids=(), home_host_path=f"/data/home/{user}", image=manifest["spec"]["image"]))
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    cluster.kubectl("wait", "--for=condition=Ready", f"pod/{render_pod.pod_name(name)}", "-n", ws.namespace,
                    "--timeout=60s")
    cluster.kubectl("patch", "workspace", name, "-n", ws.namespace, "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"phase": "Running", "podName": render_pod.pod_name(name)}}))
    logs = container / "workspace.log"
    logs.write_text(cri_log(log_lines))
    env = {"HOME": str(container), "PATH": f"{container / 'bin'}:{os.environ['PATH']}",
           **{f"LAB_PORT_{inside}": str(outside) for inside, outside in (ports or {}).items()}}
    cluster.serve_pod(ws.namespace, render_pod.pod_name(name), container_dir=container, env=env, logs_file=logs,
                      ports=ports)
    return ws


class LabctlServing:
    """A labctl command that keeps serving (port-forward, jupyter), read line by line, ended by the test."""

    def __init__(self, labctl_bin: Path, *args: str, kubeconfig: Path) -> None:
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "COLUMNS": "200", "NO_COLOR": "1"}
        self.popen = subprocess.Popen([str(labctl_bin), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env)

    def line_matching(self, pattern: str, timeout: float = 60) -> re.Match:
        found: list[re.Match] = []

        def read() -> None:
            for line in self.popen.stdout:
                if match := re.search(pattern, line):
                    found.append(match)
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not found:
            self.stop()
            raise AssertionError(f"labctl printed no line matching {pattern!r}; stderr: {self.popen.stderr.read()}")
        return found[0]

    def stop(self) -> None:
        self.popen.terminate()
        self.popen.wait(10)


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=20) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture(scope="module")
def alice(lab) -> Path:
    return lab.user_kubeconfig("alice", (render_access.access_group("alice", "e2e"),))


@pytest.fixture(scope="module")
def bob(lab) -> Path:
    return lab.user_kubeconfig("bob", (render_access.access_group("bob", "e2e"),))


@pytest.fixture
def app_server() -> Iterator[int]:
    """A plain HTTP server on this machine standing in for an app that listens inside the workspace."""

    class App(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"tensorboard at {self.path}".encode()
            self.send_response(200)
            # as real web apps do; kwok, unlike containerd, keeps a forward open after the app's side closes
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), App)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_alice_runs_a_command_in_her_workspace_through_exec(lab, alice, labctl, tmp_path):
    ws = running_workspace(lab, "alice", "train", tmp_path)
    (ws.container / "data.txt").write_text("epoch 3 done\n")

    result = labctl("shell", "train", "--", "sh", "-c", 'cat data.txt; echo "in $PWD"; echo oops >&2',
                    kubeconfig=alice)

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"epoch 3 done\nin {ws.container}\n"
    assert result.stderr == "oops\n"

    failed = labctl("shell", "train", "--", "sh", "-c", "exit 3", kubeconfig=alice)
    assert failed.returncode != 0
    # kwok reports a failed command as an error without its exit code; labctl says so in one line
    assert failed.stderr.startswith("error: train: ") and "exit status 3" in failed.stderr
    assert "Traceback" not in failed.stderr


def test_alice_reads_her_workspace_output(lab, alice, labctl, tmp_path):
    running_workspace(lab, "alice", "notes", tmp_path, log_lines=["loading model", "step 1 loss 2.3",
                                                                  "step 2 loss 1.9"])

    result = labctl("logs", "notes", kubeconfig=alice)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "loading model\nstep 1 loss 2.3\nstep 2 loss 1.9\n"

    tail = labctl("logs", "notes", "--tail", "1", kubeconfig=alice)
    assert tail.stdout == "step 2 loss 1.9\n"


def test_alice_forwards_a_port_of_her_workspace_to_her_machine(lab, alice, app_server, labctl_bin, tmp_path):
    running_workspace(lab, "alice", "board", tmp_path, ports={6006: app_server})

    forward = LabctlServing(labctl_bin, "port-forward", "board", "6006:0", kubeconfig=alice)
    try:
        local = int(forward.line_matching(r"forwarding 127\.0\.0\.1:(\d+) -> board:6006").group(1))
        assert http_get(f"http://127.0.0.1:{local}/scalars") == (200, "tensorboard at /scalars")
        # each connection is its own stream through the API server
        assert http_get(f"http://127.0.0.1:{local}/graphs") == (200, "tensorboard at /graphs")
    finally:
        forward.stop()


@pytest.fixture
def jupyter_workspace(lab, tmp_path) -> Iterator[Workspace]:
    ws = running_workspace(lab, "alice", "nb", tmp_path, ports={JUPYTER_PORT: free_port()})
    jupyter = ws.container / "bin" / "jupyter"
    jupyter.write_text(FAKE_JUPYTER)
    jupyter.chmod(0o755)
    yield ws
    state = ws.container / "jupyter-server.json"
    if state.exists():
        # started through exec, so it is not a child of this test; it recorded its pid
        os.kill(json.loads(state.read_text())["pid"], signal.SIGTERM)


def test_alice_starts_jupyterlab_and_its_url_answers_through_the_forward(jupyter_workspace, alice, labctl_bin):
    started = LabctlServing(labctl_bin, "jupyter", "nb", kubeconfig=alice)
    try:
        started.line_matching(r"^started JupyterLab in nb")
        url = started.line_matching(r"(http://127\.0\.0\.1:\d+/lab\?token=([0-9a-f]{32}))")
        assert http_get(url.group(1)) == (200, "JupyterLab")
        assert http_get(url.group(1).split("?")[0])[0] == 403
    finally:
        started.stop()

    found = LabctlServing(labctl_bin, "jupyter", "nb", kubeconfig=alice)
    try:
        found.line_matching(r"^found JupyterLab in nb")
        again = found.line_matching(r"http://127\.0\.0\.1:\d+/lab\?token=([0-9a-f]{32})")
        assert again.group(1) == url.group(2)
        assert http_get(again.group(0)) == (200, "JupyterLab")
    finally:
        found.stop()


def test_alice_is_forbidden_every_way_into_bobs_workspace(lab, alice, bob, labctl, app_server, tmp_path):
    running_workspace(lab, "bob", "secret", tmp_path, ports={6006: app_server, JUPYTER_PORT: app_server},
                      log_lines=["bob's results"])

    mine = labctl("shell", "secret", "--", "cat", "workspace.log", kubeconfig=bob)
    assert mine.returncode == 0 and "bob's results" in mine.stdout
    assert labctl("logs", "secret", kubeconfig=bob).stdout == "bob's results\n"

    for args in (("shell", "secret", "--", "cat", "workspace.log"), ("logs", "secret"),
                 ("port-forward", "secret", "6006:0"), ("jupyter", "secret")):
        result = labctl("--user", "bob", *args, kubeconfig=alice, timeout=60)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        first = result.stderr.splitlines()[0]
        assert first.startswith("error: Forbidden: ") and 'User "alice" cannot' in first, (args, result.stderr)
        assert 'in the namespace "lab-bob"' in first
        assert "bob's results" not in result.stdout and "forwarding" not in result.stdout

    # the API server refuses the streams themselves, not only labctl's lookup of the Workspace
    for verb in (("exec", "ws-secret", "--", "true"), ("logs", "ws-secret")):
        direct = lab.kubectl(*verb, "-n", "lab-bob", kubeconfig=alice, check=False)
        assert direct.returncode != 0 and "Forbidden" in direct.stderr, direct.stderr

