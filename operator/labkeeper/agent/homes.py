"""Homes under `<dataRoot>/users/<u>`, the `/home/<u>` symlink, skeleton, SSH keys and kubeconfig."""

from __future__ import annotations

import contextlib
import json
import os

from labkeeper.agent import hostops, skeleton
from labkeeper.agent.hostops import Owner
from labkeeper.agent.model import HostUser, Report, SharedTree

STATE_DIR = ".labkeeper"
KUBECONFIG_PATH = (".kube", "config")  # the user's client-certificate kubeconfig, written by the agent


def state_dir(data_fd: int) -> int:
    fd, _ = hostops.ensure_dir(data_fd, STATE_DIR, Owner(0, 0, 0o700))
    return fd


def _skeleton_written(state_fd: int, name: str) -> set[str]:
    try:
        raw = hostops.read_file(state_fd, f"skel-{name}.json")
        return set(json.loads(raw)) if raw else set()
    except (ValueError, OSError):
        return set()


def ensure_home(data_fd: int, home_link_fd: int, state_fd: int, user: HostUser, link_target: str,
                trees: list[tuple[SharedTree, str]], report: Report) -> None:
    """Home directory, skeleton (once), ~/.ssh/authorized_keys, ~/.kube/config and /home/<u>."""
    subject = user.name
    private = Owner(user.uid, user.gid, 0o700)
    with hostops.opened(hostops.ensure_dir(data_fd, "users", None)[0]) as users_fd:
        home_fd, changes = hostops.ensure_dir(users_fd, user.name, Owner(user.uid, user.gid, 0o750))
    with hostops.opened(home_fd):
        if changes:
            report.did(f"home {user.name}: {', '.join(changes)}")
        written = _skeleton_written(state_fd, user.name)
        fresh = set()
        for name, text in skeleton.skeleton(user, trees).items():
            if name in written:
                continue
            if hostops.create_file(home_fd, name, text.encode(), Owner(user.uid, user.gid, 0o644)):
                report.did(f"home {user.name}: {name} written")
            fresh.add(name)
        if fresh:
            hostops.write_file(state_fd, f"skel-{user.name}.json", json.dumps(sorted(written | fresh)).encode(),
                               Owner(0, 0, 0o600))

        ssh_fd, changes = hostops.ensure_dir(home_fd, ".ssh", private, replace_symlink=True)
        with hostops.opened(ssh_fd):
            if changes:
                report.did(f"home {user.name}: .ssh {', '.join(changes)}")
            if hostops.write_file(ssh_fd, "authorized_keys", skeleton.authorized_keys(user).encode(),
                                  Owner(user.uid, user.gid, 0o600)):
                report.did(f"home {user.name}: authorized_keys ({len(user.ssh_keys)} keys)")
        if user.kubeconfig is not None:
            kube_fd, _ = hostops.ensure_dir(home_fd, KUBECONFIG_PATH[0], private, replace_symlink=True)
            with hostops.opened(kube_fd):
                if hostops.write_file(kube_fd, KUBECONFIG_PATH[1], user.kubeconfig, Owner(user.uid, user.gid, 0o600)):
                    report.did(f"home {user.name}: .kube/config written")
    try:
        if hostops.ensure_symlink(home_link_fd, user.name, link_target):
            report.did(f"/home/{user.name} → {link_target}")
    except hostops.UnsafePath as err:
        report.fail(subject, f"/home/{user.name}: {err.strerror}")


def forget_skeleton(state_fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(f"skel-{name}.json", dir_fd=state_fd)
