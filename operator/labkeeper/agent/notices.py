"""The notice in a user's home: `~/.labkeeper/notices/<workspace>` says, in plain words, that a workspace of
theirs is about to be stopped (idle or runtime warning) or was stopped for a limit, and what to do about it.

The operator decides and records the warnings in the Workspace's status; the agent only mirrors them into
the home on the node the workspace ran on. It writes as root inside a directory the user owns, so every step
goes through hostops' descriptor-based helpers: a symlink planted at `.labkeeper`, `notices` or a notice
file is replaced or left alone, never followed."""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from labkeeper.agent import hostops
from labkeeper.agent.hostops import Owner, UnsafePath
from labkeeper.agent.model import Report, UnsafeName, check_username
from labkeeper.api.names import DNS_LABEL_PATTERN, username_of
from labkeeper.api.phases import RUNNING_PHASES
from labkeeper.api.resources import GPUUser, Workspace, WorkspaceSpec, WorkspaceStatus
from labkeeper.api.units import format_time, human_duration

log = logging.getLogger("labkeeper.agent.notices")
NOTICE_DIR = (".labkeeper", "notices")
LIMIT_STOPS = ("Idle", "MaxRuntime")
WORKSPACE_NAME_MAX = 60


@dataclass(frozen=True)
class NoticeOwner:
    uid: int
    gid: int


# ---- what the notice says --------------------------------------------------------------------------

def _until(moment: dt.datetime, now: dt.datetime) -> str:
    """Whole minutes, rounded up: the text (and the file) changes once a minute, when the elapsed time (rounded
    down) does, and the two add up to the limit."""
    seconds = (moment - now).total_seconds()
    if seconds <= 0:
        return "due now"
    if seconds < 60:
        return "in under a minute"
    return f"in {human_duration(dt.timedelta(minutes=math.ceil(seconds / 60)))}"


def _idle_notice(name: str, namespace: str, spec: WorkspaceSpec, status: WorkspaceStatus,
                 now: dt.datetime) -> tuple[dt.datetime, str]:
    deadline, since, kept = status.idle_deadline, status.idle_since, spec.keep_alive_until
    seen = status.activity_reason or "no activity"
    idle_for = f"idle for {human_duration(now - since)}" if since else "idle"
    if deadline is None:
        head = f"labkeeper: workspace {name} in {namespace} will be stopped soon: {idle_for}; last seen: {seen}"
        return now, head + "\n" + _keepalive_hint(name)
    if kept is not None and kept >= deadline:
        detail = f"{idle_for}, kept alive until then"
    elif since is not None:
        detail = f"{idle_for} of {human_duration(deadline - since)}"
    else:
        detail = idle_for
    head = (f"labkeeper: workspace {name} in {namespace} will be stopped at {format_time(deadline)} "
            f"({_until(deadline, now)}): {detail}; last seen: {seen}")
    return deadline, head + "\n" + _keepalive_hint(name)


def _keepalive_hint(name: str) -> str:
    return (f"To keep it, use it, or run `labctl keepalive {name} 2h` (any duration up to the lab policy's cap). "
            f"`labctl status` shows the countdown.")


def _runtime_notice(name: str, namespace: str, status: WorkspaceStatus, now: dt.datetime) -> tuple[dt.datetime, str]:
    deadline, running_since = status.runtime_deadline, status.running_since
    before = dt.timedelta(seconds=status.runtime_seconds or 0)
    ran = before + (now - running_since if running_since else dt.timedelta(0))
    detail = f"it has run {human_duration(ran)}"
    if deadline is not None and running_since is not None:
        detail += f" of its {human_duration(deadline - running_since + before)} limit"
    when = f"at {format_time(deadline)} ({_until(deadline, now)})" if deadline else "soon"
    head = f"labkeeper: workspace {name} in {namespace} will be stopped {when}: {detail} (runtime counts across restarts)"
    hint = ("Save your work before then. `labctl keepalive` does not extend a runtime limit; to run longer, "
            "ask a lab admin to raise your maxRuntime.")
    return deadline or now, head + "\n" + hint


def _stop_notice(name: str, namespace: str, status: WorkspaceStatus) -> str:
    if status.stop_reason == "Idle":
        deadline, since = status.idle_deadline, status.idle_since
        at = deadline or status.stopped_at
        idle_for = f" for {human_duration(deadline - since)}" if deadline and since else ""
        why = f"it was idle{idle_for} (last seen: {status.activity_reason or 'no activity'})"
        after = f"Your home and files are kept; start it again with `labctl start {name}`."
    else:
        at = status.runtime_deadline or status.stopped_at
        total = human_duration(dt.timedelta(seconds=status.runtime_seconds or 0))
        why = f"it reached its runtime limit ({total} in total)"
        after = (f"Runtime counts across restarts, so `labctl start {name}` will not run it again until a lab admin "
                 f"raises your maxRuntime. Your home and files are kept.")
    when = f" at {format_time(at)}" if at else ""
    return f"labkeeper: workspace {name} in {namespace} was stopped{when} because {why}.\n{after}"


def notice_text(ws: Workspace, now: dt.datetime) -> str | None:
    """What `~/.labkeeper/notices/<name>` should say about this Workspace now; None: no notice (the file goes).

    A warned, running workspace: what will happen, when, and how to avoid it (earliest deadline first).
    A workspace stopped for a limit: when and why, and how to start it again."""
    status = ws.status or WorkspaceStatus()
    name, namespace = ws.name, ws.namespace or ""
    if status.phase in ("Stopping", "Stopped") and status.stop_reason in LIMIT_STOPS:
        return _stop_notice(name, namespace, status) + "\n"
    if status.phase not in RUNNING_PHASES:
        return None
    keys = {w.key for w in status.warnings}
    parts = []
    if any(k.startswith("idle-") for k in keys):
        parts.append(_idle_notice(name, namespace, ws.spec, status, now))
    if any(k.startswith("runtime-") for k in keys):
        parts.append(_runtime_notice(name, namespace, status, now))
    if not parts:
        return None
    return "\n\n".join(text for _, text in sorted(parts, key=lambda p: p[0])) + "\n"


# ---- which notices this node keeps -----------------------------------------------------------------

def valid_workspace_name(name: str) -> bool:
    return len(name) <= WORKSPACE_NAME_MAX and re.fullmatch(DNS_LABEL_PATTERN, name) is not None


def owners_from_users(users: list[GPUUser]) -> dict[str, NoticeOwner]:
    """username → uid/gid from each GPUUser's status; users without a uid, leaving, or with a name or id that
    must not reach the host are left out (their homes get no notices)."""
    owners = {}
    for user in users:
        if user.metadata.get("deletionTimestamp") or user.spec.state == "Offboarded":
            continue  # the home may be being archived or deleted by the host pass right now
        if user.status is None or user.status.uid is None:
            continue
        try:
            name = check_username(user.name)
        except UnsafeName:
            continue
        uid = user.status.uid
        gid = user.status.gid or uid
        if 1000 <= uid <= 2**31 - 1 and 1000 <= gid <= 2**31 - 1:
            owners[name] = NoticeOwner(uid, gid)
    return owners


def desired_notices(workspaces: list[Workspace], node: str, now: dt.datetime) -> dict[str, dict[str, str | None]]:
    """username → workspace name → the notice this node writes (text), removes (None) or leaves alone ("").

    A workspace keeps its last `status.node` after it stops, so its stop notice lands in the home on the node it
    ran on. A workspace that has a notice but lives on another node is left out: that node's agent owns the
    file (on a data root shared between nodes both see it). One with no notice is removed on every node, so a
    stale notice on a node a workspace has left goes as soon as there is nothing to say."""
    wanted: dict[str, dict[str, str | None]] = {}
    for ws in workspaces:
        namespace, name = ws.namespace or "", ws.name
        username = username_of(namespace)
        if username is None or not valid_workspace_name(name):
            continue
        text = notice_text(ws, now)
        if text is not None and (ws.status.node if ws.status else None) != node:
            text = ""  # a workspace with a notice on another node: its file is left alone here
        wanted.setdefault(username, {})[name] = text
    return wanted


# ---- the host side ---------------------------------------------------------------------------------

def _open_existing_dir(parent_fd: int, name: str) -> int | None:
    st = hostops.lstat(parent_fd, name)
    if st is None or not stat.S_ISDIR(st.st_mode):
        return None
    try:
        return hostops.open_dir(parent_fd, name)
    except (UnsafePath, FileNotFoundError):
        return None  # swapped or removed since the lstat


def _notice_dir(parent_fd: int, name: str, owner: NoticeOwner) -> int:
    """Open `name`, creating it 0755 and owned by the user when missing; a symlink in its place is replaced.
    A directory the user already has is opened as it is (their mode, their owner)."""
    st = hostops.lstat(parent_fd, name)
    if st is not None and stat.S_ISDIR(st.st_mode):
        return hostops.open_dir(parent_fd, name)
    fd, _ = hostops.ensure_dir(parent_fd, name, Owner(owner.uid, owner.gid, 0o755), replace_symlink=True)
    return fd


def sync_user_notices(users_fd: int, user: str, owner: NoticeOwner, wanted: Mapping[str, str | None],
                      report: Report) -> None:
    """Make `<home>/.labkeeper/notices/` match `wanted` (name → text, None to remove, "" to leave alone); notice
    files of workspaces that no longer exist go too. A missing home is skipped, never created."""
    st = hostops.lstat(users_fd, user)
    if st is None or not stat.S_ISDIR(st.st_mode) or st.st_uid != owner.uid:
        return  # not provisioned here (yet), or not this user's: nothing to tell
    write = {name: text for name, text in wanted.items() if text}
    with hostops.opened(hostops.open_dir(users_fd, user)) as home_fd:
        if write:
            state_fd = _notice_dir(home_fd, NOTICE_DIR[0], owner)
        elif (state_fd := _open_existing_dir(home_fd, NOTICE_DIR[0])) is None:
            return
        with hostops.opened(state_fd):
            if write:
                notices_fd = _notice_dir(state_fd, NOTICE_DIR[1], owner)
            elif (notices_fd := _open_existing_dir(state_fd, NOTICE_DIR[1])) is None:
                return
            with hostops.opened(notices_fd):
                for name, text in sorted(write.items()):
                    try:
                        existed = hostops.lstat(notices_fd, name) is not None
                        if hostops.write_file(notices_fd, name, text.encode(), Owner(owner.uid, owner.gid, 0o644)):
                            report.did(f"{user}/{name}: notice {'updated' if existed else 'written'}")
                    except OSError as err:
                        report.fail(user, f"notice {name}: {err.strerror or err}")
                for name in sorted(os.listdir(notices_fd)):
                    if not valid_workspace_name(name) or wanted.get(name, None) is not None:
                        continue
                    found = hostops.lstat(notices_fd, name)
                    if found is None or not stat.S_ISREG(found.st_mode):
                        continue  # only the plain files the agent writes are removed
                    try:
                        os.unlink(name, dir_fd=notices_fd)
                        report.did(f"{user}/{name}: notice removed")
                    except FileNotFoundError:
                        pass


def sync_notices(data_fd: int, node: str, workspaces: list[Workspace], owners: Mapping[str, NoticeOwner],
                 now: dt.datetime) -> Report:
    """Every notice file in the homes below `<dataRoot>/users` that this node is responsible for."""
    report = Report()
    users_fd = _open_existing_dir(data_fd, "users")
    if users_fd is None:
        return report
    wanted = desired_notices(workspaces, node, now)
    with hostops.opened(users_fd):
        for user, owner in sorted(owners.items()):
            try:
                sync_user_notices(users_fd, user, owner, wanted.get(user, {}), report)
            except OSError as err:
                report.fail(user, f"notices: {err.strerror or err}")
    return report


class HomeNotices:
    """The activity loop's `notices` collaborator: called with the Workspaces it listed, every sample."""

    def __init__(self, data_fd: int, node: str, users: Callable[[], list[GPUUser]],
                 clock: Callable[[], dt.datetime]) -> None:
        self.data_fd, self.node, self.users, self.clock = data_fd, node, users, clock
        self._failed: list[str] = []

    def __call__(self, workspaces: list[Workspace]) -> Report:
        report = sync_notices(self.data_fd, self.node, workspaces, owners_from_users(self.users()), self.clock())
        for line in report.done:
            # a warned workspace's countdown changes its notice once a minute: that is not news
            (log.debug if line.endswith("updated") else log.info)("%s", line)
        if report.failed != self._failed:
            for line in report.failed:
                log.warning("%s", line)
        self._failed = report.failed
        return report
