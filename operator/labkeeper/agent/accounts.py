"""Host accounts and groups under `<host-root>/etc`.

One way for every change, single or a hundred: read the four account files under shadow-utils'
locks, compute the new files with a pure function, and rename each into place. A process per
account (`useradd --prefix`, ~9 ms each) would alone eat the recovery budget of 1 s for 100 users.
Accounts the agent made carry `labkeeper` as the last GECOS subfield; any other account is never
changed, and a clash with one is reported instead."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field

from labkeeper.agent import hostops
from labkeeper.agent.model import LAB_GROUP_NAME, MANAGED_MARKER, HostUser, Report

_FILE_MODES = {"passwd": 0o644, "group": 0o644, "shadow": 0o640, "gshadow": 0o640}
_LOCKED_PASSWORD = "!*"  # what `usermod -L` makes of "*"
_KEY_ONLY_PASSWORD = "*"  # no password can match; SSH keys still work


@dataclass
class AccountFiles:
    """The four files as lists of colon-separated fields, unknown lines kept in place."""

    passwd: list[list[str]] = field(default_factory=list)
    group: list[list[str]] = field(default_factory=list)
    shadow: list[list[str]] = field(default_factory=list)
    gshadow: list[list[str]] = field(default_factory=list)

    @classmethod
    def parse(cls, texts: dict[str, str]) -> AccountFiles:
        widths = {"passwd": 7, "group": 4, "shadow": 9, "gshadow": 4}
        parsed = {}
        for name, width in widths.items():
            rows = []
            for line in texts.get(name, "").splitlines():
                if not line.strip():
                    continue
                row = line.split(":")
                rows.append(row + [""] * (width - len(row)) if not line.startswith(("#", "+", "-")) else [line])
            parsed[name] = rows
        return cls(**parsed)

    def render(self) -> dict[str, str]:
        return {name: "".join(":".join(row) + "\n" for row in getattr(self, name)) for name in _FILE_MODES}


def _find(rows: list[list[str]], name: str) -> list[str] | None:
    return next((row for row in rows if len(row) > 1 and row[0] == name), None)


def _ids(rows: list[list[str]], column: int) -> dict[int, str]:
    out = {}
    for row in rows:
        if len(row) > column and row[column].isdigit():
            out.setdefault(int(row[column]), row[0])
    return out


def is_managed(passwd_row: list[str]) -> bool:
    return len(passwd_row) > 4 and passwd_row[4].split(",")[-1] == MANAGED_MARKER


def gecos(user: HostUser) -> str:
    clean = "".join(c for c in user.display_name if c not in ":,\n\r\0=")[:64]
    return f"{clean},,,,{MANAGED_MARKER}"


def _set_members(row: list[str], column: int, members: Iterable[str]) -> bool:
    text = ",".join(sorted(set(members)))
    if row[column] == text:
        return False
    row[column] = text
    return True


def plan(files: AccountFiles, users: Iterable[HostUser], lab_gid: int, today: dt.date) -> Report:
    """Bring `files` (changed in place) to the desired accounts; managed accounts not desired go away.
    Returns what changed and, per user, why an account could not be made."""
    report = Report()
    users = list(users)
    lastchg = str((today - dt.date(1970, 1, 1)).days)
    managed = {row[0] for row in files.passwd if len(row) == 7 and is_managed(row)}
    wanted = {u.name for u in users}

    # ---- the lab group --------------------------------------------------------------------------
    lab = _find(files.group, LAB_GROUP_NAME)
    holder = _ids(files.group, 2).get(lab_gid)
    if lab is None and holder not in (None, LAB_GROUP_NAME):
        report.fail(LAB_GROUP_NAME, f"gid {lab_gid} already belongs to group {holder!r} on this host")
    elif lab is None:
        files.group.append([LAB_GROUP_NAME, "x", str(lab_gid), ""])
        files.gshadow.append([LAB_GROUP_NAME, "!", "", ""])
        report.did(f"group {LAB_GROUP_NAME} ({lab_gid}) created")
    elif lab[2] != str(lab_gid):
        report.fail(LAB_GROUP_NAME, f"group {LAB_GROUP_NAME} exists with gid {lab[2]}, policy says {lab_gid}")

    # ---- departed accounts first, so their names and ids are free -------------------------------
    for name in sorted(managed - wanted):
        row = _find(files.passwd, name)
        gid = row[3] if row else None
        files.passwd = [r for r in files.passwd if r[0] != name]
        files.shadow = [r for r in files.shadow if r[0] != name]
        private = _find(files.group, name)
        if private is not None and private[2] == gid:
            files.group = [r for r in files.group if r[0] != name]
            files.gshadow = [r for r in files.gshadow if r[0] != name]
        report.did(f"account {name} removed")

    # ---- accounts ---------------------------------------------------------------------------------
    uids = _ids(files.passwd, 2)
    gids = _ids(files.group, 2)
    provisioned: list[HostUser] = []
    for user in users:
        row = _find(files.passwd, user.name)
        if row is not None and not is_managed(row):
            report.fail(user.name, f"an account named {user.name!r} already exists on this host and is not "
                                   "managed by labkeeper; it was left untouched")
            continue
        if uids.get(user.uid) not in (None, user.name):
            report.fail(user.name, f"uid {user.uid} already belongs to account {uids[user.uid]!r} on this host")
            continue
        group_row = _find(files.group, user.name)
        if group_row is not None and group_row[2] != str(user.gid) and row is None:
            report.fail(user.name, f"a group named {user.name!r} already exists with gid {group_row[2]}")
            continue
        if gids.get(user.gid) not in (None, user.name):
            report.fail(user.name, f"gid {user.gid} already belongs to group {gids[user.gid]!r} on this host")
            continue
        desired = [user.name, "x", str(user.uid), str(user.gid), gecos(user), f"/home/{user.name}", user.shell]
        if row is None:
            files.passwd.append(desired)
            report.did(f"account {user.name} ({user.uid}) created")
        elif row != desired:
            row[:] = desired
            report.did(f"account {user.name} updated")
        uids[user.uid] = gids[user.gid] = user.name
        if group_row is None:
            files.group.append([user.name, "x", str(user.gid), ""])
            report.did(f"group {user.name} ({user.gid}) created")
        elif group_row[2] != str(user.gid):
            group_row[2] = str(user.gid)
            report.did(f"group {user.name} gid set to {user.gid}")
        if _find(files.gshadow, user.name) is None:
            files.gshadow.append([user.name, "!", "", ""])
        _plan_shadow(files, user, lastchg, report)
        provisioned.append(user)

    # ---- memberships: lab-users and the extra groups, for provisioned users only ----------------
    members: dict[str, set[str]] = {LAB_GROUP_NAME: set()}
    for user in provisioned:
        members[LAB_GROUP_NAME].add(user.name)
        for extra in user.groups:
            if _find(files.group, extra) is None:
                report.note(user.name, f"group {extra!r} does not exist on this host; membership skipped")
                continue
            members.setdefault(extra, set()).add(user.name)
    ours = managed | wanted
    for row in files.group:
        if len(row) != 4:
            continue
        current = {m for m in row[3].split(",") if m}
        # members the agent does not manage are someone else's business and stay
        target = (current - ours) | members.get(row[0], set())
        if _set_members(row, 3, target):
            report.did(f"group {row[0]} members: {row[3] or '-'}")
        gs = _find(files.gshadow, row[0])
        if gs is not None and len(gs) == 4:
            _set_members(gs, 3, ({m for m in gs[3].split(",") if m} - ours) | members.get(row[0], set()))
    return report


def _plan_shadow(files: AccountFiles, user: HostUser, lastchg: str, report: Report) -> None:
    password, expire = (_LOCKED_PASSWORD, "1") if user.locked else (_KEY_ONLY_PASSWORD, "")
    row = _find(files.shadow, user.name)
    if row is None:
        files.shadow.append([user.name, password, lastchg, "0", "99999", "7", "", expire, ""])
        return
    if (row[1], row[7]) != (password, expire):
        row[1], row[7] = password, expire
        report.did(f"account {user.name} {'locked' if user.locked else 'unlocked'}")


def reconcile_accounts(etc_fd: int, users: Iterable[HostUser], lab_gid: int, today: dt.date) -> Report:
    """Read, plan and write the account files in one locked batch; files that did not change are not written."""
    with hostops.account_files_locked(etc_fd):
        before = {}
        for name in _FILE_MODES:
            data = hostops.read_file(etc_fd, name)
            before[name] = (data or b"").decode("utf-8", "surrogateescape")
        files = AccountFiles.parse(before)
        baseline = files.render()
        report = plan(files, users, lab_gid, today)
        after = files.render()
        for name, mode in _FILE_MODES.items():
            if after[name] != baseline[name] or not before[name]:
                st = hostops.lstat(etc_fd, name)
                gid = st.st_gid if st is not None else 0  # shadow's group (often "shadow") is kept
                hostops.write_file(etc_fd, name, after[name].encode("utf-8", "surrogateescape"),
                                   hostops.Owner(0, gid, mode))
    return report


def read_accounts(etc_fd: int) -> AccountFiles:
    texts = {}
    for name in _FILE_MODES:
        try:
            texts[name] = (hostops.read_file(etc_fd, name) or b"").decode("utf-8", "surrogateescape")
        except OSError:
            texts[name] = ""
    return AccountFiles.parse(texts)


def group_ids(files: AccountFiles) -> dict[str, int]:
    return {row[0]: int(row[2]) for row in files.group if len(row) == 4 and row[2].isdigit()}


def open_etc(host_fd: int) -> int:
    fd, _ = hostops.ensure_dir(host_fd, "etc", None)
    return fd


