"""Planted symlinks are never followed and nothing outside the data root and the agent's host files is
written, across a whole lifecycle: provision, ACL repair, cleanup, archive and delete."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from hostlab import alice, bob, checksums, getfacl, lab, lab_trees, make_host

from labkeeper.agent import cleanup
from labkeeper.agent.model import HostUser, Members, SharedTree, UnsafeName
from labkeeper.agent.recovery import Departure, reconcile_host

pytestmark = pytest.mark.host


@pytest.fixture
def planted(host_root):
    """alice's home and the pip cache full of links to a fake /etc/shadow, bob's home and /."""
    host = make_host(host_root.parent)
    reconcile_host(host, lab(alice(), bob()))
    outside = host_root.parent / "outside"
    (outside / "etc").mkdir(parents=True)
    shadow = outside / "etc/shadow"
    shadow.write_text("root:$6$secret:19000::::::\n")
    shadow.chmod(0o640)
    home, bob_home, pip = host.data_root / "users/alice", host.data_root / "users/bob", host.data_root / "cache/pip"
    for name in (".ssh", ".kube"):
        os.rename(home / name, home / f"{name}.old") if (home / name).exists() else None
    (home / ".ssh").symlink_to(bob_home)
    (home / ".kube").symlink_to(outside / "etc")
    (home / "shadow-link").symlink_to(shadow)
    (home / "root-link").symlink_to("/")
    (pip / "shadow.whl").symlink_to(shadow)
    (pip / "bob").symlink_to(bob_home)
    (pip / "root").symlink_to("/")
    (pip / "real").mkdir()
    (pip / "real/pkg.whl").write_text("wheel")
    (pip / "real/etc").symlink_to(outside / "etc")
    watched = {"outside": outside, "bob": bob_home}
    before = {name: checksums(path) for name, path in watched.items()}
    acls = {"shadow": getfacl(shadow), "bob": getfacl(bob_home), "root": getfacl("/")}
    root_stat = os.stat("/")
    yield host, watched, before, acls, root_stat
    host.close()


def assert_untouched(watched, before, acls, root_stat):
    for name, path in watched.items():
        assert checksums(path) == before[name], f"{name} changed"
    assert getfacl(watched["outside"] / "etc/shadow") == acls["shadow"]
    assert getfacl(watched["bob"]) == acls["bob"]
    assert getfacl("/") == acls["root"]
    now = os.stat("/")
    assert (now.st_mode, now.st_uid, now.st_gid) == (root_stat.st_mode, root_stat.st_uid, root_stat.st_gid)


def test_provision_and_acl_repair_never_follow_planted_links(planted):
    host, watched, before, acls, root_stat = planted
    pip = SharedTree("pip", "cache", "pip", "cache/pip", writers=Members(users=("alice", "bob")))
    trees = (pip, *lab_trees()[1:])
    result = reconcile_host(host, lab(alice(kubeconfig=b"kubeconfig"), bob(), trees=trees))
    assert any("pip: ACLs set" in line for line in result.report.done), "the repair walk really ran"
    assert "user:20002:rw-" in getfacl(host.data_root / "cache/pip/real/pkg.whl"), "files: rw, no execute added"
    home = host.data_root / "users/alice"
    assert not (home / ".ssh").is_symlink() and (home / ".ssh/authorized_keys").read_text().count("ssh-ed25519") == 1
    assert (home / ".kube/config").read_bytes() == b"kubeconfig" and not (home / ".kube").is_symlink()
    assert_untouched(watched, before, acls, root_stat)


def test_authorized_keys_planted_as_a_link_is_replaced_not_written_through(planted):
    host, watched, before, acls, root_stat = planted
    ssh = host.data_root / "users/alice/.ssh"
    ssh.unlink()
    ssh.mkdir()
    (ssh / "authorized_keys").symlink_to(watched["outside"] / "etc/shadow")
    reconcile_host(host, lab(alice(), bob()))
    assert not (ssh / "authorized_keys").is_symlink()
    assert_untouched(watched, before, acls, root_stat)


def test_cleanup_archive_and_delete_never_follow_planted_links(planted):
    host, watched, before, acls, root_stat = planted
    freed = cleanup.clean(host.data_fd, "cache/pip",
                          dt.datetime.now(dt.UTC) + dt.timedelta(days=400), dt.timedelta(days=1), None)
    assert freed.files == 1 and not (host.data_root / "cache/pip/real/pkg.whl").exists()
    assert (host.data_root / "cache/pip/shadow.whl").is_symlink()
    result = reconcile_host(host, lab(bob()), (Departure("alice", "Archive"),))
    assert any("archived" in line for line in result.report.done)
    assert not (host.data_root / "users/alice").exists()
    import tarfile
    with tarfile.open(next((host.data_root / "archive").iterdir())) as tar:
        link = tar.getmember("alice/shadow-link")
        assert link.issym() and link.linkname.endswith("outside/etc/shadow")
        assert tar.getmember("alice/.ssh").issym()
    assert_untouched(watched, before, acls, root_stat)


@pytest.mark.parametrize("name", ["../etc", "alice/../../root", "a" * 40, "ålice", "root", "Alice", "", "bob\n"])
def test_unsafe_usernames_are_rejected_before_they_become_paths(name):
    with pytest.raises(UnsafeName):
        HostUser(name=name, uid=20001, gid=20001)


@pytest.mark.parametrize("path", ["../etc", "cache/../../etc", "/etc", "users/bob", "archive/x", ".labkeeper",
                                  "cache/./pip", "cache/ü", "cache//pip", "x" * 300, "cache/" + "y" * 200])
def test_unsafe_tree_paths_are_rejected(path):
    with pytest.raises(UnsafeName):
        SharedTree("x", "cache", "custom", path)
