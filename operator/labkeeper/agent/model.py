"""What the host should look like, as plain data: the rest of the agent decides over these."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from labkeeper.api.names import (
    RELATIVE_PATH_PATTERN,
    InvalidName,
    validate_cache_env_name,
    validate_group,
    validate_username,
)
from labkeeper.api.trees import RESERVED_TOP_DIRS

LAB_GROUP_NAME = "lab-users"
MANAGED_MARKER = "labkeeper"  # last GECOS subfield of every account the agent made
_SHELL = re.compile(r"^/[A-Za-z0-9_/.+-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class UnsafeName(ValueError):
    """A name or path from the API that must not become a path on the host."""


@dataclass(frozen=True)
class HostUser:
    name: str
    uid: int
    gid: int
    display_name: str = ""
    shell: str = "/bin/bash"
    ssh_keys: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    locked: bool = False
    kubeconfig: bytes | None = None

    def __post_init__(self) -> None:
        check_username(self.name)
        if not (1000 <= self.uid <= 2**31 - 1 and 1000 <= self.gid <= 2**31 - 1):
            raise UnsafeName(f"user {self.name!r}: uid {self.uid} / gid {self.gid} must be between 1000 and 2^31-1")
        if not _SHELL.match(self.shell) or ".." in self.shell:
            raise UnsafeName(f"user {self.name!r}: shell {self.shell!r} is not an absolute path without '..'")
        for group in self.groups:
            check_username(group, what="group")
        for key in self.ssh_keys:
            if "\n" in key or "\r" in key or "\0" in key:
                raise UnsafeName(f"user {self.name!r}: an SSH key contains a line break")


@dataclass(frozen=True)
class Members:
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class SharedTree:
    """A SharedCache (kind "cache") or ModelStore (kind "models") directory under the data root."""

    name: str
    kind: str
    type: str
    path: str
    env: tuple[tuple[str, str], ...] = ()
    writers: Members = Members()
    readers: Members = Members()

    def __post_init__(self) -> None:
        check_tree_path(self.path)
        for env_name, value in self.env:
            if not _ENV_NAME.match(env_name):
                raise UnsafeName(f"{self.kind} {self.name!r}: env name {env_name!r} is not a shell variable name")
            try:  # the API refuses these at apply; an object stored before that rule must not reach root's shell
                validate_cache_env_name(env_name)
            except InvalidName as err:
                raise UnsafeName(f"{self.kind} {self.name!r}: env {err}") from err
            if "\0" in value or "\n" in value:
                raise UnsafeName(f"{self.kind} {self.name!r}: env {env_name} has a line break or NUL")


@dataclass(frozen=True)
class LabHost:
    """Everything the agent makes on one node: users to provision, trees, the lab group."""

    users: tuple[HostUser, ...] = ()
    trees: tuple[SharedTree, ...] = ()
    lab_gid: int = 2000
    toolchains: tuple = ()  # agent.toolchains.ToolchainSpec, installed under apps/


@dataclass
class Report:
    """What one pass did and could not do, in words a person can read."""

    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    # per object (user name, or "cache/<name>", "models/<name>") → problems that belong in its status
    problems: dict[str, list[str]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)

    def did(self, what: str) -> None:
        self.done.append(what)

    def fail(self, subject: str, message: str) -> None:
        self.failed.append(f"{subject}: {message}")
        self.problems.setdefault(subject, []).append(message)

    def note(self, subject: str, message: str) -> None:
        self.notes.setdefault(subject, []).append(message)

    def extend(self, other: Report) -> None:
        self.done += other.done
        self.failed += other.failed
        for key, values in other.problems.items():
            self.problems.setdefault(key, []).extend(values)
        for key, values in other.notes.items():
            self.notes.setdefault(key, []).extend(values)


def check_username(name: str, *, what: str = "user") -> str:
    try:
        if what == "group":
            return name if name == LAB_GROUP_NAME else validate_group(name)
        return validate_username(name)
    except InvalidName as err:
        raise UnsafeName(f"{what} name rejected: {err}") from err


def check_tree_path(path: str) -> list[str]:
    """The path's components, or UnsafeName: relative, no '.'/'..', not inside the agent's own subtrees."""
    if not isinstance(path, str) or len(path) > 255 or not re.fullmatch(RELATIVE_PATH_PATTERN, path):
        raise UnsafeName(f"path {path!r} must be relative to the data root, e.g. cache/pip (letters, digits, . _ -)")
    parts = path.split("/")
    if any(p in {".", ".."} or len(p.encode()) > 128 for p in parts):
        raise UnsafeName(f"path {path!r} must not contain '.' or '..' segments or segments over 128 bytes")
    if parts[0] in RESERVED_TOP_DIRS:
        raise UnsafeName(f"path {path!r} lies in the agent's own {parts[0]}/ tree; use cache/... or models/...")
    return parts
