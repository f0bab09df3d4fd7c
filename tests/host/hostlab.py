"""A temporary host: a host root with a minimal /etc, a data root beside it, and helpers to act as a user."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from labkeeper.agent.model import HostUser, LabHost, Members, SharedTree
from labkeeper.agent.recovery import Host

LAB_GID = 2000
ALICE_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHlabkeeperExampleKeyForAliceOnlyNotReal0000 alice@laptop"
BOB_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBobBobBobBobBobBobBobBobBobBobBobBobBobBob0 bob@desk"


def seed_etc(host_root: Path) -> None:
    etc = host_root / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\nsshd:x:105:65534::/run/sshd:/usr/sbin/nologin\n")
    (etc / "group").write_text("root:x:0:\nshadow:x:42:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "gshadow").write_text("root:*::\n")
    if Path("/etc/login.defs").exists():
        shutil.copy("/etc/login.defs", etc / "login.defs")


def make_host(tmp: Path) -> Host:
    host_root = tmp / "host"
    host_root.mkdir(exist_ok=True)
    seed_etc(host_root)
    (host_root / "data").mkdir(exist_ok=True)
    return Host(host_root, host_root / "data")


def alice(**changes) -> HostUser:
    fields = dict(name="alice", uid=20001, gid=20001, display_name="Alice Example", ssh_keys=(ALICE_KEY,))
    return HostUser(**(fields | changes))


def bob(**changes) -> HostUser:
    return HostUser(**(dict(name="bob", uid=20002, gid=20002, display_name="Bob", ssh_keys=(BOB_KEY,)) | changes))


def lab_trees() -> tuple[SharedTree, ...]:
    return (
        SharedTree("pip", "cache", "pip", "cache/pip", (("PIP_CACHE_DIR", "$(PATH)"),)),
        SharedTree("conda", "cache", "conda", "cache/conda/pkgs", (("CONDA_PKGS_DIRS", "$(PATH)"),)),
        SharedTree("huggingface", "models", "huggingface", "models/huggingface",
                   (("HF_HUB_CACHE", "$(PATH)/hub"),), writers=Members(users=("alice",))),
    )


def lab(*users: HostUser, trees=None) -> LabHost:
    return LabHost(users=users, trees=lab_trees() if trees is None else trees, lab_gid=LAB_GID)


def entries(path: Path) -> dict[str, list[str]]:
    return {line.split(":")[0]: line.split(":") for line in path.read_text().splitlines() if line}


def getfacl(path: Path) -> set[str]:
    out = subprocess.run(["getfacl", "-n", "-p", "-c", str(path)], check=True, capture_output=True, text=True).stdout
    return {line.split("#")[0].strip() for line in out.splitlines() if line.strip()}


def as_user(uid: int, gids: list[int], action) -> object:
    """Run `action()` in a child process with this uid and these groups; returns its result or the exception."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            os.setgroups(gids)
            os.setgid(gids[0])
            os.setuid(uid)
            os.umask(0o022)
            result = repr(action())
        except BaseException as err:
            result = f"error:{type(err).__name__}"
        os.write(write, result.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    return text


def checksums(root: Path) -> dict[str, str]:
    """Every file, directory and symlink below root with its content hash, owner and mode."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            digest = ""
            if path.is_symlink():
                digest = "->" + os.readlink(path)
            elif path.is_file():
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[str(path.relative_to(root))] = f"{digest} {st.st_uid}:{st.st_gid} {st.st_mode:o}"
    return out
