"""It must show 3: Keep, Archive and Delete each do exactly that; Suspended locks login. An archive is never
overwritten or skipped, holds no credentials, and the home goes only once the archive read back holds it all."""

from __future__ import annotations

import datetime as dt
import os
import tarfile

import pytest
from hostlab import alice, bob, entries, lab, make_host

from labkeeper.agent import offboard
from labkeeper.agent.recovery import Departure, reconcile_host

pytestmark = pytest.mark.host
TODAY = dt.date(2026, 3, 1)
NOW = dt.datetime(2026, 3, 1, 9, 30, tzinfo=dt.UTC)


@pytest.fixture
def host(host_root):
    h = make_host(host_root.parent)
    reconcile_host(h, lab(alice(), bob()), today=TODAY)
    (h.data_root / "users/alice/results.csv").write_text("epoch,loss\n1,0.3\n")
    yield h
    h.close()


def offboard_alice(host, policy, now=NOW):
    return reconcile_host(host, lab(bob()), (Departure("alice", policy),), today=TODAY, now=now)


def archived_files(path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


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
    archive = host.data_root / "archive/alice-20260301T093000Z.tar.gz"
    assert any(line.startswith("alice: home archived to archive/alice-20260301T093000Z.tar.gz (")
               and line.endswith("read back and checked)") for line in result.report.done), result.report.done
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


def test_a_second_offboarding_the_same_day_keeps_both_generations_of_files(host):
    """dave was offboarded, re-added and offboarded again within the same second: nothing of either is lost."""
    offboard_alice(host, "Archive")
    reconcile_host(host, lab(alice(), bob()), today=TODAY, now=NOW)
    (host.data_root / "users/alice/chapter2.tex").write_text("written after coming back")
    second = offboard_alice(host, "Archive")
    assert second.report.failed == []
    archives = sorted(p.name for p in (host.data_root / "archive").iterdir())
    assert archives == ["alice-20260301T093000Z-2.tar.gz", "alice-20260301T093000Z.tar.gz"]
    first = archived_files(host.data_root / "archive" / archives[1])
    again = archived_files(host.data_root / "archive" / archives[0])
    assert first["alice/results.csv"] == b"epoch,loss\n1,0.3\n" and "alice/chapter2.tex" not in first
    assert again["alice/chapter2.tex"] == b"written after coming back"
    assert not (host.data_root / "users/alice").exists()


def test_the_client_certificate_kubeconfig_stays_out_of_the_archive(host):
    reconcile_host(host, lab(alice(kubeconfig=b"client-key-data: c2VjcmV0\n"), bob()), today=TODAY, now=NOW)
    assert (host.data_root / "users/alice/.kube/config").exists()
    (host.data_root / "users/alice/.kube/notes.txt").write_text("my own file")
    offboard_alice(host, "Archive")
    archive = next((host.data_root / "archive").iterdir())
    files = archived_files(archive)
    assert "alice/.kube/config" not in files and files["alice/.kube/notes.txt"] == b"my own file"
    assert b"c2VjcmV0" not in b"".join(files.values())
    assert not (host.data_root / "users/alice").exists()


def test_a_kept_home_loses_the_kubeconfig_labkeeper_wrote_and_nothing_else(host):
    reconcile_host(host, lab(alice(kubeconfig=b"client-key-data: c2VjcmV0\n"), bob()), today=TODAY, now=NOW)
    (host.data_root / "users/alice/.kube/notes.txt").write_text("my own file")
    result = offboard_alice(host, "Keep")
    assert "alice: ~/.kube/config removed" in result.report.done
    assert not (host.data_root / "users/alice/.kube/config").exists()
    assert (host.data_root / "users/alice/.kube/notes.txt").read_text() == "my own file"
    assert (host.data_root / "users/alice/results.csv").exists()


def test_an_archive_that_does_not_read_back_intact_keeps_the_home(host, monkeypatch):
    real = offboard._read_back

    def disk_flips_bytes(fd, manifest):
        os.pwrite(fd, b"\xff" * 32, os.fstat(fd).st_size // 2)
        real(fd, manifest)

    monkeypatch.setattr(offboard, "_read_back", disk_flips_bytes)
    result = offboard_alice(host, "Archive")
    assert any(line.startswith("alice: home kept in users/alice: ") and "read back" in line
               for line in result.report.failed), result.report.failed
    assert (host.data_root / "users/alice/results.csv").exists()
    assert os.listdir(host.data_root / "archive") == [], "no archive published, no partial file left"

    monkeypatch.setattr(offboard, "_read_back", real)
    healed = offboard_alice(host, "Archive")
    assert healed.report.failed == [] and not (host.data_root / "users/alice").exists()
    assert len(os.listdir(host.data_root / "archive")) == 1


def test_a_home_written_to_while_it_is_archived_is_kept_and_archived_again(host, monkeypatch):
    real_read = offboard._Hashing.read
    written = []

    def user_still_writing(self, size=-1):
        if not written:
            written.append(True)
            (host.data_root / "users/alice/late.log").write_text("one more line")
        return real_read(self, size)

    monkeypatch.setattr(offboard._Hashing, "read", user_still_writing)
    result = offboard_alice(host, "Archive")
    assert written and any("the home changed while it was archived (alice/late.log)" in line
                           for line in result.report.failed), result.report.failed
    assert (host.data_root / "users/alice/late.log").exists()
    assert os.listdir(host.data_root / "archive") == []

    monkeypatch.setattr(offboard._Hashing, "read", real_read)
    offboard_alice(host, "Archive")
    archive = next((host.data_root / "archive").iterdir())
    assert archived_files(archive)["alice/late.log"] == b"one more line"
    assert not (host.data_root / "users/alice").exists()
