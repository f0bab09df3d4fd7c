"""SharedCache and ModelStore directories: 2775 root:<lab group>, access and default ACLs by number,
checked on every pass and repaired through the whole tree (without following symlinks) when they drift."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from labkeeper.agent import acl, hostops
from labkeeper.agent.hostops import Owner
from labkeeper.agent.model import LAB_GROUP_NAME, Report, SharedTree, check_tree_path


@dataclass(frozen=True)
class TreeAccess:
    """The tree's permissions with every name resolved to a number."""

    gid: int
    access: acl.Acl
    unresolved: tuple[str, ...] = ()


def subject(tree: SharedTree) -> str:
    return f"{tree.kind}/{tree.name}"


def decide_access(tree: SharedTree, lab_gid: int, uid_of: Callable[[str], int | None],
                  gid_of: Callable[[str], int | None]) -> TreeAccess:
    """Caches: the named writers, or every lab member. Stores: named writers rwx, readers (default: every
    lab member) r-x. Names that do not resolve are reported, never guessed."""
    unresolved: list[str] = []

    def ids(names: tuple[str, ...], lookup: Callable[[str], int | None], what: str) -> set[int]:
        found = set()
        for name in names:
            number = lab_gid if what == "group" and name == LAB_GROUP_NAME else lookup(name)
            if number is None:
                unresolved.append(f"{what} {name}")
            else:
                found.add(number)
        return found

    writer_uids = ids(tree.writers.users, uid_of, "user")
    writer_gids = ids(tree.writers.groups, gid_of, "group")
    reader_uids = ids(tree.readers.users, uid_of, "user")
    reader_gids = ids(tree.readers.groups, gid_of, "group")
    everyone_writes = tree.kind == "cache" and not (tree.writers.users or tree.writers.groups)
    if everyone_writes:
        writer_gids.add(lab_gid)
    elif not (tree.readers.users or tree.readers.groups):
        reader_gids.add(lab_gid)
    group_obj = acl.RWX if lab_gid in writer_gids else acl.RX
    access = acl.tree_acl(group_obj=group_obj, writer_uids=writer_uids, writer_gids=writer_gids,
                          reader_uids=reader_uids, reader_gids=reader_gids)
    return TreeAccess(lab_gid, access, tuple(unresolved))


def _repair_entry(fd: int, st: os.stat_result, access: acl.Acl) -> bool:
    """One directory or file inside the tree; owners are left as they are (they are the users')."""
    changed = False
    if stat.S_ISDIR(st.st_mode):
        if hostops.get_acl(fd) != access:
            hostops.set_acl(fd, access)
            changed = True
        if hostops.get_acl(fd, default=True) != access:
            hostops.set_acl(fd, access, default=True)
            changed = True
        if not st.st_mode & stat.S_ISGID:
            os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) | stat.S_ISGID)
            changed = True
    else:
        want = access.for_file(bool(st.st_mode & stat.S_IXUSR))
        if hostops.get_acl(fd) != want:
            hostops.set_acl(fd, want)
            changed = True
    return changed


def repair_tree(dir_fd: int, access: acl.Acl, budget: list[int]) -> int:
    """Walk below an open directory by descriptors only; returns how many entries were changed."""
    changed = 0
    for entry in os.scandir(dir_fd):
        if budget[0] <= 0:
            break
        budget[0] -= 1
        opened = hostops.open_entry(dir_fd, entry.name)
        if opened is None:
            continue  # symlinks, sockets, FIFOs and entries that moved are left alone
        fd, st = opened
        with hostops.opened(fd):
            changed += _repair_entry(fd, st, access)
            if stat.S_ISDIR(st.st_mode):
                changed += repair_tree(fd, access, budget)
    return changed


def ensure_tree(data_fd: int, tree: SharedTree, decided: TreeAccess, report: Report, *,
                repair_limit: int = 1_000_000) -> bool:
    """Create or repair one tree; returns whether the filesystem supports ACLs there."""
    who = subject(tree)
    parts = check_tree_path(tree.path)
    for name in decided.unresolved:
        report.note(who, f"{name} is not known on this host; left out of the ACL")
    with hostops.opened(hostops.walk(data_fd, parts[:-1], create=True)) as parent_fd:
        fd, changes = hostops.ensure_dir(parent_fd, parts[-1], Owner(0, decided.gid, 0o2775))
    with hostops.opened(fd):
        if changes:
            report.did(f"{who}: {', '.join(changes)}")
        try:
            drifted = hostops.get_acl(fd) != decided.access or hostops.get_acl(fd, default=True) != decided.access
        except hostops.AclUnsupported:
            report.fail(who, "the data filesystem has no ACL support: falling back to setgid 2775 and umask 002")
            return False
        if drifted:
            budget = [repair_limit]
            fixed = repair_tree(fd, decided.access, budget)
            if budget[0] <= 0:
                # the top is left as it was so that the next pass sees the drift and goes on
                report.note(who, f"ACL repair stopped after {repair_limit} entries; continues next pass")
                return True
            _repair_entry(fd, os.fstat(fd), decided.access)
            report.did(f"{who}: ACLs set on the tree ({fixed} entries inside repaired)")
    return True
