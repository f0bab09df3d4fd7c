"""labkeeper's own processes for tests and benchmarks: start, SIGKILL, restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from labkeeper.api.names import SYSTEM_NAMESPACE as SYSTEM_NAMESPACE
from labkeeper.testing.cluster import REPO_ROOT, LocalCluster


class _Process:
    """A labkeeper process a test can SIGKILL (a crash) or SIGTERM (a clean stop), then start again."""

    proc: subprocess.Popen | None = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


class OperatorProcess(_Process):
    """`labkeeper operator` in its own process, so tests can SIGKILL and restart it."""

    def __init__(self, cluster: LocalCluster, logdir: Path, *extra: str) -> None:
        self.cluster = cluster
        self.logdir = logdir
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> OperatorProcess:
        self.starts += 1
        log = (self.logdir / f"operator-{self.starts}.log").open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "labkeeper", "operator", "--kubeconfig", str(self.cluster.kubeconfig),
             "--namespace", SYSTEM_NAMESPACE, *self.extra],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
        )
        log.close()
        return self

    def log_tail(self, lines: int = 60) -> str:
        path = self.logdir / f"operator-{self.starts}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def seed_host_etc(root: Path) -> None:
    """A freshly booted host's /etc: root only, as after a reimage or a tmpfs /etc."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    for name, line in (("passwd", "root:x:0:0:root:/root:/bin/bash"), ("group", "root:x:0:"),
                       ("shadow", "root:*:19000:0:99999:7:::"), ("gshadow", "root:*::")):
        (root / "etc" / name).write_text(line + "\n")


class AgentProcess(_Process):
    """`labkeeper agent` for one node under a temporary host root (a data root and a fresh /etc), in its own
    process so tests can SIGKILL and restart it; `extra` is the agent's own options (selector, sampler...)."""

    def __init__(self, kubeconfig: Path, root: Path, node: str, *extra: str, log: Path | None = None) -> None:
        self.root = root
        self.data = root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        seed_host_etc(root)
        self.args = [sys.executable, "-m", "labkeeper", "agent", "--node", node, "--host-root", str(root),
                     "--data-root", str(self.data), "--kubeconfig", str(kubeconfig), *extra]
        self.log = log or root.parent / f"agent-{node}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> AgentProcess:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return self

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.2, what: str | Callable[[], str] = "condition"):
    """Polls `predicate` until it is truthy; `what` may be a callable, read only on timeout (a log tail)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    described = what() if callable(what) else what
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {described} (last: {last!r})")
