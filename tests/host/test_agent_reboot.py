"""It must show 2: a reboot wipes /etc's accounts, /home and /etc/profile.d; the data root survives;
a fresh agent brings everything back and no byte of user data changes."""

from __future__ import annotations

import os
import shutil

import pytest
from hostlab import alice, bob, checksums, entries, getfacl, lab, make_host, seed_etc

from labkeeper.agent.recovery import Host, reconcile_host

pytestmark = pytest.mark.host


def test_after_a_wipe_everything_is_back_and_user_data_is_unchanged(host_root):
    host = make_host(host_root.parent)
    reconcile_host(host, lab(alice(), bob()))
    data = host.data_root
    (data / "users/alice/notes.txt").write_text("thesis draft")
    os.chown(data / "users/alice/notes.txt", 20001, 20001)
    (data / "cache/pip/pkg.whl").write_bytes(b"\0" * 4096)
    (data / "users/alice/.bashrc").write_text("# alice's own\numask 002\n")
    before_files = {name: (host.host_root / "etc" / name).read_text() for name in ("passwd", "group", "shadow")}
    before_acl = getfacl(data / "models/huggingface")
    before_data = checksums(data)
    host.close()

    shutil.rmtree(host.host_root / "home")
    shutil.rmtree(host.host_root / "etc")
    seed_etc(host.host_root)

    host = Host(host.host_root, data)
    result = reconcile_host(host, lab(alice(), bob()))
    assert result.report.failed == []
    assert result.provisioned == {"alice", "bob"}
    restored = result.report.done
    assert {"account alice (20001) created", "account bob (20002) created", "/home/alice → /data/users/alice",
            "/etc/profile.d/labkeeper.sh written"} <= set(restored)
    assert not [line for line in restored if "written" in line and "home" in line], "the skeleton is not rewritten"

    for name in ("passwd", "group"):
        assert entries(host.host_root / "etc" / name) == entries_of(before_files[name])
    assert os.readlink(host.host_root / "home/alice") == "/data/users/alice"
    assert (host.host_root / "etc/profile.d/labkeeper.sh").exists()
    assert getfacl(data / "models/huggingface") == before_acl
    assert checksums(data) == before_data
    host.close()


def entries_of(text: str) -> dict:
    return {line.split(":")[0]: line.split(":") for line in text.splitlines() if line}
