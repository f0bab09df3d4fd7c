"""A child process of the test harness whose output goes to a log file of its own: the control plane's processes
(LocalCluster) and a real node's (RealNode) alike."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class LoggedProcess:
    name: str
    popen: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, name: str, argv: list[str], logdir: Path, cwd: Path, *,
              new_session: bool = False) -> LoggedProcess:
        """Starts `argv` with stdout and stderr appended to `<logdir>/<name>.log` and no stdin."""
        log = logdir / f"{name}.log"
        with log.open("ab") as handle:
            popen = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     cwd=cwd, start_new_session=new_session)
        return cls(name, popen, log)


def check_running(processes: Iterable[LoggedProcess], error: Callable[[LoggedProcess, int], Exception]) -> None:
    """Raises `error(process, exit code)` for the first of `processes` that is no longer running."""
    for proc in processes:
        code = proc.popen.poll()
        if code is not None:
            raise error(proc, code)


def log_tails(logdir: Path, lines: int = 25, prefix: str = "") -> str:
    """The last `lines` lines of every log in `logdir`, each under a header naming it (after `prefix`)."""
    out = []
    for log in sorted(logdir.glob("*.log")):
        text = log.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {prefix}{log.name} (last {len(text)} lines) ---\n" + "\n".join(text))
    return "\n".join(out)
