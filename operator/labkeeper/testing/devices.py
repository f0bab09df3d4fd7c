"""The MIG devices a test node offers, named as NVIDIA's device plugin names them. Pure data, no gRPC:
the plugin itself runs in its own process (`python -m labkeeper.testing.deviceplugin`), so the test
process never loads gRPC, whose fork handlers crash a process that forks after loading it."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class MigDevice:
    """One MIG instance as NVIDIA's plugin names it: `MIG-<uuid>` ids are stable across restarts."""

    profile: str
    id: str

    @property
    def resource(self) -> str:
        return f"nvidia.com/mig-{self.profile}"


def mig_devices(layout: Mapping[str, int], gpu: str = "GPU-5f0c6a62-9d6e-4b7a-8a51-labkeeper000") -> list[MigDevice]:
    """Devices for a MIG layout such as {"1g.10gb": 2, "2g.20gb": 1}; the ids depend only on the GPU and
    the layout, so a restarted plugin advertises the same ones (as MIG UUIDs do until a reboot)."""
    return [MigDevice(profile, f"MIG-{uuid.uuid5(uuid.NAMESPACE_URL, f'{gpu}/{profile}/{index}')}")
            for profile in sorted(layout) for index in range(layout[profile])]
