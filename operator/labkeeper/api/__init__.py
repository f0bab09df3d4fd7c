"""labkeeper's API: the four custom resources, the lab policy and the rules for names, sizes and durations.

Nothing here imports the rest of labkeeper. The names others use:

- `GROUP`, `VERSION`, `API_VERSION`, `KINDS` (kind → `Kind` with group/version/plural/namespaced)
- `labkeeper.api.resources`: GPUUser, SharedCache, ModelStore, Workspace (spec and status models)
- `labkeeper.api.policy`: LabPolicy, `load_policy`, `effective_limits`, `gpu_equivalents`
- `labkeeper.api.units`: `parse_duration`, `parse_quantity`, `parse_cpu`, `parse_memory`
- `labkeeper.api.names`: `validate_username`, `validate_group` (no privileged host groups),
  `validate_cache_env_name` (what a SharedCache or ModelStore may export)
- `labkeeper.api.policy.not_entitled`: the NotEntitled words of the operator and labctl
"""

from __future__ import annotations

from labkeeper.api.kinds import API_VERSION, GROUP, KINDS, VERSION, Kind
from labkeeper.api.names import InvalidName, validate_username
from labkeeper.api.units import format_duration, parse_cpu, parse_duration, parse_memory, parse_quantity

__all__ = [
    "API_VERSION", "GROUP", "KINDS", "VERSION", "InvalidName", "Kind", "format_duration", "parse_cpu",
    "parse_duration", "parse_memory", "parse_quantity", "validate_username",
]
