"""GPU samplers: where devices, MIG instances, their utilisation and their processes come from.

Chosen explicitly with `--sampler nvml|file:PATH|none` (see `sampler_from_arg`); a node without NVML
never falls back to a file silently. The file format is described in docs/activity-file.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import yaml

from labkeeper.agent.activity.model import GpuDevice, GpuProcess, GpuSnapshot

_PROFILE = re.compile(r"(\d+g\.\d+gb(?:\+me)?)", re.I)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
          "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*$", re.I)


class SamplerUnavailable(RuntimeError):
    """The chosen sampler cannot run on this node; the message says why and what to choose instead."""


class GpuSampler(Protocol):
    def sample(self) -> GpuSnapshot: ...


class NoGpuSampler:
    """For nodes without GPUs: `--sampler none`."""

    def sample(self) -> GpuSnapshot:
        return GpuSnapshot()


def sampler_from_arg(text: str) -> GpuSampler:
    if text == "nvml":
        return NvmlSampler()
    if text == "none":
        return NoGpuSampler()
    if text.startswith("file:") and len(text) > len("file:"):
        return FileSampler(Path(text.removeprefix("file:")))
    raise ValueError(f"--sampler {text!r} is not a sampler; use nvml, none or file:PATH")


def parse_size(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{where}: {value!r} is not a size; use bytes or a quantity such as 2Gi")
    if isinstance(value, int | float):
        return int(value)
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{where}: {value!r} is not a size; use bytes or a quantity such as 2Gi or 512Mi")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])


class FileSampler:
    """Reads the GPU state from a JSON or YAML file on every sample, so a test or `make dev` can edit it live."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise SamplerUnavailable(f"--sampler file:{path}: no such file")

    def sample(self) -> GpuSnapshot:
        text = self.path.read_text()
        # JSON is YAML too, but the json module reads it far faster: this runs every sample
        doc = json.loads(text) if self.path.suffix == ".json" else yaml.safe_load(text)
        return parse_activity_file(doc or {}, str(self.path))


def parse_activity_file(doc: dict, source: str) -> GpuSnapshot:
    def percent(entry: dict, key: str, where: str) -> float | None:
        value = entry.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
            raise ValueError(f"{source}: {where}.{key} is {value!r}; use a number from 0 to 100, or leave it out")
        return float(value)

    if not isinstance(doc, dict):
        raise ValueError(f"{source}: the top level must be a mapping with devices and processes")
    devices: dict[str, GpuDevice] = {}
    for i, gpu in enumerate(doc.get("devices") or []):
        where = f"devices[{i}]"
        if not isinstance(gpu, dict) or not gpu.get("uuid"):
            raise ValueError(f"{source}: {where} needs a uuid")
        uuid = str(gpu["uuid"])
        devices[uuid] = GpuDevice(uuid, str(gpu.get("name") or uuid), None, percent(gpu, "utilization", where), "busy")
        for j, mig in enumerate(gpu.get("migInstances") or []):
            at = f"{where}.migInstances[{j}]"
            if not isinstance(mig, dict) or not mig.get("uuid") or not mig.get("profile"):
                raise ValueError(f"{source}: {at} needs a uuid and a profile (such as 1g.10gb)")
            devices[str(mig["uuid"])] = GpuDevice(str(mig["uuid"]), str(mig["profile"]), uuid,
                                                  percent(mig, "smUtilization", at), "SM")
    processes = []
    for i, proc in enumerate(doc.get("processes") or []):
        where = f"processes[{i}]"
        if not isinstance(proc, dict) or not isinstance(proc.get("pid"), int) or not proc.get("device"):
            raise ValueError(f"{source}: {where} needs an integer pid and a device uuid")
        if str(proc["device"]) not in devices:
            raise ValueError(f"{source}: {where}.device {proc['device']!r} is not a uuid listed under devices")
        memory = proc.get("usedMemory")
        processes.append(GpuProcess(proc["pid"], str(proc["device"]),
                                    None if memory is None else parse_size(memory, f"{source}: {where}.usedMemory"),
                                    str(proc["podUid"]) if proc.get("podUid") else None))
    return GpuSnapshot(devices, tuple(processes))


class NvmlSampler:
    """NVML: processes per GPU and per MIG instance; utilisation from GPM (SM activity) where the GPU
    supports it, device utilisation for whole GPUs without GPM, and nothing for MIG instances without
    GPM (the verdict then falls back to process presence)."""

    def __init__(self) -> None:
        try:
            import pynvml
        except ImportError as err:
            raise SamplerUnavailable(f"--sampler nvml: nvidia-ml-py is not installed ({err})") from err
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as err:
            raise SamplerUnavailable(
                f"--sampler nvml: NVML could not start on this node ({err}); is the NVIDIA driver loaded and "
                "the agent run with the nvidia runtime? Use --sampler none on nodes without GPUs") from err
        self.nvml = pynvml
        self._gpm_last: dict[str, Any] = {}  # GPM needs two samples: the previous one per device

    def close(self) -> None:
        for sample in self._gpm_last.values():
            self.nvml.nvmlGpmSampleFree(sample)
        self._gpm_last.clear()
        self.nvml.nvmlShutdown()

    def sample(self) -> GpuSnapshot:
        nvml = self.nvml
        devices: dict[str, GpuDevice] = {}
        processes: list[GpuProcess] = []
        for index in range(nvml.nvmlDeviceGetCount()):
            gpu = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = nvml.nvmlDeviceGetUUID(gpu)
            gpm = self._gpm_supported(gpu)
            if self._mig_enabled(gpu):
                for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(gpu)):
                    try:
                        mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, slot)
                    except nvml.NVMLError:
                        continue  # an empty slot
                    mig_uuid = nvml.nvmlDeviceGetUUID(mig)
                    match = _PROFILE.search(nvml.nvmlDeviceGetName(mig))
                    instance = nvml.nvmlDeviceGetGpuInstanceId(mig)
                    util = self._gpm_sm_util(mig_uuid, lambda s, g=gpu, i=instance: nvml.nvmlGpmMigSampleGet(g, i, s)) \
                        if gpm else None
                    devices[mig_uuid] = GpuDevice(mig_uuid, match.group(1) if match else mig_uuid, uuid, util, "SM")
                    processes += self._processes(mig, mig_uuid)
            else:
                if gpm:
                    util, metric = self._gpm_sm_util(uuid, lambda s, g=gpu: nvml.nvmlGpmSampleGet(g, s)), "SM"
                else:
                    util, metric = float(nvml.nvmlDeviceGetUtilizationRates(gpu).gpu), "busy"
                devices[uuid] = GpuDevice(uuid, nvml.nvmlDeviceGetName(gpu), None, util, metric)
                processes += self._processes(gpu, uuid)
        return GpuSnapshot(devices, tuple(processes))

    def _processes(self, handle: Any, uuid: str) -> list[GpuProcess]:
        try:
            running = self.nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except self.nvml.NVMLError_NotSupported:
            return []
        # usedGpuMemory is None where the driver hides it (some containers, MIG without privileges)
        return [GpuProcess(p.pid, uuid, p.usedGpuMemory) for p in running]

    def _mig_enabled(self, gpu: Any) -> bool:
        try:
            return self.nvml.nvmlDeviceGetMigMode(gpu)[0] == self.nvml.NVML_DEVICE_MIG_ENABLE
        except self.nvml.NVMLError:
            return False

    def _gpm_supported(self, gpu: Any) -> bool:
        try:
            return bool(self.nvml.nvmlGpmQueryDeviceSupport(gpu).isSupportedDevice)
        except self.nvml.NVMLError:
            return False

    def _gpm_sm_util(self, key: str, take: Callable[[Any], Any]) -> float | None:
        """SM activity in % between the previous call and this one; None on the first call."""
        nvml = self.nvml
        current = nvml.nvmlGpmSampleAlloc()
        try:
            take(current)
        except nvml.NVMLError:
            nvml.nvmlGpmSampleFree(current)
            return None
        previous = self._gpm_last.pop(key, None)
        self._gpm_last[key] = current
        if previous is None:
            return None
        try:
            request = nvml.c_nvmlGpmMetricsGet_t()
            request.version = nvml.NVML_GPM_METRICS_GET_VERSION
            request.numMetrics = 1
            request.sample1 = previous
            request.sample2 = current
            request.metrics[0].metricId = nvml.NVML_GPM_METRIC_SM_UTIL
            nvml.nvmlGpmMetricsGet(request)
            return float(request.metrics[0].value) if request.metrics[0].nvmlReturn == nvml.NVML_SUCCESS else None
        except nvml.NVMLError:
            return None
        finally:
            nvml.nvmlGpmSampleFree(previous)
