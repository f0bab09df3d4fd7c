"""One pass over the whole host: accounts, shared trees, profile.d, homes, departures.

A pass assumes nothing about what is already there, so recovery after a reboot that wiped `/etc` and
`/home` is simply the first pass, and its report says exactly what it restored and what it could not."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from labkeeper.agent import accounts, homes, hostops, offboard, shared_trees, skeleton, toolchains
from labkeeper.agent.hostops import Owner
from labkeeper.agent.model import LabHost, Report, SharedTree, UnsafeName


@dataclass(frozen=True)
class Departure:
    name: str
    data_policy: str  # Keep | Archive | Delete


@dataclass
class HostResult:
    report: Report
    provisioned: set[str] = field(default_factory=set)
    acl_supported: bool = True
    tree_paths: dict[str, str] = field(default_factory=dict)  # "cache/pip" subject → host path
    toolchain_paths: dict[str, str] = field(default_factory=dict)  # toolchain name → host path of the version in use


class Host:
    """The two roots the agent may write below, opened once."""

    def __init__(self, host_root: Path, data_root: Path, host_data_root: str | None = None) -> None:
        self.host_root = Path(host_root)
        self.data_root = Path(data_root)
        self.host_fd = hostops.open_root(self.host_root)
        self.data_fd = hostops.open_root(self.data_root)
        if host_data_root is None:
            try:
                host_data_root = "/" + str(self.data_root.resolve().relative_to(self.host_root.resolve()))
            except ValueError:
                host_data_root = str(self.data_root)
        self.host_data_root = host_data_root.rstrip("/") or "/"

    def close(self) -> None:
        os.close(self.host_fd)
        os.close(self.data_fd)

    def host_path(self, relative: str) -> str:
        return f"{self.host_data_root}/{relative}"


def reconcile_host(host: Host, lab: LabHost, departures: tuple[Departure, ...] = (),
                   today: dt.date | None = None, now: dt.datetime | None = None) -> HostResult:
    now = now or dt.datetime.now(dt.UTC)
    today = today or now.date()
    report = Report()
    result = HostResult(report)
    with hostops.opened(accounts.open_etc(host.host_fd)) as etc_fd:
        report.extend(accounts.reconcile_accounts(etc_fd, lab.users, lab.lab_gid, today))
        files = accounts.read_accounts(etc_fd)
    result.provisioned = {u.name for u in lab.users if u.name not in report.problems}
    uid_of = {u.name: u.uid for u in lab.users}.get
    gid_of = accounts.group_ids(files).get

    trees: list[tuple[SharedTree, str]] = []
    for tree in lab.trees:
        who = shared_trees.subject(tree)
        try:
            decided = shared_trees.decide_access(tree, lab.lab_gid, uid_of, gid_of)
            result.acl_supported &= shared_trees.ensure_tree(host.data_fd, tree, decided, report)
            trees.append((tree, host.host_path(tree.path)))
            result.tree_paths[who] = host.host_path(tree.path)
        except (OSError, UnsafeName) as err:
            report.fail(who, f"{tree.path}: {err}")

    bin_dirs: list[str] = []
    try:
        for tool in toolchains.ensure_toolchains(host.data_fd, host.host_fd, host.data_root, lab.toolchains, report):
            prefix = host.host_path(f"{toolchains.APPS_DIR}/{tool.dirname}")
            result.toolchain_paths[tool.name] = prefix
            bin_dirs += [f"{prefix}/{entry}" for entry in tool.bin]
    except OSError as err:
        report.fail("toolchains", f"{toolchains.APPS_DIR}/: {err}")

    try:
        with hostops.opened(hostops.walk(host.host_fd, list(skeleton.PROFILE_PATH[:-1]), create=True)) as pd:
            profile = skeleton.profile_d(trees, lab.lab_gid, bin_dirs)
            if hostops.write_file(pd, skeleton.PROFILE_PATH[-1], profile.encode(), Owner(0, 0, 0o644)):
                report.did("/etc/profile.d/labkeeper.sh written")
    except OSError as err:
        report.fail("profile.d", str(err))

    with hostops.opened(homes.state_dir(host.data_fd)) as state_fd, \
            hostops.opened(hostops.walk(host.host_fd, ["home"], create=True)) as home_link_fd:
        for user in lab.users:
            if user.name not in result.provisioned:
                continue
            try:
                homes.ensure_home(host.data_fd, home_link_fd, state_fd, user,
                                  host.host_path(f"users/{user.name}"), trees, report)
            except OSError as err:
                report.fail(user.name, f"home: {err}")
        for gone in departures:
            try:
                offboard.offboard_data(host.data_fd, home_link_fd, gone.name, host.host_path(f"users/{gone.name}"),
                                       gone.data_policy, now, report)
                if gone.data_policy != "Keep":
                    homes.forget_skeleton(state_fd, gone.name)
            except (OSError, UnsafeName) as err:
                report.fail(gone.name, f"offboarding: {err}")
    result.provisioned -= set(report.problems)
    return result
