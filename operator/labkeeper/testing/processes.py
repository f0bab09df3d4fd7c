"""labkeeper's own processes for tests and benchmarks: start, SIGKILL, restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from labkeeper.testing.cluster import REPO_ROOT, LocalCluster

SYSTEM_NAMESPACE = "labkeeper-system"


class OperatorProcess:
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

    def log_tail(self, lines: int = 60) -> str:
        path = self.logdir / f"operator-{self.starts}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


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
