"""Batch runs on a real node (issue 20): `labctl run` of a real command in the workspace image, on a real
kubelet with a (fake-plugin) MIG slice, streams the command's output through the API server and returns its
exit code; a run that exits 3 ends Failed with exit code 3, and its log is still there after the end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from labkeeper.testing.lab import gpuuser
from labkeeper.testing.reallab import NODE, RealLab

LABCTL = Path(sys.executable).parent / "labctl"
SMALL = ("--cpu", "100m", "--memory", "128Mi")


def labctl(*args: str, kubeconfig: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([str(LABCTL), *args], capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)


@pytest.fixture(scope="module")
def rita(real_lab: RealLab, tmp_path_factory) -> Path:
    """rita, a student, with the kubeconfig the operator issued her."""
    real_lab.apply(gpuuser("rita"))
    real_lab.wait_user_ready("rita")
    yield real_lab.user_kubeconfig("rita", tmp_path_factory.mktemp("rita"))
    real_lab.kubectl("delete", "workspaces", "--all", "-n", "lab-rita", "--wait=false")


def test_labctl_run_streams_a_real_commands_output_and_returns_its_exit_code(real_lab: RealLab, rita: Path):
    image = real_lab.node.workspace_image.name
    script = 'echo "hello from $(whoami)"; for i in 1 2 3; do echo "step $i"; done; python3 -c "print(6 * 7)"'
    done = labctl("run", "hello", "--gpu", "1g.10gb", "--image", image, *SMALL, "--", "bash", "-c", script,
                  kubeconfig=rita)
    assert done.returncode == 0, done.stdout + done.stderr + real_lab.diagnostics()
    assert "hello from rita\nstep 1\nstep 2\nstep 3\n42\n" in done.stdout, done.stdout
    assert "run hello Succeeded (Completed): the command completed with exit code 0" in done.stderr, done.stderr
    status = real_lab.status("workspace", "hello", "lab-rita")
    assert (status["phase"], status["exitCode"], status["node"]) == ("Succeeded", 0, NODE), status
    pod = real_lab.pod("hello", "rita")
    assert pod["status"]["phase"] == "Succeeded" and pod["spec"]["restartPolicy"] == "Never"


def test_a_run_that_exits_3_ends_failed_with_exit_code_3_and_keeps_its_log(real_lab: RealLab, rita: Path):
    image = real_lab.node.workspace_image.name
    failed = labctl("run", "fails", "--gpu", "1g.10gb", "--image", image, *SMALL, "--",
                    "bash", "-c", "echo about to fail; echo on stderr >&2; exit 3", kubeconfig=rita)
    assert failed.returncode == 3, failed.stdout + failed.stderr + real_lab.diagnostics()
    assert "about to fail" in failed.stdout and "on stderr" in failed.stdout, failed.stdout
    assert "run fails Failed (Error): the command exited with code 3" in failed.stderr, failed.stderr
    status = real_lab.status("workspace", "fails", "lab-rita")
    assert (status["phase"], status["reason"], status["exitCode"]) == ("Failed", "Error", 3), status
    assert not status.get("holdNode"), status
    terminated = real_lab.pod("fails", "rita")["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 3
    after = labctl("logs", "fails", kubeconfig=rita)
    assert after.returncode == 0 and "about to fail" in after.stdout, after.stdout + after.stderr
    runs = labctl("runs", kubeconfig=rita)
    rows = {line.split()[0]: line.split()[1:4] for line in runs.stdout.splitlines()[1:] if line.strip()}
    assert rows == {"fails": ["Failed", "3", "1g.10gb"], "hello": ["Succeeded", "0", "1g.10gb"]}, runs.stdout
