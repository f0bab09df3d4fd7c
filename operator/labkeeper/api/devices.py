"""GPU devices as the device plugin names them and as a Workspace's status.devices lists them: one spelling
for the operator, which writes the list, and the agent and labctl, which read it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["FULL_GPU", "MIG_PREFIX", "device_entry", "device_list", "entry_profiles", "is_device",
           "parse_device_entry", "profile_of", "resource_of"]

FULL_GPU = "nvidia.com/gpu"
MIG_PREFIX = "nvidia.com/mig-"
_VENDOR = "nvidia.com/"
_TIMES = " x "


def resource_of(profile: str) -> str:
    """The device plugin's resource name for a MIG profile (1g.10gb) or a whole GPU (full)."""
    return FULL_GPU if profile == "full" else f"{MIG_PREFIX}{profile}"


def profile_of(resource: str) -> str:
    """The profile a device resource stands for: full for a whole GPU, 1g.10gb for nvidia.com/mig-1g.10gb."""
    return "full" if resource == FULL_GPU else resource.removeprefix(MIG_PREFIX)


def is_device(resource: str) -> bool:
    return resource == FULL_GPU or resource.startswith(MIG_PREFIX)


def device_entry(resource: str, count: int | str) -> str:
    """One entry of status.devices: `1 x nvidia.com/mig-1g.10gb`."""
    return f"{count}{_TIMES}{resource}"


def parse_device_entry(entry: str) -> tuple[int, str] | None:
    """(count, resource) of a status.devices entry, None for text device_entry did not write."""
    count, sep, resource = entry.partition(_TIMES)
    if not sep or not count.isdigit() or not resource.startswith(_VENDOR) or " " in resource:
        return None
    return int(count), resource


def device_list(pod: Mapping[str, Any]) -> list[str]:
    """status.devices of a workspace from its pod: every NVIDIA resource its containers are limited to."""
    return [device_entry(resource, qty) for container in (pod.get("spec") or {}).get("containers") or []
            for resource, qty in ((container.get("resources") or {}).get("limits") or {}).items()
            if resource.startswith(_VENDOR)]


def entry_profiles(entries: Iterable[str]) -> tuple[str, ...]:
    """The profiles status.devices lists, one per entry: what the agent tells the verdict a workspace has."""
    return tuple(profile_of(parsed[1]) for e in entries if (parsed := parse_device_entry(e)))
