"""What happens to a departing user's data: Keep, Archive (a tar.gz under `<dataRoot>/archive/`) or
Delete. The account itself goes in the accounts batch; this handles the home and the /home symlink."""

from __future__ import annotations

import datetime as dt
import os
import stat
import tarfile

from labkeeper.agent import hostops
from labkeeper.agent.hostops import Owner
from labkeeper.agent.model import Report, check_username


def _add_tree(tar: tarfile.TarFile, dir_fd: int, arcname: str) -> None:
    """Add everything below an open directory; every entry is opened with O_NOFOLLOW and described from
    its descriptor, so a symlink is stored as a symlink and never read through."""
    for entry in sorted(os.scandir(dir_fd), key=lambda e: e.name):
        name = f"{arcname}/{entry.name}"
        st = entry.stat(follow_symlinks=False)
        info = tarfile.TarInfo(name)
        info.uid, info.gid, info.mtime = st.st_uid, st.st_gid, int(st.st_mtime)
        info.mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(entry.name, dir_fd=dir_fd)
            tar.addfile(info)
        elif stat.S_ISDIR(st.st_mode):
            try:
                child = hostops.open_dir(dir_fd, entry.name)
            except (hostops.UnsafePath, FileNotFoundError):
                continue
            with hostops.opened(child):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                _add_tree(tar, child, name)
        elif stat.S_ISREG(st.st_mode):
            opened = hostops.open_entry(dir_fd, entry.name)
            if opened is None:
                continue
            fd, now = opened
            with os.fdopen(fd, "rb") as handle:
                info.size = now.st_size
                tar.addfile(info, handle)


def archive_name(user: str, today: dt.date) -> str:
    return f"{user}-{today.isoformat()}.tar.gz"


def archive_home(data_fd: int, user: str, today: dt.date) -> str | None:
    """`<dataRoot>/archive/<u>-<date>.tar.gz`, written under a temporary name and renamed when complete."""
    check_username(user)
    try:
        users_fd = hostops.open_dir(data_fd, "users")
    except FileNotFoundError:
        return None
    with hostops.opened(users_fd):
        try:
            home_fd = hostops.open_dir(users_fd, user)
        except FileNotFoundError:
            return None
        archive_fd, _ = hostops.ensure_dir(data_fd, "archive", Owner(0, 0, 0o700))
        final = archive_name(user, today)
        temp = f".{final}.partial"
        with hostops.opened(home_fd), hostops.opened(archive_fd):
            if hostops.lstat(archive_fd, final) is not None:
                return f"archive/{final}"  # finished before a restart; only the delete is left
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=archive_fd)
            with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
                st = os.fstat(home_fd)
                info = tarfile.TarInfo(user)
                info.type, info.uid, info.gid = tarfile.DIRTYPE, st.st_uid, st.st_gid
                info.mode, info.mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
                tar.addfile(info)
                _add_tree(tar, home_fd, user)
                tar.close()
                raw.flush()
                os.fsync(raw.fileno())
            os.rename(temp, final, src_dir_fd=archive_fd, dst_dir_fd=archive_fd)
    return f"archive/{final}"


def delete_home(data_fd: int, user: str) -> bool:
    check_username(user)
    try:
        users_fd = hostops.open_dir(data_fd, "users")
    except FileNotFoundError:
        return False
    with hostops.opened(users_fd):
        if hostops.lstat(users_fd, user) is None:
            return False
        hostops.remove_entry(users_fd, user)
    return True


def offboard_data(data_fd: int, home_link_fd: int, user: str, link_target: str, policy: str,
                  today: dt.date, report: Report) -> None:
    """Idempotent: a second call after a kill at any line finishes the job without redoing what is done."""
    if hostops.remove_symlink(home_link_fd, user, link_target):
        report.did(f"/home/{user} removed")
    if policy == "Keep":
        report.note(user, f"data kept in users/{user}")
        return
    if policy == "Archive":
        archived = archive_home(data_fd, user, today)
        if archived:
            report.did(f"{user}: home archived to {archived}")
    if delete_home(data_fd, user):
        report.did(f"{user}: home deleted")
