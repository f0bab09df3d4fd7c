"""Disk usage without blocking the agent: a background scanner that walks each tree by descriptors at a
bounded rate, and pure alert levels at 80% / 95% of the data filesystem and of each limit."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from labkeeper.agent import hostops

WARN, CRITICAL = 0.80, 0.95


def alert_level(used: int, limit: int | None, warn: float = WARN, critical: float = CRITICAL) -> str:
    """"OK", "Warning" (≥ warn) or "Critical" (≥ critical) of a limit; no limit, no alert."""
    if not limit or limit <= 0:
        return "OK"
    ratio = used / limit
    if ratio >= critical:
        return "Critical"
    if ratio >= warn:
        return "Warning"
    return "OK"


@dataclass(frozen=True)
class FilesystemUsage:
    used: int
    total: int

    @property
    def ratio(self) -> float:
        return self.used / self.total if self.total else 0.0


def filesystem_usage(fd: int) -> FilesystemUsage:
    st = os.fstatvfs(fd)
    total = st.f_blocks * st.f_frsize
    return FilesystemUsage(total - st.f_bfree * st.f_frsize, total)


def tree_bytes(dir_fd: int, pause: Callable[[], None] = lambda: None) -> int:
    """Allocated bytes below an open directory; symlinks count as themselves and are not followed."""
    total = 0
    for entry in os.scandir(dir_fd):
        pause()
        st = entry.stat(follow_symlinks=False)
        total += st.st_blocks * 512
        if stat.S_ISDIR(st.st_mode):
            try:
                with hostops.opened(hostops.open_dir(dir_fd, entry.name)) as child:
                    total += tree_bytes(child, pause)
            except (hostops.UnsafePath, FileNotFoundError):
                continue
    return total


class DiskScanner:
    """Measures named subtrees of the data root one after another in a daemon thread, at most
    `entries_per_second` stat calls, and keeps the last figure of each for the reconciler to read."""

    def __init__(self, data_fd: int, *, entries_per_second: int = 20000, interval: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.data_fd = data_fd
        self.entries_per_second = entries_per_second
        self.interval = interval
        self.clock = clock
        self.sizes: dict[str, int] = {}
        self._targets: list[str] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()

    def set_targets(self, relative_paths: list[str]) -> None:
        with self._lock:
            if sorted(relative_paths) != sorted(self._targets):
                self._targets = sorted(relative_paths)
                self._wake.set()

    def measure(self, relative: str) -> int | None:
        count = [0]
        started = time.monotonic()

        def pause() -> None:
            count[0] += 1
            if count[0] % 1000 == 0:
                ahead = count[0] / self.entries_per_second - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)

        try:
            with hostops.opened(hostops.walk(self.data_fd, relative.split("/"), create=False)) as fd:
                return os.fstat(fd).st_blocks * 512 + tree_bytes(fd, pause)
        except OSError:
            return None

    def scan_once(self) -> None:
        with self._lock:
            targets = list(self._targets)
        for target in targets:
            if self._stop.is_set():
                return
            size = self.measure(target)
            with self._lock:
                if size is None:
                    self.sizes.pop(target, None)
                else:
                    self.sizes[target] = size

    def run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            self.scan_once()
            self._wake.wait(self.interval)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="disk-scanner", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def get(self, relative: str) -> int | None:
        with self._lock:
            return self.sizes.get(relative)
