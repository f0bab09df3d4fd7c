"""The NVML sampler against a real GPU: a small CUDA busy loop is seen active with a reason, then idle.

Runs on the whole GPU as the machine has it; it never changes MIG mode or resets the GPU (it may be
shared). MIG attribution is covered by the file-backed sampler in tests/unit."""

import datetime as dt
import importlib.util
import subprocess
import sys
import time

import pytest

from labkeeper.agent.activity import ActivityMonitor, HostReader, NvmlSampler, Thresholds, WatchedWorkspace

pytestmark = pytest.mark.gpu

POD_UID = "5e1f0c2a-9b8d-4c7e-a6f5-4d3c2b1a0f9e"
TORCH_LOOP = """
import torch
x = torch.randn(4096, 4096, device="cuda")
print("ready", flush=True)
while True:
    x = torch.tanh(x @ x)
"""
CUPY_LOOP = """
import cupy
x = cupy.random.randn(4096, 4096, dtype=cupy.float32)
print("ready", flush=True)
while True:
    x = cupy.tanh(x @ x)
"""


@pytest.fixture
def nvml():
    import pynvml
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        reason = f"no NVIDIA GPU here: pynvml.nvmlInit() failed with {err}"
        print(reason)
        pytest.skip(reason)
    pynvml.nvmlShutdown()
    sampler = NvmlSampler()
    yield sampler
    sampler.close()


def cuda_loop() -> str:
    for module, loop in (("torch", TORCH_LOOP), ("cupy", CUPY_LOOP)):
        if importlib.util.find_spec(module):
            return loop
    pytest.skip("neither torch nor cupy is importable to run a CUDA busy loop")


def test_a_cuda_busy_loop_is_active_with_a_reason_then_idle_once_it_stops(nvml, tmp_path):
    busy = subprocess.Popen([sys.executable, "-c", cuda_loop()], stdout=subprocess.PIPE, text=True)
    # stands in for the kubelet: the loop's pid lives in a pod's cgroup as /proc/<pid>/cgroup says
    proc_root = tmp_path / "proc"
    (proc_root / str(busy.pid)).mkdir(parents=True)
    (proc_root / str(busy.pid) / "cgroup").write_text(f"0::/kubepods/burstable/pod{POD_UID}/0123abcd\n")
    workspace = WatchedWorkspace("lab-alice", "cuda", POD_UID)
    monitor = ActivityMonitor(nvml, Thresholds(), lambda: dt.datetime.now(dt.UTC),
                              host=HostReader(proc_root=proc_root, cgroup_root=tmp_path / "cgroup"))
    try:
        assert busy.stdout.readline().strip() == "ready"
        monitor.observe([workspace])  # GPM measures between two samples
        deadline = time.monotonic() + 30
        while True:
            time.sleep(1)
            verdict = monitor.observe([workspace])[workspace.key]
            seen = [g for g in verdict.signals["gpus"] if busy.pid in g["pids"]]
            if (seen and verdict.active) or time.monotonic() > deadline:
                break
        print(f"\nwhile the loop runs: {verdict.reason}; gpus {verdict.signals['gpus']}")
        assert seen, f"NVML never listed pid {busy.pid}: {verdict.signals}"
        assert verdict.active, verdict.reason
        assert "gpu " in verdict.reason and " on " in verdict.reason
    finally:
        busy.kill()
        busy.wait()

    deadline = time.monotonic() + 30
    while True:
        time.sleep(1)
        verdict = monitor.observe([workspace])[workspace.key]
        if not verdict.active or time.monotonic() > deadline:
            break
    print(f"after it stopped: {verdict.reason}")
    assert not verdict.active, verdict.reason
    assert all(busy.pid not in g["pids"] for g in verdict.signals["gpus"])
