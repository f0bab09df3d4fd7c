"""The real test node's stand-in for NVML: the device plugin's ids and the processes that declare GPU use in
their environment become an activity file the agent's file sampler reads (docs/activity-file.md)."""

from __future__ import annotations

from pathlib import Path

from labkeeper.agent.activity.samplers import parse_activity_file
from labkeeper.testing.devices import FAKE_GPU_UTIL_ENV, cgroup_pids, fake_nvml, mig_devices


def fake_proc(root: Path, pid: int, **env: str) -> None:
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "environ").write_bytes(b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))


def test_a_process_declaring_gpu_use_is_listed_on_the_instance_its_container_was_given(tmp_path):
    devices = mig_devices({"1g.10gb": 2, "3g.40gb": 1})
    a, b, c = devices
    fake_proc(tmp_path, 10, NVIDIA_VISIBLE_DEVICES=a.id, **{FAKE_GPU_UTIL_ENV: "60"})
    fake_proc(tmp_path, 11, NVIDIA_VISIBLE_DEVICES=b.id, **{FAKE_GPU_UTIL_ENV: "0"})
    fake_proc(tmp_path, 12, NVIDIA_VISIBLE_DEVICES=a.id)  # a shell in the same container: no GPU work
    fake_proc(tmp_path, 13, NVIDIA_VISIBLE_DEVICES="MIG-of-another-node", **{FAKE_GPU_UTIL_ENV: "90"})
    doc = fake_nvml(devices, [10, 11, 12, 13, 14], proc_root=tmp_path)  # 14 has exited

    snapshot = parse_activity_file(doc, "fake")
    assert {(p.pid, p.device_uuid) for p in snapshot.processes} == {(10, a.id), (11, b.id)}
    assert snapshot.devices[a.id].utilization_percent == 60
    assert snapshot.devices[b.id].utilization_percent == 0
    assert snapshot.devices[c.id].utilization_percent == 0 and snapshot.devices[c.id].label == "3g.40gb"
    assert snapshot.devices[a.id].parent_uuid == doc["devices"][0]["uuid"]


def test_the_pids_of_a_cgroup_include_those_below_it(tmp_path):
    (tmp_path / "kubepods" / "podx" / "ctr").mkdir(parents=True)
    (tmp_path / "cgroup.procs").write_text("")
    (tmp_path / "kubepods" / "podx" / "cgroup.procs").write_text("5\n")
    (tmp_path / "kubepods" / "podx" / "ctr" / "cgroup.procs").write_text("7\n8\n")
    assert cgroup_pids(tmp_path) == {5, 7, 8}
