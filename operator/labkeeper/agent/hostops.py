"""Every host side effect of the agent, in one place.

All paths below the two roots are walked one component at a time from an open directory with
O_NOFOLLOW, and changes (owner, mode, ACL, content) are made on the open descriptor, so a symlink a
user planted is never followed. Names are single components checked here a second time."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from labkeeper.agent import acl

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted where a file was expected must not hang the agent
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
ACCOUNT_FILES = ("passwd", "shadow", "group", "gshadow")  # shadow-utils' own locking order


class UnsafePath(OSError):
    """A path component was a symlink, or not the kind of file expected: nothing was changed through it."""


class AclUnsupported(OSError):
    pass


def check_component(name: str) -> str:
    if not name or name in {".", ".."} or "/" in name or "\0" in name or len(name.encode()) > 255:
        raise UnsafePath(errno.EINVAL, f"refusing path component {name!r}")
    return name


def open_root(path: Path) -> int:
    """The data root or host root itself: given by the admin, so symlinks above it are trusted."""
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_dir(parent_fd: int, name: str) -> int:
    try:
        return os.open(check_component(name), _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(err.errno, f"{name!r} is a symlink or not a directory; not followed") from err
        raise


def open_existing_dir(parent_fd: int, name: str) -> int | None:
    """`name` below `parent_fd`, or None where there is none; a symlink in its place is refused as by open_dir."""
    try:
        return open_dir(parent_fd, name)
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def opened(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(check_component(name), dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int
    mode: int  # permission bits including setgid


def fix_owner_mode(fd: int, want: Owner) -> list[str]:
    st = os.fstat(fd)
    changes = []
    if (st.st_uid, st.st_gid) != (want.uid, want.gid):
        os.fchown(fd, want.uid, want.gid)
        changes.append(f"owner {st.st_uid}:{st.st_gid}→{want.uid}:{want.gid}")
    # chown clears setgid, so the mode is compared after it
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode != want.mode:
        os.fchmod(fd, want.mode)
        changes.append(f"mode {mode:04o}→{want.mode:04o}")
    return changes


def ensure_dir(parent_fd: int, name: str, want: Owner | None, *, replace_symlink: bool = False) -> tuple[int, list[str]]:
    """Open (creating if missing) the directory `name`; set owner and mode on the descriptor when given.
    A symlink in its place is removed only with `replace_symlink` (a user's own ~/.ssh), else refused."""
    check_component(name)
    changes: list[str] = []
    st = lstat(parent_fd, name)
    if st is not None and stat.S_ISLNK(st.st_mode) and replace_symlink:
        os.unlink(name, dir_fd=parent_fd)
        changes.append("removed a symlink in its place")
        st = None
    if st is None:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
        changes.append("created")
        if want is None:
            want = Owner(0, 0, 0o755)
    fd = open_dir(parent_fd, name)
    try:
        if want is not None:
            changes += fix_owner_mode(fd, want)
    except BaseException:
        os.close(fd)
        raise
    return fd, changes


def walk(root_fd: int, parts: list[str], *, create: bool) -> int:
    """Open root/parts[0]/parts[1]/…; missing directories are created root:root 0755 when `create`."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            if create:
                child, _ = ensure_dir(fd, part, None)
            else:
                child = open_dir(fd, part)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_file(dir_fd: int, name: str, limit: int = 1 << 24) -> bytes | None:
    st = lstat(dir_fd, name)
    if st is None:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath(errno.EINVAL, f"{name!r} is not a regular file; not read")
    with opened(os.open(name, _FILE_FLAGS, dir_fd=dir_fd)) as fd:
        return os.read(fd, limit)


def _write_temp(dir_fd: int, name: str, data: bytes, want: Owner) -> str:
    temp = f".{name}.labkeeper-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp, dir_fd=dir_fd)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        os.fchown(fd, want.uid, want.gid)
        os.fchmod(fd, want.mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    return temp


def write_file(dir_fd: int, name: str, data: bytes, want: Owner) -> bool:
    """Make `name` a regular file with exactly this content, owner and mode; returns whether it changed.
    The rename replaces whatever was there (a symlink included) without following it."""
    check_component(name)
    st = lstat(dir_fd, name)
    if st is not None and stat.S_ISREG(st.st_mode) and (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
            want.uid, want.gid, want.mode) and st.st_size == len(data) and read_file(dir_fd, name) == data:
        return False
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise UnsafePath(errno.EISDIR, f"{name!r} is a directory; not replaced")
    temp = _write_temp(dir_fd, name, data, want)
    os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    return True


def create_file(dir_fd: int, name: str, data: bytes, want: Owner) -> bool:
    """Write `name` only if nothing by that name exists; never overwrites (a user's own edits survive)."""
    check_component(name)
    if lstat(dir_fd, name) is not None:
        return False
    temp = _write_temp(dir_fd, name, data, want)
    try:
        os.link(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(temp, dir_fd=dir_fd)


def create_exclusive(dir_fd: int, name: str, want: Owner) -> int:
    """A new, empty regular file opened for reading and writing; fails if anything by that name exists."""
    fd = os.open(check_component(name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=dir_fd)
    try:
        os.fchown(fd, want.uid, want.gid)
        os.fchmod(fd, want.mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def publish_exclusive(dir_fd: int, temp: str, name: str) -> bool:
    """Give the finished file `temp` the name `name` only if nothing has it (a hard link never replaces), then
    drop `temp`; False when the name is taken, and `temp` stays."""
    try:
        os.link(check_component(temp), check_component(name), src_dir_fd=dir_fd, dst_dir_fd=dir_fd,
                follow_symlinks=False)
    except FileExistsError:
        return False
    os.unlink(temp, dir_fd=dir_fd)
    return True


def ensure_symlink(dir_fd: int, name: str, target: str) -> bool:
    """`name` → `target`; an old symlink is swapped atomically, anything else in its place is refused."""
    check_component(name)
    st = lstat(dir_fd, name)
    if st is not None:
        if not stat.S_ISLNK(st.st_mode):
            raise UnsafePath(errno.EEXIST, f"{name!r} exists and is not a symlink; left as it is")
        if os.readlink(name, dir_fd=dir_fd) == target:
            return False
    temp = f".{name}.labkeeper-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp, dir_fd=dir_fd)
    os.symlink(target, temp, dir_fd=dir_fd)
    os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    return True


def remove_symlink(dir_fd: int, name: str, target: str) -> bool:
    st = lstat(dir_fd, name)
    if st is None or not stat.S_ISLNK(st.st_mode) or os.readlink(name, dir_fd=dir_fd) != target:
        return False
    os.unlink(name, dir_fd=dir_fd)
    return True


def remove_entry(dir_fd: int, name: str) -> None:
    """Delete a file, symlink or whole directory tree; rmtree's fd-based walk never follows a symlink."""
    st = lstat(dir_fd, name)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(check_component(name), dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def open_entry(dir_fd: int, name: str) -> tuple[int, os.stat_result] | None:
    """Open a directory or regular file for fchown/fchmod/ACL; symlinks, FIFOs, sockets: None."""
    st = lstat(dir_fd, name)
    if st is None or not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        return None
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOENT, errno.ENXIO):
            return None  # swapped for a symlink or removed since lstat
        raise
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        return None
    return fd, now


# ---- ACLs ---------------------------------------------------------------------------------------

def get_acl(fd: int, default: bool = False) -> acl.Acl | None:
    try:
        return acl.decode(os.getxattr(fd, acl.DEFAULT if default else acl.ACCESS))
    except OSError as err:
        if err.errno == errno.ENODATA:
            return None
        if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise AclUnsupported(err.errno, "the filesystem has no POSIX ACL support") from err
        raise


def set_acl(fd: int, value: acl.Acl, default: bool = False) -> None:
    try:
        os.setxattr(fd, acl.DEFAULT if default else acl.ACCESS, value.encode())
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise AclUnsupported(err.errno, "the filesystem has no POSIX ACL support") from err
        raise


# ---- account files --------------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _commonio_lock(etc_fd: int, name: str) -> None:
    """shadow-utils' own `<file>.lock` (what `useradd --prefix` takes): a pid file linked into place."""
    lock, temp = f"{name}.lock", f"{name}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp, dir_fd=etc_fd)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=etc_fd)
    with opened(fd):
        os.write(fd, str(os.getpid()).encode())
    try:
        for _ in range(2):
            try:
                os.link(temp, lock, src_dir_fd=etc_fd, dst_dir_fd=etc_fd, follow_symlinks=False)
                return
            except FileExistsError:
                holder = (read_file(etc_fd, lock) or b"").strip()
                if holder.isdigit() and _pid_alive(int(holder)):
                    raise BlockingIOError(errno.EAGAIN, f"{lock} is held by process {holder.decode()}") from None
                os.unlink(lock, dir_fd=etc_fd)  # stale: its process is gone
        raise BlockingIOError(errno.EAGAIN, f"could not take {lock}")
    finally:
        os.unlink(temp, dir_fd=etc_fd)


@contextlib.contextmanager
def account_files_locked(etc_fd: int, timeout: float = 15.0) -> Iterator[None]:
    """Hold `.pwd.lock` (lckpwdf's fcntl lock) and shadow-utils' per-file locks, like useradd does."""
    fd = os.open(".pwd.lock", os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=etc_fd)
    taken: list[str] = []
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                for name in ACCOUNT_FILES:
                    _commonio_lock(etc_fd, name)
                    taken.append(name)
                break
            except BlockingIOError:
                for name in taken:
                    os.unlink(f"{name}.lock", dir_fd=etc_fd)
                taken.clear()
                fcntl.lockf(fd, fcntl.LOCK_UN)
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield
    finally:
        for name in reversed(taken):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{name}.lock", dir_fd=etc_fd)
        os.close(fd)  # closing drops the fcntl lock


# ---- installers -------------------------------------------------------------------------------------

def seal_tree(fd: int) -> int:
    """Make everything below the open directory root:root, without group/other write or set-id bits, top down:
    each directory is taken from its previous owner before its entries, so none can be swapped meanwhile.
    Symlinks are re-owned, never followed. Returns the number of entries."""
    os.fchown(fd, 0, 0)
    os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) & 0o755 | 0o700)
    count = 0
    for _, dirs, files, dir_fd in os.fwalk(".", dir_fd=fd, follow_symlinks=False):
        for name in dirs + files:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            os.chown(name, 0, 0, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(name, stat.S_IMODE(st.st_mode) & 0o755 | 0o600, dir_fd=dir_fd, follow_symlinks=False)
            count += 1
    return count


@dataclass(frozen=True)
class Ran:
    returncode: int
    output_tail: str
    timed_out: bool


def run_installer(argv: list[str], cwd: Path, env: dict[str, str], uid: int | None, gid: int | None,
                  timeout: float) -> Ran:
    """Run an installer from an argument list (never a shell string) as uid:gid with no extra groups, in its own
    session so that it and everything it started are killed together at the timeout or when it ends."""
    as_other = uid is not None and os.geteuid() == 0
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, close_fds=True,
        **({"user": uid, "group": gid, "extra_groups": []} if as_other else {}))
    timed_out = False
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever it left running in the background
    return Ran(proc.returncode, output.decode(errors="replace")[-2000:], timed_out)
