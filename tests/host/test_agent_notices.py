"""The notice in a user's home, written as root under a temporary host root: right owner, mode and text, written
only when it changes, gone when there is nothing to say, and never through a symlink the user planted."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from hostlab import alice, bob, checksums, lab, make_host

from labkeeper.agent.notices import HomeNotices, NoticeOwner, notice_text, sync_notices
from labkeeper.agent.recovery import reconcile_host
from labkeeper.api.resources import GPUUser, Workspace

pytestmark = pytest.mark.host

T0 = dt.datetime(2026, 11, 23, 9, 0, tzinfo=dt.UTC)
MIN = dt.timedelta(minutes=1)
OWNERS = {"alice": NoticeOwner(20001, 20001), "bob": NoticeOwner(20002, 20002)}


def fmt(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def warned(name="train", node="node-a", user="alice"):
    """Idle since T0 with a 30m timeout: the operator's first warning went out at T0+24m."""
    return Workspace.model_validate({"metadata": {"name": name, "namespace": f"lab-{user}"}, "spec": {"image": "img"},
            "status": {"phase": "IdleWarning", "node": node, "idleSince": fmt(T0), "idleDeadline": fmt(T0 + 30 * MIN),
                       "activityReason": "cpu 0.00 cores; gpu idle 24m",
                       "warnings": [{"key": "idle-80", "reason": "IdleWarning", "since": fmt(T0)}]}})


def cleared(ws):
    return ws.model_copy(update={"status": ws.status.model_copy(update={"phase": "Running", "warnings": []})})


def gpu_user(name, uid):
    return GPUUser.model_validate({"metadata": {"name": name}, "spec": {"state": "Active"},
                                   "status": {"uid": uid, "gid": uid}})


@pytest.fixture
def host(host_root):
    host = make_host(host_root.parent)
    reconcile_host(host, lab(alice(), bob()))
    yield host
    host.close()


@pytest.fixture
def outside(host):
    """Somewhere a planted link could lead: a fake /etc with a shadow file, and bob's home."""
    root = host.data_root.parent.parent / "outside"
    (root / "notices").mkdir(parents=True)
    (root / "notices/train").write_text("root:$6$secret:19000::::::\n")
    (root / "train").write_text("not a notice\n")
    watched = {"outside": root, "bob": host.data_root / "users/bob"}
    before = {name: checksums(path) for name, path in watched.items()}
    yield root
    for name, path in watched.items():
        assert checksums(path) == before[name], f"{name} changed through a planted link"


def notice_path(host, user="alice", name="train"):
    return host.data_root / "users" / user / ".labkeeper/notices" / name


def test_a_warned_workspace_gets_a_notice_owned_by_its_user(host):
    notices = HomeNotices(host.data_fd, "node-a", lambda: [gpu_user("alice", 20001), gpu_user("bob", 20002)],
                          lambda: T0 + 24 * MIN)
    report = notices([warned()])
    assert report.done == ["alice/train: notice written"] and report.failed == []
    path = notice_path(host)
    assert path.read_text() == notice_text(warned(), T0 + 24 * MIN)
    assert "will be stopped at 2026-11-23T09:30:00Z (in 6m): idle for 24m of 30m" in path.read_text()
    for made, mode in ((path, 0o100644), (path.parent, 0o40755), (path.parent.parent, 0o40755)):
        st = made.lstat()
        assert (st.st_uid, st.st_gid, st.st_mode) == (20001, 20001, mode), made
    assert not (host.data_root / "users/bob/.labkeeper").exists(), "bob has nothing to be told"


def test_the_notice_is_rewritten_only_when_its_text_changes(host):
    sync_notices(host.data_fd, "node-a", [warned()], OWNERS, T0 + 24 * MIN)
    first = notice_path(host).stat()
    for later in (T0 + 24 * MIN, T0 + 24 * MIN + dt.timedelta(seconds=50)):
        assert sync_notices(host.data_fd, "node-a", [warned()], OWNERS, later).done == []
        now = notice_path(host).stat()
        assert (now.st_ino, now.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)
    report = sync_notices(host.data_fd, "node-a", [warned()], OWNERS, T0 + 25 * MIN)
    assert report.done == ["alice/train: notice updated"]
    assert "(in 5m): idle for 25m of 30m" in notice_path(host).read_text()


def test_the_notice_goes_when_the_warning_clears_and_when_the_workspace_is_deleted(host):
    sync_notices(host.data_fd, "node-a", [warned(), warned("eval")], OWNERS, T0 + 24 * MIN)
    assert notice_path(host, name="eval").exists()
    report = sync_notices(host.data_fd, "node-a", [cleared(warned()), warned("eval")], OWNERS, T0 + 24 * MIN)
    assert report.done == ["alice/train: notice removed"] and not notice_path(host).exists()
    assert notice_path(host, name="eval").exists()
    notices_dir = notice_path(host).parent
    (notices_dir / "NOTES.txt").write_text("alice's own file")  # not a workspace name: not the agent's
    report = sync_notices(host.data_fd, "node-a", [cleared(warned())], OWNERS, T0 + 24 * MIN)
    assert report.done == ["alice/eval: notice removed"]
    assert sorted(os.listdir(notices_dir)) == ["NOTES.txt"]


def test_a_stopped_workspace_keeps_its_notice_on_the_node_it_ran_on_only(host):
    train = warned("train")
    stopped = train.model_copy(update={"status": train.status.model_copy(update={"phase": "Stopped",
                                                                                  "stop_reason": "Idle"})})
    assert sync_notices(host.data_fd, "node-b", [stopped], OWNERS, T0 + 40 * MIN).done == []
    assert not (host.data_root / "users/alice/.labkeeper").exists()
    sync_notices(host.data_fd, "node-a", [stopped], OWNERS, T0 + 40 * MIN)
    assert "was stopped at 2026-11-23T09:30:00Z because it was idle" in notice_path(host).read_text()
    # node-b sees the same file on a shared data root: it leaves it to node-a
    assert sync_notices(host.data_fd, "node-b", [stopped], OWNERS, T0 + 41 * MIN).done == []
    assert notice_path(host).exists()


def test_no_home_no_notice_and_nothing_created(host):
    carol = {"carol": NoticeOwner(20003, 20003)}
    report = sync_notices(host.data_fd, "node-a", [warned(user="carol")], carol, T0 + 24 * MIN)
    assert report.done == [] and report.failed == []
    assert not (host.data_root / "users/carol").exists()
    # a home that is not the user's (here root's) gets nothing either
    (host.data_root / "users/carol").mkdir()
    sync_notices(host.data_fd, "node-a", [warned(user="carol")], carol, T0 + 24 * MIN)
    assert os.listdir(host.data_root / "users/carol") == []


@pytest.mark.parametrize("planted", [".labkeeper", ".labkeeper/notices"])
def test_a_planted_directory_link_is_replaced_not_followed(host, outside, planted):
    home = host.data_root / "users/alice"
    if planted == ".labkeeper/notices":
        (home / ".labkeeper").mkdir()
        os.chown(home / ".labkeeper", 20001, 20001)
    (home / planted).symlink_to(outside)
    # first nothing to write: the notice of a deleted workspace is looked for, nothing below the link removed
    assert sync_notices(host.data_fd, "node-a", [], OWNERS, T0 + 24 * MIN).done == []
    assert (home / planted).is_symlink()
    report = sync_notices(host.data_fd, "node-a", [warned()], OWNERS, T0 + 24 * MIN)
    assert report.done == ["alice/train: notice written"]
    assert not (home / planted).is_symlink() and (home / planted).is_dir()
    assert notice_path(host).read_text() == notice_text(warned(), T0 + 24 * MIN)


def test_a_planted_notice_link_is_replaced_not_written_through_and_never_removed(host, outside):
    notices_dir = notice_path(host).parent
    sync_notices(host.data_fd, "node-a", [warned("eval")], OWNERS, T0 + 24 * MIN)
    (notices_dir / "train").symlink_to(outside / "train")
    (notices_dir / "gone").symlink_to(outside / "notices/train")
    report = sync_notices(host.data_fd, "node-a", [warned(), warned("eval")], OWNERS, T0 + 24 * MIN)
    assert report.done == ["alice/train: notice updated"]
    assert not notice_path(host).is_symlink() and notice_path(host).stat().st_uid == 20001
    assert (notices_dir / "gone").is_symlink(), "only plain files are removed"
    # a notice planted as a link to bob's home is neither removed through nor followed
    (notices_dir / "eval").unlink()
    (notices_dir / "eval").symlink_to(host.data_root / "users/bob")
    assert sync_notices(host.data_fd, "node-a", [warned()], OWNERS, T0 + 24 * MIN).done == []
