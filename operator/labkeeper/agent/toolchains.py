"""Shared toolchains under `<dataRoot>/apps/<name>-<version>`: installed once, checked, put on PATH.

An install is staged in `apps/.<name>-<version>.staging/work`, which belongs to the unprivileged installer uid.
Only when the source's checksum matched and the installer succeeded is the work tree sealed (root-owned, no
group/other write, no set-id bits), given its marker and renamed into place; any failure removes the staging
directory and leaves every installed version, and the PATH that uses it, as it was. The marker (source and
checksum) is what "already installed" means: a prefix with a marker is never installed again."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from labkeeper.agent import hostops
from labkeeper.agent.hostops import Owner
from labkeeper.agent.model import Report, UnsafeName

APPS_DIR = "apps"
MARKER = ".labkeeper-toolchain.json"
INSTALLER_UID = 65534  # nobody: installers never run as root when the agent is root
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# the machine's own pip and proxy configuration reaches the installer; nothing else of the agent's environment
PASSED_ENV = re.compile(r"^(PIP_[A-Z_]+|https?_proxy|HTTPS?_PROXY|no_proxy|NO_PROXY|SSL_CERT_(FILE|DIR))$")
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}$")
_CHUNK = 1 << 20


class InstallFailed(Exception):
    """Why one toolchain version could not be installed, in words for a condition."""


@dataclass(frozen=True)
class ToolchainSpec:
    name: str
    version: str
    source_kind: str  # url | file | pypi
    source: str
    kind: str  # installer-script | archive | wheel
    sha256: str | None = None
    bin: tuple[str, ...] = ("bin",)
    timeout_s: float = 900.0

    def __post_init__(self) -> None:
        try:
            hostops.check_component(self.dirname)
            for entry in self.bin:
                for part in entry.split("/"):
                    hostops.check_component(part)
        except hostops.UnsafePath as err:
            raise UnsafeName(f"toolchain {self.name!r}: {err.strerror}") from err

    @property
    def dirname(self) -> str:
        return f"{self.name}-{self.version}"

    @property
    def source_text(self) -> str:
        return f"{self.source_kind}:{self.source}"


def from_policy(toolchains: Iterable) -> tuple[ToolchainSpec, ...]:
    """The policy's `toolchains` (labkeeper.api.policy.Toolchain) as the agent's plain data."""
    return tuple(ToolchainSpec(t.name, t.version, *t.source, t.kind, t.sha256, tuple(t.bin), t.timeout.total_seconds())
                 for t in toolchains)


@dataclass(frozen=True)
class InUse:
    """The version of one toolchain that PATH points at: the one asked for, or the last one that installed."""

    name: str
    dirname: str
    bin: tuple[str, ...]


def _marker(apps_fd: int, dirname: str) -> dict | None:
    st = hostops.lstat(apps_fd, dirname)
    if st is None:
        return None
    try:
        with hostops.opened(hostops.open_dir(apps_fd, dirname)) as fd:
            raw = hostops.read_file(fd, MARKER)
        return json.loads(raw) if raw else None
    except (OSError, ValueError):
        return None


def _installed_versions(apps_fd: int, name: str) -> list[dict]:
    found = []
    for entry in os.listdir(apps_fd):
        if entry.startswith(f"{name}-") and not entry.startswith("."):
            marker = _marker(apps_fd, entry)
            if marker and marker.get("name") == name:
                found.append(marker | {"dirname": entry})
    return sorted(found, key=lambda m: m.get("installedAt", 0))


def ensure_toolchains(data_fd: int, host_fd: int, data_root: Path, specs: Iterable[ToolchainSpec], report: Report,
                      *, installer_uid: int = INSTALLER_UID) -> list[InUse]:
    """Install what is missing; return what PATH should use. Problems go to report under `toolchain/<name>`."""
    specs = list(specs)
    if not specs:
        return []
    in_use = []
    with hostops.opened(hostops.ensure_dir(data_fd, APPS_DIR, Owner(0, 0, 0o755))[0]) as apps_fd:
        for spec in specs:
            subject = f"toolchain/{spec.name}"
            marker = _marker(apps_fd, spec.dirname)
            if marker is None and hostops.lstat(apps_fd, spec.dirname) is not None:
                report.fail(subject, f"{spec.name} {spec.version}: {APPS_DIR}/{spec.dirname} exists without the "
                                     f"labkeeper marker {MARKER}; left as it is (remove it to have it installed)")
            elif marker is None:
                try:
                    digest = _install(apps_fd, host_fd, data_root / APPS_DIR, spec, installer_uid)
                    report.did(f"toolchain {spec.dirname} installed from {spec.source_text} (sha256 {digest})")
                except (InstallFailed, OSError) as err:
                    previous = _installed_versions(apps_fd, spec.name)
                    keep = f"still using {previous[-1]['dirname']}" if previous else "no earlier version is installed"
                    report.fail(subject, f"{spec.name} {spec.version} not installed: {err}; {keep}")
            else:
                mismatch = _marker_mismatch(marker, spec)
                if mismatch:
                    report.fail(subject, f"{spec.name} {spec.version}: {APPS_DIR}/{spec.dirname} was {mismatch}; "
                                         "it is kept and not reinstalled: give the new source a new version")
            versions = _installed_versions(apps_fd, spec.name)
            chosen = next((m for m in versions if m["dirname"] == spec.dirname), versions[-1] if versions else None)
            if chosen is not None:
                in_use.append(InUse(spec.name, chosen["dirname"], tuple(chosen.get("bin") or spec.bin)))
    return in_use


def _marker_mismatch(marker: dict, spec: ToolchainSpec) -> str | None:
    if marker.get("source") != spec.source_text:
        return f"installed from {marker.get('source')}, the policy now says {spec.source_text}"
    if spec.sha256 and marker.get("sha256") != spec.sha256:
        return f"installed with sha256 {marker.get('sha256')}, the policy now says {spec.sha256}"
    return None


def _install(apps_fd: int, host_fd: int, apps_path: Path, spec: ToolchainSpec, installer_uid: int) -> str:
    staging = f".{spec.dirname}.staging"
    hostops.remove_entry(apps_fd, staging)  # left by an agent that died mid-install
    staging_fd, _ = hostops.ensure_dir(apps_fd, staging, Owner(0, 0, 0o711))
    try:
        with hostops.opened(staging_fd):
            uid = installer_uid if os.geteuid() == 0 else os.geteuid()
            gid = installer_uid if os.geteuid() == 0 else os.getegid()
            work_fd, _ = hostops.ensure_dir(staging_fd, "work", Owner(uid, gid, 0o700))
            with hostops.opened(work_fd):
                work = apps_path / staging / "work"
                for sub in ("src", "home", "tmp"):
                    os.close(hostops.ensure_dir(work_fd, sub, Owner(uid, gid, 0o700))[0])
                run = _Runner(work, uid, gid, spec.timeout_s)
                source_name, digest = _fetch(host_fd, work_fd, work, spec, run, Owner(uid, gid, 0o600))
                if spec.sha256 and digest != spec.sha256:
                    raise InstallFailed(f"checksum mismatch: {source_name} has sha256 {digest}, the policy expects "
                                        f"{spec.sha256}; nothing was run")
                result = _run_installer(work_fd, work, spec, source_name, run, Owner(uid, gid, 0o700))
                hostops.seal_tree(work_fd)  # from here on the installer uid can change nothing in the tree
                _commit(apps_fd, work_fd, result, spec, digest)
            return digest
    finally:
        hostops.remove_entry(apps_fd, staging)


def _others_can_run(path: str) -> bool:
    real = Path(os.path.realpath(path))
    try:
        return all(os.stat(p).st_mode & 0o001 for p in [real, *real.parents])
    except OSError:
        return False


def installer_python(uid: int) -> str:
    """The agent's own interpreter for pip, unless the installer uid cannot reach it (an interpreter under a
    0700 home): then the system's python3."""
    if uid == os.geteuid() or _others_can_run(sys.executable):
        return sys.executable
    for candidate in ("/usr/local/bin/python3", "/usr/bin/python3"):
        if _others_can_run(candidate):
            return candidate
    raise InstallFailed(f"no python the installer uid {uid} may run (tried {sys.executable}, /usr/local/bin/python3, "
                        "/usr/bin/python3)")


class _Runner:
    def __init__(self, work: Path, uid: int, gid: int, timeout: float) -> None:
        self.work, self.uid, self.gid, self.timeout = work, uid, gid, timeout
        self.env = {k: v for k, v in os.environ.items() if PASSED_ENV.match(k)} | {
            "PATH": SAFE_PATH, "HOME": str(work / "home"), "TMPDIR": str(work / "tmp"), "LANG": "C.UTF-8",
            "PIP_NO_INPUT": "1", "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

    def __call__(self, what: str, argv: list[str]) -> None:
        ran = hostops.run_installer(argv, self.work, self.env, self.uid, self.gid, self.timeout)
        if ran.timed_out:
            raise InstallFailed(f"{what} was killed after {self.timeout:.0f}s")
        if ran.returncode != 0:
            last = [line for line in ran.output_tail.splitlines() if line.strip()][-3:]
            raise InstallFailed(f"{what} exited with status {ran.returncode}: {' | '.join(last) or 'no output'}")


def _fetch(host_fd: int, work_fd: int, work: Path, spec: ToolchainSpec, run: _Runner, owner: Owner) -> tuple[str, str]:
    """Bring the source into work/src; returns its file name and sha256."""
    with hostops.opened(hostops.open_dir(work_fd, "src")) as src_fd:
        if spec.source_kind == "pypi":
            run("pip download", [installer_python(run.uid), "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                                 "--dest", str(work / "src"), spec.source])
            wheels = [n for n in os.listdir(src_fd) if n.endswith(".whl")]
            if len(wheels) != 1:
                raise InstallFailed(f"pip download of {spec.source} gave {len(wheels)} wheels, expected one")
            with hostops.opened(_open_regular(src_fd, wheels[0])) as fd:
                return wheels[0], _sha256(fd, None)
        if spec.source_kind == "file":
            parts = spec.source.strip("/").split("/")
            name = parts[-1] if _FILENAME.match(parts[-1]) else "installer"
            try:
                with hostops.opened(hostops.walk(host_fd, parts[:-1], create=False)) as dir_fd, \
                        hostops.opened(_open_regular(dir_fd, parts[-1])) as source_fd, \
                        hostops.opened(_create(src_fd, name, owner)) as out:
                    return name, _sha256(source_fd, out)
            except FileNotFoundError as err:
                raise InstallFailed(f"file {spec.source} does not exist on this node") from err
        if spec.source_kind == "url":
            base = urllib.parse.urlsplit(spec.source).path.rsplit("/", 1)[-1]
            name = base if _FILENAME.match(base) else "download"
            with hostops.opened(_create(src_fd, name, owner)) as out:
                try:
                    with urllib.request.urlopen(spec.source, timeout=60) as response:
                        return name, _sha256(response, out)
                except OSError as err:
                    raise InstallFailed(f"download of {spec.source} failed: {err}") from err
    raise InstallFailed(f"unknown source {spec.source_kind}")


def _open_regular(dir_fd: int, name: str) -> int:
    if hostops.lstat(dir_fd, name) is None:
        raise FileNotFoundError(name)
    opened = hostops.open_entry(dir_fd, name)
    if opened is None or not stat.S_ISREG(opened[1].st_mode):
        if opened:
            os.close(opened[0])
        raise InstallFailed(f"{name!r} is a symlink or not a regular file; not read")
    return opened[0]


def _create(dir_fd: int, name: str, owner: Owner) -> int:
    fd = os.open(hostops.check_component(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)
    os.fchown(fd, owner.uid, owner.gid)
    return fd


def _sha256(source, out: int | None) -> str:
    digest = hashlib.sha256()
    while True:
        chunk = os.read(source, _CHUNK) if isinstance(source, int) else source.read(_CHUNK)
        if not chunk:
            return digest.hexdigest()
        digest.update(chunk)
        if out is not None:
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view):]


def _run_installer(work_fd: int, work: Path, spec: ToolchainSpec, source_name: str, run: _Runner,
                   owner: Owner) -> list[str]:
    """Install into work/; returns the path (components under work) of the tree that becomes the prefix."""
    source = str(work / "src" / source_name)
    if spec.kind == "installer-script":
        shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
        run("installer", [shell, source, "-b", "-p", str(work / "prefix")])
        return ["prefix"]
    if spec.kind == "wheel":
        run("pip install", [installer_python(run.uid), "-m", "pip", "install", "--no-deps", "--no-index", "--no-compile",
                            "--target", str(work / "prefix"), source])
        return ["prefix"]
    os.close(hostops.ensure_dir(work_fd, "unpack", owner)[0])
    if source_name.endswith(".zip"):
        run("unzip", [installer_python(run.uid), "-m", "zipfile", "-e", source, str(work / "unpack")])
    else:
        run("tar", ["tar", "-x", "-f", source, "-C", str(work / "unpack"), "--no-same-owner"])
    with hostops.opened(hostops.open_dir(work_fd, "unpack")) as unpack_fd:
        entries = os.listdir(unpack_fd)
    # archives usually hold one top directory (node-v20-linux-x64/); that directory is the prefix
    if len(entries) == 1 and _is_dir(work_fd, ["unpack", entries[0]]):
        return ["unpack", entries[0]]
    return ["unpack"]


def _is_dir(root_fd: int, parts: list[str]) -> bool:
    try:
        os.close(hostops.walk(root_fd, parts, create=False))
        return True
    except (OSError, hostops.UnsafePath):
        return False


def _commit(apps_fd: int, work_fd: int, result: list[str], spec: ToolchainSpec, digest: str) -> None:
    with hostops.opened(hostops.walk(work_fd, result[:-1], create=False)) as parent_fd, \
            hostops.opened(hostops.open_dir(parent_fd, result[-1])) as prefix_fd:
        missing = [b for b in spec.bin if not _is_dir(prefix_fd, b.split("/"))]
        if missing:
            raise InstallFailed(f"the installed tree has no {', '.join(missing)} directory to put on PATH "
                                f"(has: {', '.join(sorted(os.listdir(prefix_fd))[:10]) or 'nothing'})")
        os.fchmod(prefix_fd, 0o755)
        marker = {"name": spec.name, "version": spec.version, "kind": spec.kind, "source": spec.source_text,
                  "sha256": digest, "bin": list(spec.bin), "installedAt": time.time()}
        hostops.write_file(prefix_fd, MARKER, (json.dumps(marker, indent=1) + "\n").encode(), Owner(0, 0, 0o644))
        # the tree is root's since seal_tree, so nothing can swap the checked directory before the rename
        os.rename(result[-1], spec.dirname, src_dir_fd=parent_fd, dst_dir_fd=apps_fd)
    with contextlib.suppress(OSError):
        os.fsync(apps_fd)
