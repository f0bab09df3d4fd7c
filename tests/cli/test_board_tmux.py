"""`labctl admin board` in a real 80x24 terminal (tmux), over a lab of 10 users and 20 workspaces
that the operator placed on MIG slices and whole GPUs."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from labkeeper.testing.cluster import NodeSpec
from labkeeper.testing.lab import Lab, gpuuser, workspace
from labkeeper.testing.processes import wait_for

pytestmark = pytest.mark.integration

PROFILES = ["1g.10gb", "2g.20gb", "3g.40gb", "full", "none"]


@pytest.fixture(scope="module")
def busy_lab(tmp_path_factory):
    nodes = (NodeSpec("gpu-node-1", "h100-balanced"), NodeSpec("gpu-node-2", "full-gpus"))
    with Lab(nodes, workdir=tmp_path_factory.mktemp("board")) as lab:
        users = [gpuuser(f"user{i}", "faculty") for i in range(10)]
        lab.add_users(*users)
        lab.apply(*[workspace(f"exp-{i:02d}", f"user{i % 10}", profile=PROFILES[i % len(PROFILES)])
                    for i in range(20)])
        wait_for(lambda: sum(1 for w in lab.items("workspaces", "-A") if (w.get("status") or {}).get("phase")) == 20,
                 timeout=120, what="every workspace has a phase")
        yield lab


def capture(session: str) -> list[str]:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True,
                          check=True).stdout.rstrip("\n").split("\n")


def test_the_board_fits_80x24_and_shows_slices_users_and_the_queue(busy_lab, labctl_bin):
    if shutil.which("tmux") is None:
        pytest.fail("tmux is missing: apt-get install -y tmux")
    session = f"labctl-board-{os.getpid()}"
    command = f"KUBECONFIG={busy_lab.cluster.kubeconfig} {labctl_bin} admin board --interval 1"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24", command], check=True)
    try:
        deadline = time.monotonic() + 30
        screen: list[str] = []
        while time.monotonic() < deadline:
            screen = capture(session)
            if any(line.startswith("ALERTS") for line in screen):
                break
            time.sleep(0.5)
        print("\n".join(screen))
        assert len(screen) <= 24
        assert all(len(line) <= 80 for line in screen)
        assert "10 users  20 workspaces:" in screen[0]
        assert screen[1].startswith("GPU SLICES 6: ")  # 2 + 1 + 1 MIG slices and 2 whole GPUs
        slice_rows = [line.split() for line in screen if line.startswith(("gpu-node-1", "gpu-node-2"))]
        taken = [row for row in slice_rows if row[3].startswith("user")]
        assert len(taken) >= 4, screen  # the operator placed GPU workspaces on free slices
        assert all(row[4].startswith("exp-") for row in taken)
        queue = next(line for line in screen if line.startswith("QUEUE"))
        assert int(queue.split()[1].rstrip(":")) >= 1  # more GPU workspaces than slices
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
