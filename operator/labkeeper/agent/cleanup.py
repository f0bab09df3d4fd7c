"""SharedCache cleanup: files not accessed for `maxAge`, then least recently used first until the
cache is under `maxSize`. The plan is a pure function; removal re-checks each file by descriptor."""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from labkeeper.agent import hostops
from labkeeper.agent.model import check_tree_path


@dataclass(frozen=True)
class CacheFile:
    parts: tuple[str, ...]  # path below the cache, one component each
    size: int
    atime: float
    inode: tuple[int, int]


@dataclass(frozen=True)
class Freed:
    files: int
    bytes: int
    reason: str


def plan(files: list[CacheFile], now: dt.datetime, max_age: dt.timedelta | None,
         max_size: int | None) -> tuple[list[CacheFile], str]:
    """Which files go, and why in words."""
    doomed: list[CacheFile] = []
    reasons = []
    keep = sorted(files, key=lambda f: f.atime)
    if max_age is not None:
        cutoff = (now - max_age).timestamp()
        old = [f for f in keep if f.atime < cutoff]
        if old:
            doomed += old
            keep = [f for f in keep if f.atime >= cutoff]
            reasons.append(f"{len(old)} not accessed for {max_age.days}d+" if max_age.days else
                           f"{len(old)} not accessed within {max_age}")
    if max_size is not None:
        total = sum(f.size for f in keep)
        lru = []
        for f in keep:
            if total <= max_size:
                break
            lru.append(f)
            total -= f.size
        if lru:
            doomed += lru
            reasons.append(f"{len(lru)} least recently used to get under {max_size} bytes")
    return doomed, "; ".join(reasons) or "nothing to remove"


def _scan(dir_fd: int, prefix: tuple[str, ...]) -> Iterator[CacheFile]:
    for entry in os.scandir(dir_fd):
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISREG(st.st_mode):
            yield CacheFile((*prefix, entry.name), st.st_blocks * 512, st.st_atime, (st.st_dev, st.st_ino))
        elif stat.S_ISDIR(st.st_mode):
            try:
                with hostops.opened(hostops.open_dir(dir_fd, entry.name)) as child:
                    yield from _scan(child, (*prefix, entry.name))
            except (hostops.UnsafePath, FileNotFoundError):
                continue


def scan(data_fd: int, path: str) -> list[CacheFile]:
    with hostops.opened(hostops.walk(data_fd, check_tree_path(path), create=False)) as fd:
        return list(_scan(fd, ()))


def remove(data_fd: int, path: str, files: list[CacheFile]) -> Freed:
    """Unlink each planned file if it is still the same regular file; a directory swapped for a symlink
    on the way is refused by open_dir, and unlinkat never follows the last component."""
    count = freed = 0
    with hostops.opened(hostops.walk(data_fd, check_tree_path(path), create=False)) as cache_fd:
        for f in files:
            try:
                with hostops.opened(hostops.walk(cache_fd, list(f.parts[:-1]), create=False)) as parent:
                    st = hostops.lstat(parent, f.parts[-1])
                    if st is None or not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != f.inode:
                        continue
                    os.unlink(f.parts[-1], dir_fd=parent)
                    count += 1
                    freed += f.size
            except (hostops.UnsafePath, FileNotFoundError):
                continue
    return Freed(count, freed, "")


def clean(data_fd: int, path: str, now: dt.datetime, max_age: dt.timedelta | None,
          max_size: int | None) -> Freed:
    doomed, reason = plan(scan(data_fd, path), now, max_age, max_size)
    done = remove(data_fd, path, doomed)
    return Freed(done.files, done.bytes, reason)
