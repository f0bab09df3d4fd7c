"""Issue 12, it must show 3: shared toolchains on the data root for SSH users.

The admin lists a home-made installer (a local file, standing in for Miniforge's .sh) and uv from its PyPI
wheel; alice's login shell finds both through profile.d; a reboot reinstalls nothing; a broken new version
leaves the old one on PATH and a condition that says which toolchain, which version and why."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostlab import LAB_GID, alice, lab, seed_etc

from labkeeper.agent.recovery import Host, reconcile_host
from labkeeper.agent.toolchains import INSTALLER_UID, MARKER, ToolchainSpec

pytestmark = pytest.mark.host

INSTALLER = """#!/bin/sh
# a stand-in for Miniforge's installer: batch mode, prefix given with -p
set -e
while [ $# -gt 0 ]; do case "$1" in -b) shift ;; -p) PREFIX="$2"; shift 2 ;; *) exit 2 ;; esac; done
echo "$(id -u) $PREFIX" >> {runs}
{fail}
mkdir -p "$PREFIX/bin"
printf '#!/bin/sh\\necho "hello from the lab toolchain {version}"\\n' > "$PREFIX/bin/hello-tool"
chmod 755 "$PREFIX/bin/hello-tool"
"""
UV = ToolchainSpec("uv", "0.5.11", "pypi", "uv==0.5.11", "wheel", timeout_s=300)


@pytest.fixture
def host_root(host_root: Path) -> Iterator[Path]:
    """alice's shell and the installer uid must reach the data root, and pytest's temp dirs are 0700 root (a
    second pytest session resets /tmp/pytest-of-root to 0700 at any time): a root of the test's own, 0711."""
    own = Path(tempfile.mkdtemp(prefix="labkeeper-toolchains-"))
    own.chmod(0o711)
    try:
        yield own / "host"
    finally:
        shutil.rmtree(own, ignore_errors=True)


@pytest.fixture
def lab_dir(host_root: Path) -> Path:
    host_root.mkdir()
    seed_etc(host_root)
    (host_root / "data").mkdir()
    shared = host_root.parent / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # the installer (uid nobody) logs each run here
    return shared


def installer(shared: Path, version: str, *, fail: bool = False) -> ToolchainSpec:
    """The admin drops an installer on the node at /opt/installers (under the test's host root)."""
    script = shared.parent / "host/opt/installers" / f"hello-installer-{version}.sh"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(INSTALLER.format(runs=shared / "runs.log", version=version,
                                       fail='echo "license server unreachable" >&2; exit 1' if fail else ""))
    digest = hashlib.sha256(script.read_bytes()).hexdigest()
    return ToolchainSpec("hello", version, "file", f"/opt/installers/{script.name}", "installer-script", sha256=digest)


def open_host(host_root: Path) -> Host:
    # users' shells see the data root at its real path, so profile.d's PATH can be run here
    return Host(host_root, host_root / "data", host_data_root=str(host_root / "data"))


def login_shell(host: Host, command: str) -> subprocess.CompletedProcess:
    """alice's login: a shell as uid 20001 that sources the generated profile.d file, then runs `command`."""
    profile = host.host_root / "etc/profile.d/labkeeper.sh"
    return subprocess.run(["/bin/bash", "--noprofile", "--norc", "-c", f". {profile} && {command}"],
                          user=20001, group=20001, extra_groups=[LAB_GID], env={"PATH": "/usr/bin:/bin", "HOME": "/"},
                          capture_output=True, text=True, timeout=60)


def pass_with(host: Host, *tools: ToolchainSpec):
    return reconcile_host(host, dataclasses.replace(lab(alice()), toolchains=tools))


def runs(shared: Path) -> list[str]:
    log = shared / "runs.log"
    return log.read_text().splitlines() if log.exists() else []


def test_toolchains_install_once_reach_alices_path_survive_a_reboot_and_a_broken_version_keeps_the_old(
        host_root, lab_dir):
    host = open_host(host_root)
    apps = host.data_root / "apps"
    hello = installer(lab_dir, "1.0")

    result = pass_with(host, hello, UV)
    uv_problem = result.report.problems.get("toolchain/uv")
    uv_here = not uv_problem
    if uv_problem:
        assert "pip download exited" in uv_problem[0], uv_problem
        print(f"\nSKIPPED the uv part: pip cannot reach a package registry from here: {uv_problem[0]}")
    assert result.report.problems.get("toolchain/hello") is None, result.report.failed
    assert "toolchain hello-1.0 installed from file:" + hello.source + f" (sha256 {hello.sha256})" in result.report.done
    assert [line.split()[0] for line in runs(lab_dir)] == [str(INSTALLER_UID)], "the installer ran once, never as root"
    tool = apps / "hello-1.0/bin/hello-tool"
    assert (tool.stat().st_uid, tool.stat().st_mode & 0o7777) == (0, 0o755), "sealed: root's, no one else may write"
    assert sorted(p.name for p in apps.iterdir()) == (["hello-1.0", "uv-0.5.11"] if uv_here else ["hello-1.0"])

    shell = login_shell(host, "hello-tool && command -v hello-tool" + (" && uv --version" if uv_here else ""))
    assert shell.returncode == 0, shell.stderr
    lines = shell.stdout.splitlines()
    assert lines[:2] == ["hello from the lab toolchain 1.0", str(tool)]
    if uv_here:
        assert lines[2].startswith("uv 0.5.11")
    assert login_shell(host, f"touch {apps}/hello-1.0/bin/planted").returncode != 0, "alice cannot change a toolchain"
    marker_mtime = (apps / "hello-1.0" / MARKER).stat().st_mtime_ns
    host.close()

    # reboot: /etc (accounts, profile.d) and /home are gone, the data root survives
    shutil.rmtree(host_root / "etc")
    shutil.rmtree(host_root / "home")
    seed_etc(host_root)
    host = open_host(host_root)
    result = pass_with(host, hello, UV)
    assert not [line for line in result.report.done if line.startswith("toolchain")], "nothing reinstalled"
    assert len(runs(lab_dir)) == 1
    assert (apps / "hello-1.0" / MARKER).stat().st_mtime_ns == marker_mtime
    shell = login_shell(host, "hello-tool" + (" && uv --version" if uv_here else ""))
    assert shell.returncode == 0 and shell.stdout.startswith("hello from the lab toolchain 1.0"), shell.stderr

    # the admin moves to 2.0, whose installer fails: 1.0 stays installed and on PATH, the condition says why
    result = pass_with(host, installer(lab_dir, "2.0", fail=True), UV)
    assert result.report.problems["toolchain/hello"] == [
        "hello 2.0 not installed: installer exited with status 1: license server unreachable; still using hello-1.0"]
    assert len(runs(lab_dir)) == 2
    assert sorted(p.name for p in apps.iterdir() if p.name.startswith("hello")) == ["hello-1.0"], "no half install"
    assert not [p for p in apps.iterdir() if p.name.startswith(".")], "the staging directory is gone"
    assert login_shell(host, "hello-tool").stdout == "hello from the lab toolchain 1.0\n"

    # a source whose checksum does not match the policy is refused before anything runs
    tampered = dataclasses.replace(installer(lab_dir, "2.1"), sha256="0" * 64)
    result = pass_with(host, tampered)
    problem = result.report.problems["toolchain/hello"][0]
    assert problem.startswith("hello 2.1 not installed: checksum mismatch: hello-installer-2.1.sh has sha256 ")
    assert problem.endswith(f"the policy expects {'0' * 64}; nothing was run; still using hello-1.0")
    assert len(runs(lab_dir)) == 2
    assert login_shell(host, "hello-tool").stdout == "hello from the lab toolchain 1.0\n"
    host.close()
