"""It must show 3: Keep, Archive and Delete each do exactly that; Suspended locks login."""

from __future__ import annotations

import datetime as dt
import os
import tarfile

import pytest
from hostlab import alice, bob, entries, lab, make_host

from labkeeper.agent.recovery import Departure, reconcile_host

pytestmark = pytest.mark.host
TODAY = dt.date(2026, 3, 1)


@pytest.fixture
def host(host_root):
    h = make_host(host_root.parent)
    reconcile_host(h, lab(alice(), bob()), today=TODAY)
    (h.data_root / "users/alice/results.csv").write_text("epoch,loss\n1,0.3\n")
    yield h
    h.close()


def offboard_alice(host, policy):
    return reconcile_host(host, lab(bob()), (Departure("alice", policy),), today=TODAY)


def test_keep_removes_the_account_and_link_and_keeps_the_home(host):
    result = offboard_alice(host, "Keep")
    assert "alice" not in entries(host.host_root / "etc/passwd")
    assert "alice" not in entries(host.host_root / "etc/group")
    assert entries(host.host_root / "etc/group")["lab-users"][3] == "bob"
    assert not os.path.lexists(host.host_root / "home/alice")
    assert (host.data_root / "users/alice/results.csv").read_text() == "epoch,loss\n1,0.3\n"
    assert not (host.data_root / "archive").exists()
    assert result.report.failed == []


def test_archive_writes_a_tarball_then_deletes_the_home(host):
    result = offboard_alice(host, "Archive")
    archive = host.data_root / "archive/alice-2026-03-01.tar.gz"
    assert "alice: home archived to archive/alice-2026-03-01.tar.gz" in result.report.done
    with tarfile.open(archive) as tar:
        member = tar.getmember("alice/results.csv")
        assert (member.uid, tar.extractfile(member).read()) == (0, b"epoch,loss\n1,0.3\n")
        assert tar.getmember("alice/.ssh/authorized_keys").uid == 20001
    assert not (host.data_root / "users/alice").exists()
    assert (host.data_root / "users/bob").exists()
    assert offboard_alice(host, "Archive").report.done == [], "a second pass finds nothing left to do"


def test_delete_removes_the_home_and_nothing_else(host):
    offboard_alice(host, "Delete")
    assert not (host.data_root / "users/alice").exists()
    assert (host.data_root / "users/bob/.bashrc").exists()
    assert (host.data_root / "cache/pip").exists()
    assert not (host.data_root / "archive").exists()


def test_suspended_locks_the_account_and_active_unlocks_it(host):
    reconcile_host(host, lab(alice(locked=True), bob()), today=TODAY)
    shadow = entries(host.host_root / "etc/shadow")["alice"]
    assert shadow[1].startswith("!") and shadow[7] == "1", "locked password and expired account"
    assert (host.data_root / "users/alice/results.csv").exists()
    reconcile_host(host, lab(alice(), bob()), today=TODAY)
    assert entries(host.host_root / "etc/shadow")["alice"][1] == "*"
