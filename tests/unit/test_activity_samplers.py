"""The GPU sampler is chosen explicitly, and the activity file says clearly what is wrong with it."""

import datetime as dt

import pynvml
import pytest

from labkeeper.agent.activity import (
    FileSampler,
    NoGpuSampler,
    NvmlSampler,
    SamplerUnavailable,
    Thresholds,
    sampler_from_arg,
)


def test_a_node_without_nvml_refuses_the_nvml_sampler_instead_of_falling_back(monkeypatch):
    def no_driver():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_driver)
    with pytest.raises(SamplerUnavailable, match=r"--sampler nvml: NVML could not start on this node \(NVML Shared "):
        sampler_from_arg("nvml")
    with pytest.raises(SamplerUnavailable):
        NvmlSampler()


def test_samplers_are_named_explicitly(tmp_path):
    (tmp_path / "gpus.yaml").write_text("devices: []\n")
    assert isinstance(sampler_from_arg(f"file:{tmp_path / 'gpus.yaml'}"), FileSampler)
    assert isinstance(sampler_from_arg("none"), NoGpuSampler)
    with pytest.raises(ValueError, match="'cuda' is not a sampler; use nvml, none or file:PATH"):
        sampler_from_arg("cuda")
    with pytest.raises(SamplerUnavailable, match="no such file"):
        sampler_from_arg(f"file:{tmp_path / 'missing.yaml'}")


def test_the_activity_file_reads_as_yaml_with_sizes_and_optional_pod_uids(tmp_path):
    path = tmp_path / "gpus.yaml"
    path.write_text("""
devices:
  - uuid: GPU-1
    name: NVIDIA A100-SXM4-80GB
    utilization: 63
  - uuid: GPU-2
    name: NVIDIA H100 80GB HBM3
    migInstances:
      - {uuid: MIG-2a, profile: 3g.40gb, smUtilization: 12.5}
processes:
  - {pid: 7, device: GPU-1, usedMemory: 1536Mi}
  - {pid: 8, device: MIG-2a, usedMemory: 1000000, podUid: 0b8f3a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b}
""")
    snapshot = FileSampler(path).sample()
    assert snapshot.devices["GPU-1"].utilization_percent == 63 and snapshot.devices["GPU-1"].metric == "busy"
    mig = snapshot.devices["MIG-2a"]
    assert (mig.label, mig.parent_uuid, mig.utilization_percent, mig.metric) == ("3g.40gb", "GPU-2", 12.5, "SM")
    assert snapshot.devices["GPU-2"].utilization_percent is None
    assert [(p.pid, p.used_memory_bytes, p.pod_uid) for p in snapshot.processes] == [
        (7, 1536 * 2**20, None), (8, 1_000_000, "0b8f3a4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b")]


@pytest.mark.parametrize(("doc", "message"), [
    ('{"devices": [{"name": "x"}]}', r"devices\[0\] needs a uuid"),
    ('{"devices": [{"uuid": "G", "utilization": 140}]}', r"devices\[0\]\.utilization is 140; use a number from 0 to 100"),
    ('{"devices": [{"uuid": "G", "migInstances": [{"uuid": "M"}]}]}', r"migInstances\[0\] needs a uuid and a profile"),
    ('{"devices": [{"uuid": "G"}], "processes": [{"pid": 1, "device": "MIG-x"}]}',
     r"processes\[0\]\.device 'MIG-x' is not a uuid listed under devices"),
    ('{"devices": [{"uuid": "G"}], "processes": [{"pid": 1, "device": "G", "usedMemory": "lots"}]}',
     r"processes\[0\]\.usedMemory: 'lots' is not a size"),
])
def test_a_broken_activity_file_names_the_field_and_the_value(tmp_path, doc, message):
    path = tmp_path / "gpus.json"
    path.write_text(doc)
    with pytest.raises(ValueError, match=message):
        FileSampler(path).sample()


def test_thresholds_come_from_the_policy_with_the_network_rate_scaled_to_the_interval():
    policy = {"gpuUtilization": 5, "cpuCores": 0.03, "networkBytesPerSecond": 10240}
    assert Thresholds.from_policy(policy, dt.timedelta(seconds=30)) == Thresholds(
        gpu_util_percent=5, cpu_cores=0.03, network_bytes_per_interval=307_200, count_gpu_memory_as_active=False)
    assert Thresholds.from_policy({"networkBytesPerInterval": 5, "countGpuMemoryAsActive": True},
                                  dt.timedelta(seconds=60)).count_gpu_memory_as_active
