"""The agent's pure decisions: accounts planned over file text, desired state from API objects, ACL bytes."""

from __future__ import annotations

import datetime as dt
import subprocess
import threading

from labkeeper.agent import accounts, acl, desired
from labkeeper.agent.model import HostUser
from labkeeper.api.resources import GPUUser, ModelStore, SharedCache, UserNodeState, read_object


def read(model, *bodies):
    """The objects as the agent's watches keep them (api.resources.read_object), and those that are stand-ins."""
    objects = [read_object(model, body)[0] for body in bodies]
    return objects, [f"{model.__name__}/{o.name}" for o in objects if o.refused]

TODAY = dt.date(2026, 3, 1)
BASE = {"passwd": "root:x:0:0:root:/root:/bin/bash\n", "group": "root:x:0:\nvideo:x:44:carol\n",
        "shadow": "root:*:19000:0:99999:7:::\n", "gshadow": "root:*::\n"}


def test_planning_keeps_foreign_lines_and_members_and_drops_departed_accounts():
    files = accounts.AccountFiles.parse(BASE)
    accounts.plan(files, [HostUser("alice", 20001, 20001, groups=("video",)), HostUser("bob", 20002, 20002)],
                  2000, TODAY)
    accounts.plan(files, [HostUser("alice", 20001, 20001, groups=("video",))], 2000, TODAY)
    text = files.render()
    assert text["passwd"].startswith("root:x:0:0:root:/root:/bin/bash\n") and "bob" not in text["passwd"]
    assert "video:x:44:alice,carol\n" in text["group"] and "lab-users:x:2000:alice\n" in text["group"]
    assert "bob" not in text["group"] and "bob" not in text["shadow"]


def test_an_unmanaged_account_is_reported_not_changed():
    texts = BASE | {"passwd": BASE["passwd"] + "alice:x:1000:1000:Alice:/home/alice:/bin/zsh\n"}
    files = accounts.AccountFiles.parse(texts)
    report = accounts.plan(files, [HostUser("alice", 20001, 20001)], 2000, TODAY)
    assert files.render()["passwd"] == texts["passwd"]
    assert "not managed by labkeeper" in report.problems["alice"][0]


def test_users_wait_for_a_uid_and_offboarded_or_deleted_users_depart():
    users = [
        {"metadata": {"name": "alice"}, "spec": {}, "status": {"uid": 20001, "gid": 20001}},
        {"metadata": {"name": "bob"}, "spec": {}},
        {"metadata": {"name": "carol"}, "spec": {"state": "Offboarded", "dataPolicy": "Archive"}},
        {"metadata": {"name": "dave", "deletionTimestamp": "x"}, "spec": {"dataPolicy": "Delete"}},
        {"metadata": {"name": "eve"}, "spec": {"state": "Suspended"}, "status": {"uid": 20005, "gid": 20005}},
    ]
    users, refused = read(GPUUser, *users)
    assert refused == []
    want = desired.desired_state(users, [], [], {"alice": b"cfg", "eve": b"cfg"}, 2000)
    assert [u.name for u in want.lab.users] == ["alice", "eve"]
    assert want.lab.users[0].kubeconfig == b"cfg" and want.lab.users[1].locked and want.lab.users[1].kubeconfig is None
    assert want.waiting == {"bob": "waiting for the operator to allocate a uid"}
    assert [(d.name, d.data_policy) for d in want.departures] == [("carol", "Archive"), ("dave", "Delete")]


def test_a_cache_with_an_unsafe_path_is_refused_with_a_reason():
    bad = {"metadata": {"name": "evil"}, "spec": {"type": "pip", "path": "users/alice"}}
    want = desired.desired_state([], read(SharedCache, bad)[0], [], {}, 2000)
    assert want.lab.trees == () and "agent's own users/" in want.invalid["SharedCache/evil"]


def test_the_agent_refuses_env_and_groups_the_api_refuses_even_when_an_older_object_carries_them():
    # stored before the CRD's rules existed: nothing of it may reach /etc/profile.d or /etc/group
    preload = {"metadata": {"name": "pip"}, "spec": {"type": "pip", "path": "cache/pip", "env": [
        {"name": "PIP_CACHE_DIR", "value": "$(PATH)"}, {"name": "LD_PRELOAD", "value": "$(PATH)/x.so"}]}}
    store = {"metadata": {"name": "hf"}, "spec": {"type": "huggingface", "path": "models/hf",
                                                  "env": [{"name": "HF_HUB_CACHE", "value": "$(PATH)"}]}}
    sudoer = {"metadata": {"name": "mallory"}, "spec": {"groups": ["sudo"]}, "status": {"uid": 20009, "gid": 20009}}
    users, refused_users = read(GPUUser, sudoer)
    caches, refused_caches = read(SharedCache, preload)
    stores, refused_stores = read(ModelStore, store)
    assert refused_stores == [] and refused_users == ["GPUUser/mallory"] and refused_caches == ["SharedCache/pip"]
    want = desired.desired_state(users, caches, stores, {}, 2000)
    assert [t.name for t in want.lab.trees] == ["hf"] and want.lab.users == ()
    assert "'LD_PRELOAD' does not point a tool at a cache" in want.invalid["SharedCache/pip"]
    assert "group 'sudo' is a privileged or system group" in want.invalid["GPUUser/mallory"]


def test_status_is_rewritten_only_when_this_nodes_entry_changes():
    now = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    entry = UserNodeState(node="n1", state="Provisioned", message="ok")
    nodes = desired.merged_nodes([UserNodeState(node="n2", state="Waiting")], "n1", entry, now)
    assert [n.node for n in nodes] == ["n1", "n2"]
    assert desired.merged_nodes(nodes, "n1", entry, now + dt.timedelta(hours=1)) is None


def test_acl_bytes_read_back_by_getfacl_as_written(tmp_path):
    wanted = acl.tree_acl(group_obj=acl.RX, writer_uids={20001}, writer_gids=set(), reader_uids=set(),
                          reader_gids={2000})
    assert acl.decode(wanted.encode()) == wanted
    import os
    target = tmp_path / "d"
    target.mkdir()
    fd = os.open(target, os.O_RDONLY)
    try:
        os.setxattr(fd, acl.ACCESS, wanted.encode())
    finally:
        os.close(fd)
    out = subprocess.run(["getfacl", "-n", "-c", str(target)], capture_output=True, text=True, check=True).stdout
    assert {"user:20001:rwx", "group:2000:r-x", "group::r-x", "mask::rwx"} <= set(out.split())


def test_an_object_the_model_refuses_is_never_acted_on_beyond_keeping_what_is_there():
    # both stored before the rules that refuse them: mallory is leaving and asked for her home to be deleted
    mallory = {"metadata": {"name": "mallory", "deletionTimestamp": "2026-03-01T00:00:00Z"},
               "spec": {"groups": ["sudo"], "dataPolicy": "Delete"}, "status": {"uid": 20009, "gid": 20009}}
    old = {"metadata": {"name": "old", "creationTimestamp": "2026-01-01T00:00:00Z"},
           "spec": {"type": "pip", "path": "cache/pip", "env": [{"name": "LD_PRELOAD", "value": "x"}]}}
    new = {"metadata": {"name": "new", "creationTimestamp": "2026-02-01T00:00:00Z"},
           "spec": {"type": "pip", "path": "cache/pip"}}
    users, refused_users = read(GPUUser, mallory)
    caches, refused_caches = read(SharedCache, old, new)
    assert refused_users == ["GPUUser/mallory"] and refused_caches == ["SharedCache/old"]
    want = desired.desired_state(users, caches, [], {}, 2000)
    assert [(d.name, d.data_policy) for d in want.departures] == [("mallory", "Keep")]
    assert want.lab.trees == (), "the refused tree provisions nothing, and its path stays its own"
    assert "LD_PRELOAD" in want.invalid["SharedCache/old"]
    assert "is already the path of SharedCache old" in want.invalid["SharedCache/new"]


def test_the_watch_keeps_a_refused_object_as_a_stand_in_that_carries_its_refusal():
    from labkeeper.agent.main import Watched

    watched = Watched(list_call=None, args=(), dirty=threading.Event(), model=GPUUser)
    watched._keep({"metadata": {"name": "alice"}, "spec": {}, "status": {"uid": 20001, "gid": 20001}})
    watched._keep({"metadata": {"name": "mallory"}, "spec": {"groups": ["sudo"]}, "status": {"uid": 20009}})
    assert [(u.name, bool(u.refused)) for u in watched.items()] == [("alice", False), ("mallory", True)]
    watched._keep({"metadata": {"name": "mallory"}, "spec": {"groups": ["video"]}, "status": {"uid": 20009}})
    assert [u.refused for u in watched.items()] == [None, None], "fixed: no longer refused"
    watched._forget("alice")
    assert [u.name for u in watched.items()] == ["mallory"]
