"""The admin board, computed from plain objects: who holds which slice, who waits, what is wrong,
all inside an 80x24 terminal."""

from __future__ import annotations

import datetime as dt

from labkeeper.cli import board

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def node(name: str, **resources: str) -> dict:
    return {"metadata": {"name": name}, "status": {"allocatable": {"cpu": "64", **resources}}}


def pod(user: str, workspace: str, node_name: str, resource: str, role: str = "workspace") -> dict:
    return {"metadata": {"name": f"{'hold' if role == 'hold' else 'ws'}-{workspace}", "namespace": f"lab-{user}",
                         "labels": {"labkeeper.io/user": user, "labkeeper.io/workspace": workspace,
                                    "labkeeper.io/role": role}},
            "spec": {"nodeName": node_name, "containers": [{"resources": {"limits": {resource: "1"}}}]},
            "status": {"phase": "Running"}}


def workspace(user: str, name: str, phase: str, profile: str = "1g.10gb", **status) -> dict:
    return {"metadata": {"name": name, "namespace": f"lab-{user}", "generation": 1},
            "spec": {"gpu": {"profile": profile, "count": 1}, "state": "Running"},
            "status": {"phase": phase, "observedGeneration": 1, **status}}


NODES = [node("gpu-node-1", **{"nvidia.com/mig-1g.10gb": "2", "nvidia.com/mig-2g.20gb": "1",
                              "nvidia.com/mig-3g.40gb": "1"}),
         node("gpu-node-2", **{"nvidia.com/gpu": "2"}), node("cpu-node")]


def test_each_slice_shows_its_user_workspace_and_what_it_is_doing():
    pods = [pod("alice", "train", "gpu-node-1", "nvidia.com/mig-1g.10gb"),
            pod("bob", "big", "gpu-node-2", "nvidia.com/gpu"),
            pod("carol", "old", "gpu-node-1", "nvidia.com/mig-3g.40gb", role="hold")]
    workspaces = [workspace("alice", "train", "Running", runningSince="2026-03-01T11:00:00Z",
                            idleDeadline="2026-03-01T12:20:00Z"),
                  workspace("bob", "big", "IdleWarning", "full", idleDeadline="2026-03-01T12:04:00Z"),
                  workspace("carol", "old", "Stopped", "3g.40gb", holdUntil="2026-03-01T12:15:00Z")]
    data = board.board_model(NODES, pods, workspaces, [], NOW)
    slots = {(s.node, s.device): s for s in data.slots}
    assert len(data.slots) == 6  # 2 + 1 + 1 MIG slices and 2 whole GPUs; the CPU node has none
    assert (slots["gpu-node-1", "1g.10gb #1"].user, slots["gpu-node-1", "1g.10gb #1"].workspace) == ("alice", "train")
    assert slots["gpu-node-1", "1g.10gb #1"].state == "stop in 20m, up 1h00m"
    assert slots["gpu-node-1", "1g.10gb #2"].state == "free"
    assert slots["gpu-node-1", "3g.40gb #1"].state == "held until 12:15"
    assert slots["gpu-node-2", "gpu #1"].user == "bob"
    assert data.alerts == ["bob/big idle, stops in 4m"]


def test_ten_users_and_twenty_workspaces_fit_80x24_with_counts_of_what_is_cut():
    users = [{"metadata": {"name": f"user{i}"}, "status": {}} for i in range(10)]
    users[3]["status"]["conditions"] = [{"type": "DiskAlert", "status": "True", "message": "home at 91% of 50Gi"}]
    pods, workspaces = [], []
    placements = [("gpu-node-1", "nvidia.com/mig-1g.10gb")] * 2 + [("gpu-node-1", "nvidia.com/mig-2g.20gb"),
                                                                   ("gpu-node-1", "nvidia.com/mig-3g.40gb")] \
        + [("gpu-node-2", "nvidia.com/gpu")] * 2
    for i in range(20):
        user, name = f"user{i % 10}", f"ws-{i:02d}-experiment"
        if i < len(placements):
            node_name, resource = placements[i]
            pods.append(pod(user, name, node_name, resource))
            workspaces.append(workspace(user, name, "Running", runningSince="2026-03-01T11:30:00Z"))
        else:
            workspaces.append(workspace(user, name, "Pending", reason="Unschedulable",
                                        message="0/3 nodes are available: 3 Insufficient nvidia.com/mig-1g.10gb"))
    lines = board.render_lines(board.board_model(NODES, pods, workspaces, users, NOW), 80, 24)
    texts = [text for text, _ in lines]
    assert len(texts) <= 24
    assert all(len(t) <= 79 for t in texts), [t for t in texts if len(t) > 79]
    assert texts[0] == "labkeeper 12:00:00  10 users  20 workspaces: 6 running, 14 queued, 0 stopped"
    assert "GPU SLICES 6: 6 in use, 0 held, 0 free" in texts[1]
    assert ["gpu-node-1", "1g.10gb", "#1", "user0", "ws-00-experiment", "active,", "up", "30m"] in [t.split() for t in texts]
    assert "QUEUE 14" in texts
    queue_more = [t for t in texts if "more" in t]
    assert queue_more and queue_more[0].strip().startswith("… and ")
    assert any("user3 disk: home at 91% of 50Gi" in t for t in texts)


def test_a_cluster_without_gpus_says_so_on_the_board():
    lines = board.render_lines(board.board_model([node("cpu-node")], [], [], [], NOW), 80, 24)
    assert any("no node advertises GPUs" in text for text, _ in lines)


def test_the_queue_reads_in_the_order_admission_serves_it_and_a_held_slice_shows_its_holder():
    pods = [pod("grace", "a", "gpu-node-1", "nvidia.com/mig-1g.10gb")]
    workspaces = [workspace("grace", "a", "Running", runningSince="2026-03-01T11:00:00Z"),
                  # frank stopped; the hold is the record in his status, there is no hold pod
                  workspace("frank", "slice", "Stopped", holdNode="gpu-node-1", holdResource="nvidia.com/mig-1g.10gb",
                            holdCount=1, holdUntil="2026-03-01T12:06:00Z"),
                  workspace("ivan", "late-experiment-with-a-long-name", "Pending", reason="WaitingForDevice",
                            waitingSince="2026-03-01T11:50:00Z", message="no free 1g.10gb slice"),
                  workspace("heidi", "early", "Pending", reason="WaitingForDevice",
                            waitingSince="2026-03-01T11:30:00Z", message="no free 1g.10gb slice"),
                  workspace("judy", "quota", "Pending", reason="QuotaExceeded", message="0.57 + 0.14 > cap 0.57")]
    data = board.board_model(NODES, pods, workspaces, [], NOW)
    slots = {(s.node, s.device): s for s in data.slots}
    assert (slots["gpu-node-1", "1g.10gb #2"].user, slots["gpu-node-1", "1g.10gb #2"].state) == \
        ("frank", "held until 12:06")
    assert data.queue[0] == "heidi/early 1g.10gb, 30m: 1 in use, 1 held until 12:06; next in line"
    assert data.queue[1] == "ivan/late-experiment-with-a-long-name 1g.10gb, 10m: 1 in use, 1 held until 12:06; 1 ahead"
    assert data.queue[2].startswith("judy/quota 1g.10gb QuotaExceeded")
    texts = [t for t, _ in board.render_lines(data, 60, 24)]
    assert all(len(t) <= 59 for t in texts)
    # wrapped onto a second line, never cut off mid-reason
    start = texts.index(next(t for t in texts if t.startswith("  ivan/")))
    assert (texts[start] + " " + texts[start + 1].strip()).strip() == data.queue[1]
    assert "GPU SLICES 6: 1 in use, 1 held, 4 free" in texts[1]


def test_the_board_queue_puts_the_lighter_past_user_first_within_a_tier_as_admission_does():
    now = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)
    node = {"metadata": {"name": "h100"}, "status": {"allocatable": {"nvidia.com/mig-1g.10gb": "1"}}}
    users = [{"metadata": {"name": n}, "spec": {"tier": "student"}} for n in ("heavy", "light")]
    waiting = [{"metadata": {"name": "slice", "namespace": f"lab-{n}"},
                "spec": {"image": "i", "gpu": {"profile": "1g.10gb", "count": 1}},
                "status": {"phase": "Pending", "waitingSince": f"2026-03-01T11:{m:02d}:00.000000Z"}}
               for n, m in (("heavy", 0), ("light", 30))]
    data = board.board_model([node], [], waiting, users, now, {"student": 10000}, {"heavy": 3.0, "light": 0.5})
    assert [line.split()[0] for line in data.queue] == ["light/slice", "heavy/slice"], data.queue
    data = board.board_model([node], [], waiting, users, now, {"student": 10000})
    assert [line.split()[0] for line in data.queue] == ["heavy/slice", "light/slice"], data.queue


def test_the_stopped_workspaces_the_read_left_out_are_counted_in_the_header():
    workspaces = [workspace("grace", "a", "Running", runningSince="2026-03-01T11:00:00Z"),
                  workspace("frank", "slice", "Stopped", holdNode="gpu-node-1", holdResource="nvidia.com/mig-1g.10gb",
                            holdCount=1, holdUntil="2026-03-01T12:06:00Z")]
    data = board.board_model(NODES, [], workspaces, [], NOW, unlisted_stopped=40)
    header = board.render_lines(data, 120, 24)[0][0]
    assert "42 workspaces: 1 running, 0 queued, 41 stopped" in header, header
