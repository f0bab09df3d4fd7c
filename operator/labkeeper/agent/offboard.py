"""What happens to a departing user's data: Keep, Archive (a tar.gz under `<dataRoot>/archive/`) or
Delete. The account itself goes in the accounts batch; this handles the home and the /home symlink.

An archive is never overwritten or skipped: each offboarding writes a new `<u>-<UTC time>[-n].tar.gz`,
claimed without replacing anything, and the home is deleted only after that archive has been read back
and found to hold every entry and byte of the home, and the home has not changed since it was read."""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import os
import stat
import tarfile
import zlib
from dataclasses import dataclass, field

from labkeeper.agent import hostops
from labkeeper.agent.homes import KUBECONFIG_PATH
from labkeeper.agent.hostops import Owner
from labkeeper.agent.model import Report, check_username

ARCHIVE_DIR = "archive"
# labkeeper's own credentials in a home are never archived: the client-certificate kubeconfig the agent wrote
CREDENTIAL_PATHS = frozenset({"/".join(KUBECONFIG_PATH)})
_CHUNK = 1 << 20


class ArchiveMismatch(OSError):
    """The archive read back does not hold the home as it was archived; the home is kept."""


@dataclass
class Entry:
    """One archived entry: what the tar member must say, and how it looked in the home."""

    kind: str  # "dir" | "file" | "symlink"
    mode: int
    uid: int
    gid: int
    size: int = 0
    digest: str = ""  # sha256 of a file's bytes, a symlink's target
    seen: tuple = ()  # (ino, size, mtime_ns, ctime_ns) when it was archived


@dataclass
class Manifest:
    entries: dict[str, Entry] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries.values())


class _Hashing:
    """A file object that hashes what tarfile reads through it."""

    def __init__(self, handle) -> None:
        self.handle, self.sha, self.count = handle, hashlib.sha256(), 0

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.sha.update(data)
        self.count += len(data)
        return data


def _seen(st: os.stat_result) -> tuple:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _kind(st: os.stat_result) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISREG(st.st_mode):
        return "file"
    return None  # FIFOs, sockets, devices are not archived


def _entries(dir_fd: int, prefix: str):
    """(relative name, stat) of every archivable entry below an open directory, sorted, without following links."""
    for entry in sorted(os.scandir(dir_fd), key=lambda e: e.name):
        relative = f"{prefix}{entry.name}"
        if relative in CREDENTIAL_PATHS:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if _kind(st) is not None:
            yield entry.name, relative, st


def _add_tree(tar: tarfile.TarFile, dir_fd: int, user: str, prefix: str, manifest: Manifest) -> None:
    """Add everything below an open directory; every entry is opened with O_NOFOLLOW and described from
    its descriptor, so a symlink is stored as a symlink and never read through."""
    for name, relative, st in _entries(dir_fd, prefix):
        info = tarfile.TarInfo(f"{user}/{relative}")
        info.uid, info.gid, info.mtime = st.st_uid, st.st_gid, int(st.st_mtime)
        info.mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(name, dir_fd=dir_fd)
            tar.addfile(info)
            manifest.entries[info.name] = Entry("symlink", info.mode, info.uid, info.gid, 0,
                                                info.linkname, _seen(st))
        elif stat.S_ISDIR(st.st_mode):
            try:
                child = hostops.open_dir(dir_fd, name)
            except (hostops.UnsafePath, FileNotFoundError):
                continue
            with hostops.opened(child):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                manifest.entries[info.name] = Entry("dir", info.mode, info.uid, info.gid, seen=_seen(st))
                _add_tree(tar, child, user, f"{relative}/", manifest)
        else:
            opened = hostops.open_entry(dir_fd, name)
            if opened is None:
                continue
            fd, now = opened
            with os.fdopen(fd, "rb") as handle:
                info.size = now.st_size
                reader = _Hashing(handle)
                tar.addfile(info, reader)
                manifest.entries[info.name] = Entry("file", info.mode, info.uid, info.gid, reader.count,
                                                    reader.sha.hexdigest(), _seen(now))


def _home_as_it_is(dir_fd: int, user: str, prefix: str, out: dict[str, tuple]) -> dict[str, tuple]:
    """How every archivable entry of the home looks now, by lstat only, keyed like the archive's members."""
    for name, relative, st in _entries(dir_fd, prefix):
        out[f"{user}/{relative}"] = (_kind(st), *_seen(st))
        if stat.S_ISDIR(st.st_mode):
            try:
                with hostops.opened(hostops.open_dir(dir_fd, name)) as child:
                    _home_as_it_is(child, user, f"{relative}/", out)
            except (hostops.UnsafePath, FileNotFoundError):
                continue
    return out


def _read_back(fd: int, manifest: Manifest) -> None:
    """Read the written archive from its descriptor; every member and byte must be what was archived."""
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        found = _members(fd)
    except ArchiveMismatch:
        raise
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise ArchiveMismatch(errno.EIO, f"the archive does not read back: {err}") from err
    want = {name: (e.kind, e.mode, e.uid, e.gid, e.size, e.digest) for name, e in manifest.entries.items()}
    got = {name: (e.kind, e.mode, e.uid, e.gid, e.size, e.digest) for name, e in found.items()}
    if got != want:
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        differ = sorted(n for n in set(want) & set(got) if want[n] != got[n])
        raise ArchiveMismatch(errno.EIO, f"archive read back does not match the home: missing {missing[:3]}, "
                                         f"unexpected {extra[:3]}, different {differ[:3]}")


def _members(fd: int) -> dict[str, Entry]:
    found: dict[str, Entry] = {}
    with os.fdopen(os.dup(fd), "rb") as raw, tarfile.open(fileobj=raw, mode="r:gz") as tar:
        for member in tar:
            if member.isdir():
                entry = Entry("dir", member.mode, member.uid, member.gid)
            elif member.issym():
                entry = Entry("symlink", member.mode, member.uid, member.gid, 0, member.linkname)
            elif member.isfile():
                sha, size = hashlib.sha256(), 0
                data = tar.extractfile(member)
                while chunk := data.read(_CHUNK):
                    sha.update(chunk)
                    size += len(chunk)
                entry = Entry("file", member.mode, member.uid, member.gid, size, sha.hexdigest())
            else:
                raise ArchiveMismatch(errno.EIO, f"unexpected member {member.name!r} of type {member.type!r}")
            if member.name in found:
                raise ArchiveMismatch(errno.EIO, f"member {member.name!r} appears twice")
            found[member.name] = entry
        while tar.fileobj.read(_CHUNK):  # to the end of the stream, so that gzip checks its CRC and length
            pass
    return found


def archive_name(user: str, now: dt.datetime, attempt: int = 0) -> str:
    stamp = now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{user}-{stamp}{f'-{attempt + 1}' if attempt else ''}.tar.gz"


def _partial_prefix(user: str) -> str:
    return f".partial.{user}."  # usernames have no '.', so one user's prefix never matches another's


def _write_archive(archive_fd: int, home_fd: int, user: str, now: dt.datetime) -> tuple[int, str, Manifest]:
    """The home as a tar.gz in a new temporary file (O_EXCL), fsynced; returns its open descriptor."""
    temp = f"{_partial_prefix(user)}{os.getpid()}.{now.strftime('%Y%m%dT%H%M%S%f')}"
    fd = hostops.create_exclusive(archive_fd, temp, Owner(0, 0, 0o600))
    manifest = Manifest()
    try:
        with os.fdopen(os.dup(fd), "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            st = os.fstat(home_fd)
            info = tarfile.TarInfo(user)
            info.type, info.uid, info.gid = tarfile.DIRTYPE, st.st_uid, st.st_gid
            info.mode, info.mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
            tar.addfile(info)
            manifest.entries[user] = Entry("dir", info.mode, info.uid, info.gid)
            _add_tree(tar, home_fd, user, "", manifest)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(temp, dir_fd=archive_fd)
        raise
    return fd, temp, manifest


def archive_home(data_fd: int, user: str, now: dt.datetime) -> tuple[str, Manifest] | None:
    """Write `<dataRoot>/archive/<u>-<UTC time>[-n].tar.gz`, read it back, and return its path and contents once
    it holds the home exactly; raises (and publishes nothing) when it does not or the home changed meanwhile."""
    check_username(user)
    users_fd = hostops.open_existing_dir(data_fd, "users")
    if users_fd is None:
        return None
    with hostops.opened(users_fd):
        home_fd = hostops.open_existing_dir(users_fd, user)
        if home_fd is None:
            return None
        archive_fd, _ = hostops.ensure_dir(data_fd, ARCHIVE_DIR, Owner(0, 0, 0o700))
        with hostops.opened(home_fd), hostops.opened(archive_fd):
            for stale in os.listdir(archive_fd):
                if stale.startswith(_partial_prefix(user)):
                    hostops.remove_entry(archive_fd, stale)  # left by a pass killed while writing
            fd, temp, manifest = _write_archive(archive_fd, home_fd, user, now)
            try:
                _read_back(fd, manifest)
                as_archived = {name: (e.kind, *e.seen) for name, e in manifest.entries.items() if e.seen}
                now_in_home = _home_as_it_is(home_fd, user, "", {})
                if now_in_home != as_archived:
                    changed = sorted(n for n in set(now_in_home) | set(as_archived)
                                     if now_in_home.get(n) != as_archived.get(n))
                    raise ArchiveMismatch(errno.EAGAIN, f"the home changed while it was archived "
                                                        f"({', '.join(changed[:3])}); archived again next pass")
                for attempt in range(1000):
                    final = archive_name(user, now, attempt)
                    if hostops.publish_exclusive(archive_fd, temp, final):
                        return f"{ARCHIVE_DIR}/{final}", manifest
                raise FileExistsError(errno.EEXIST, f"no free archive name for {user} at {final}")
            finally:
                os.close(fd)
                if hostops.lstat(archive_fd, temp) is not None:
                    os.unlink(temp, dir_fd=archive_fd)


def delete_home(data_fd: int, user: str) -> bool:
    check_username(user)
    users_fd = hostops.open_existing_dir(data_fd, "users")
    if users_fd is None:
        return False
    with hostops.opened(users_fd):
        if hostops.lstat(users_fd, user) is None:
            return False
        hostops.remove_entry(users_fd, user)
    return True


def forget_credentials(data_fd: int, user: str) -> bool:
    """Remove the kubeconfig the agent wrote into a departing user's home, whatever happens to the rest of it."""
    check_username(user)
    try:
        with hostops.opened(hostops.walk(data_fd, ["users", user, KUBECONFIG_PATH[0]], create=False)) as kube_fd:
            st = hostops.lstat(kube_fd, KUBECONFIG_PATH[1])
            if st is None or not stat.S_ISREG(st.st_mode):
                return False
            hostops.remove_entry(kube_fd, KUBECONFIG_PATH[1])
            return True
    except (FileNotFoundError, hostops.UnsafePath):
        return False  # no home, no ~/.kube, or a symlink in its place: nothing of ours to remove


def offboard_data(data_fd: int, home_link_fd: int, user: str, link_target: str, policy: str,
                  now: dt.datetime, report: Report) -> None:
    """Idempotent: a second call after a kill at any line finishes the job; a kill after the archive was
    published but before the home went leaves a second, identical archive at worst, never a lost file."""
    if hostops.remove_symlink(home_link_fd, user, link_target):
        report.did(f"/home/{user} removed")
    if forget_credentials(data_fd, user):
        report.did(f"{user}: ~/{'/'.join(KUBECONFIG_PATH)} removed")
    if policy == "Keep":
        report.note(user, f"data kept in users/{user}")
        return
    if policy == "Archive":
        try:
            archived = archive_home(data_fd, user, now)
        except ArchiveMismatch as err:
            report.fail(user, f"home kept in users/{user}: {err.strerror}")
            return
        if archived:
            path, manifest = archived
            report.did(f"{user}: home archived to {path} ({len(manifest.entries)} entries, "
                       f"{manifest.total_bytes} bytes, read back and checked)")
    if delete_home(data_fd, user):
        report.did(f"{user}: home deleted")
