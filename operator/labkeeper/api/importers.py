"""Importers from the tools labkeeper replaces: AICADataKeeper's users.txt and DS01's resource-limits.yaml.

Each reads the whole file first and returns everything or raises ImportProblem listing every bad line:
nothing is ever half-imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError

from labkeeper.api.names import DNS_LABEL_PATTERN, USERNAME_PATTERN, InvalidName, validate_username
from labkeeper.api.policy import LabPolicy, PolicyError, Tier, UserOverride, describe_errors
from labkeeper.api.resources import MAX_RUNTIME_CEILING, GPUUser
from labkeeper.api.units import format_duration, parse_duration

__all__ = [
    "Ds01Import", "ImportProblem", "export_aicadatakeeper", "export_ds01", "import_aicadatakeeper", "import_ds01",
    "import_ds01_users", "read_ds01",
]

# AICADataKeeper's shared group; every GPUUser is in labkeeper's lab-users group already
LAB_GROUP_ALIASES = frozenset({"gpu-users", "lab-users"})
UNLIMITED_GPU_EQUIVALENTS = 64.0


class ImportProblem(ValueError):
    """Every problem in the file, each with its line number; the message lists them all."""

    def __init__(self, source: str, problems: list[tuple[int, str]]) -> None:
        self.source = source
        self.problems = sorted(problems)
        super().__init__(f"{source}: nothing was imported; fix these first:\n"
                         + "\n".join(f"  line {line}: {message}" for line, message in self.problems))


def _gpuuser(name: str, tier: str, groups: list[str]) -> GPUUser:
    return GPUUser.model_validate({"kind": "GPUUser", "metadata": {"name": name},
                                   "spec": {"displayName": name, "tier": tier, "groups": groups}})


# ---- AICADataKeeper users.txt ----------------------------------------------------------------------

def import_aicadatakeeper(text: str, tier: str = "student", source: str = "users.txt") -> list[GPUUser]:
    """`user group` per line, `#` comments and blank lines ignored → one GPUUser per user, in file order."""
    problems: list[tuple[int, str]] = []
    if not re.fullmatch(DNS_LABEL_PATTERN, tier):
        problems.append((0, f"tier {tier!r} is not a valid tier name (lowercase letters, digits and '-')"))
    seen: dict[str, int] = {}
    users: list[GPUUser] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            problems.append((number, f"{raw.strip()!r} must be 'username group' (two words), "
                                     f"found {len(fields)} word{'s' if len(fields) != 1 else ''}"))
            continue
        name, group = fields
        try:
            validate_username(name)
        except InvalidName as err:
            problems.append((number, str(err)))
            continue
        if not re.fullmatch(USERNAME_PATTERN, group):
            problems.append((number, f"group {group!r} is not a valid Linux group name "
                                     "(a lowercase letter first, then lowercase letters, digits or '-')"))
            continue
        if name in seen:
            problems.append((number, f"user {name!r} is listed again (first on line {seen[name]})"))
            continue
        seen[name] = number
        users.append(_gpuuser(name, tier, [] if group in LAB_GROUP_ALIASES else [group]))
    if problems:
        raise ImportProblem(source, problems)
    return users


def export_aicadatakeeper(users: list[GPUUser], lab_group: str = "gpu-users") -> str:
    """The users as a users.txt, for hosts still running AICADataKeeper's recovery service."""
    lines = [f"{u.name} {(u.spec.groups or [lab_group])[0]}" for u in users]
    return "# user group\n" + "".join(f"{line}\n" for line in lines)


# ---- DS01 resource-limits.yaml -----------------------------------------------------------------------

@dataclass
class Ds01Import:
    policy: LabPolicy
    users: list[GPUUser]
    notes: list[str] = field(default_factory=list)  # what changed meaning on the way in


# DS01 key → (labkeeper limit field, converter); None means known to DS01 but with no labkeeper equivalent
_LIMIT_KEYS = {
    "max_mig_instances": "maxGpuEquivalents",
    "max_cpus": "cpu",
    "memory": "memory",
    "max_containers_per_user": "maxWorkspaces",
    "idle_timeout": "idleTimeout",
    "max_runtime": "maxRuntime",
}
_POLICY_KEYS = {"gpu_hold_after_stop": "gpuHoldAfterStop", "container_hold_after_stop": "stoppedRetention"}
_IGNORED_KEYS = {"shm_size"}  # docker's /dev/shm size; a workspace pod gets a memory-backed /dev/shm
_DOCKER_UNITS = {"b": "", "k": "Ki", "m": "Mi", "g": "Gi", "t": "Ti"}


LineIndex = dict[tuple[str | int, ...], int]


def _line_index(node: yaml.Node, path: tuple[str | int, ...] = (), out: LineIndex | None = None) -> LineIndex:
    """Each key path → the 1-based line it is written on, so a problem can point at it."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            here = (*path, key.value)
            out[here] = key.start_mark.line + 1
            _line_index(value, here, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            out[(*path, index)] = item.start_mark.line + 1
            _line_index(item, (*path, index), out)
    return out


def _docker_memory(value: Any) -> str:
    text = str(value).strip()
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([bkmgtBKMGT]?)", text)
    if not match:
        raise ValueError(f"memory {value!r} is not a docker size such as 32g or 512m")
    number, unit = match.groups()
    return f"{number}{_DOCKER_UNITS[unit.lower()] if unit else ''}"


def _ds01_duration(value: Any, unlimited: str | None = None) -> str:
    if value is None:
        if unlimited is None:
            raise ValueError("null (unlimited) is not allowed here")
        return unlimited
    text = str(value).strip()
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
        text += "h"  # DS01 reads a bare number as hours
    return format_duration(parse_duration(text))


def _convert_limits(section: dict[str, Any], where: tuple[str | int, ...], lines: LineIndex,
                    problems: list[tuple[int, str]], allowed: set[str]) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    for key, value in section.items():
        line = lines.get((*where, key), lines.get(where, 0))
        if key in allowed or key in _IGNORED_KEYS:
            continue
        if key not in _LIMIT_KEYS:
            known = sorted({*_LIMIT_KEYS, *_IGNORED_KEYS, *allowed})
            problems.append((line, f"{'.'.join(map(str, where))}: unknown key {key!r}; DS01 keys are "
                                   f"{', '.join(known)}"))
            continue
        target = _LIMIT_KEYS[key]
        try:
            if key == "max_mig_instances":
                limits[target] = UNLIMITED_GPU_EQUIVALENTS if value is None else float(value)
            elif key == "max_cpus":
                limits[target] = str(value)
            elif key == "memory":
                limits[target] = _docker_memory(value)
            elif key == "max_containers_per_user":
                limits[target] = 50 if value is None else int(value)
            elif key == "idle_timeout":
                limits[target] = _ds01_duration(value, unlimited="168h")
            else:
                limits[target] = _ds01_duration(value, unlimited=MAX_RUNTIME_CEILING)
        except (TypeError, ValueError) as err:
            problems.append((line, f"{'.'.join(map(str, (*where, key)))} = {value!r}: {err}"))
    return limits


def read_ds01(text: str, source: str = "resource-limits.yaml") -> Ds01Import:
    """DS01's defaults / groups (with members) / user_overrides (with reason) → a LabPolicy whose tiers are
    DS01's groups, plus one GPUUser per member in that tier."""
    problems: list[tuple[int, str]] = []
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise ImportProblem(source, [((mark.line + 1) if mark else 0, f"not valid YAML: {err}")]) from err
    if root is None or not isinstance(data, dict):
        raise ImportProblem(source, [(1, "must be a mapping with defaults, groups and user_overrides")])
    lines = _line_index(root)
    notes: list[str] = []
    for key in data:
        if key not in ("defaults", "groups", "user_overrides"):
            problems.append((lines[(key,)], f"unknown top-level key {key!r}; expected defaults, groups, user_overrides"))

    defaults = data.get("defaults") or {}
    policy: dict[str, Any] = {"defaults": _convert_limits(defaults, ("defaults",), lines, problems,
                                                          {*_POLICY_KEYS, "priority"})}
    for key, target in _POLICY_KEYS.items():
        if key in defaults:
            try:
                policy[target] = _ds01_duration(defaults[key])
            except ValueError as err:
                problems.append((lines[("defaults", key)], f"defaults.{key} = {defaults[key]!r}: {err}"))
    for key in _IGNORED_KEYS & set(defaults):
        notes.append(f"defaults.{key} has no labkeeper equivalent and was left out")

    tiers: dict[str, dict[str, Any]] = {}
    members: dict[str, tuple[str, int]] = {}
    for group, section in (data.get("groups") or {}).items():
        line = lines[("groups", group)]
        if not re.fullmatch(DNS_LABEL_PATTERN, str(group)):
            problems.append((line, f"group {group!r} cannot be a tier name (lowercase letters, digits and '-')"))
            continue
        section = section or {}
        tier = _convert_limits(section, ("groups", group), lines, problems, {"members", "priority"})
        priority = section.get("priority", defaults.get("priority", 10))
        if not isinstance(priority, int) or not 0 <= priority <= 100:
            problems.append((lines.get(("groups", group, "priority"), line),
                             f"groups.{group}.priority = {priority!r}: DS01 priorities are whole numbers 0-100"))
            priority = 0
        tiers[group] = {**tier, "priority": priority * 1000}
        listed = section.get("members") or []
        if not isinstance(listed, list):
            problems.append((lines.get(("groups", group, "members"), line),
                             f"groups.{group}.members must be a list of usernames"))
            continue
        for index, name in enumerate(listed):
            at = lines.get(("groups", group, "members", index), line)
            try:
                validate_username(str(name))
            except InvalidName as err:
                problems.append((at, f"groups.{group}.members: {err}"))
                continue
            if name in members:
                problems.append((at, f"{name!r} is a member of {group} and of {members[name][0]} "
                                     f"(line {members[name][1]}); a user has one tier"))
                continue
            members[name] = (group, at)

    default_tier = "default" if "default" not in tiers else "default-tier"
    tiers[default_tier] = {"priority": int(defaults.get("priority", 10) or 0) * 1000}
    overrides: dict[str, dict[str, Any]] = {}
    for name, section in (data.get("user_overrides") or {}).items():
        line = lines[("user_overrides", name)]
        try:
            validate_username(str(name))
        except InvalidName as err:
            problems.append((line, f"user_overrides: {err}"))
            continue
        section = section or {}
        limits = _convert_limits(section, ("user_overrides", name), lines, problems, {"reason", "priority"})
        if "priority" in section:
            notes.append(f"user_overrides.{name}.priority has no per-user equivalent; the tier's priority applies")
        overrides[str(name)] = {**limits, **({"reason": str(section["reason"])} if section.get("reason") else {})}
        if name in members:
            notes.append(f"{name}: DS01 replaced group {members[name][0]}'s limits with the override; labkeeper "
                         f"merges, so limits the override does not name now come from tier {members[name][0]}")
        else:
            members[str(name)] = (default_tier, line)
    if problems:
        raise ImportProblem(source, problems)

    top = max(t["priority"] for t in tiers.values())
    policy.update(tiers={name: Tier.model_validate(t) for name, t in tiers.items()},
                  users={name: UserOverride.model_validate(o) for name, o in overrides.items()},
                  defaultTier=default_tier, holdPriority=max(100000, top + 1000))
    try:
        merged = LabPolicy.model_validate({**LabPolicy().model_dump(by_alias=True, exclude={"tiers", "users"}),
                                           "defaults": {**LabPolicy().defaults.model_dump(by_alias=True),
                                                        **policy.pop("defaults")}, **policy})
    except (ValidationError, PolicyError) as err:
        details = describe_errors(err) if isinstance(err, ValidationError) else [str(err)]
        raise ImportProblem(source, [(0, d) for d in details]) from err
    users = [_gpuuser(name, tier, []) for name, (tier, _) in members.items()]
    return Ds01Import(merged, users, notes)


def import_ds01(text: str, source: str = "resource-limits.yaml") -> LabPolicy:
    """The policy part of a DS01 import (labctl writes it to the policy ConfigMap)."""
    return read_ds01(text, source).policy


def import_ds01_users(text: str, source: str = "resource-limits.yaml") -> list[GPUUser]:
    """The GPUUsers of a DS01 import: every group member in the tier of that name."""
    return read_ds01(text, source).users


def export_ds01(result: Ds01Import) -> str:
    """A labkeeper policy and its users written back as a DS01 resource-limits.yaml."""
    policy = result.policy

    def limits(values: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, target in _LIMIT_KEYS.items():
            if values.get(target) is None:
                continue
            value = values[target]
            if key == "max_mig_instances":
                out[key] = None if value >= UNLIMITED_GPU_EQUIVALENTS else (int(value) if value == int(value) else value)
            elif key == "memory":
                out[key] = re.sub(r"([KMGT])i$", lambda m: m.group(1).lower(), str(value))
            elif key == "max_cpus":
                out[key] = int(value) if str(value).isdigit() else value
            else:
                out[key] = value
        return out

    defaults = limits(policy.defaults.model_dump(by_alias=True))
    defaults["priority"] = policy.tiers[policy.default_tier].priority // 1000
    defaults["gpu_hold_after_stop"] = format_duration(policy.gpu_hold_after_stop)
    defaults["container_hold_after_stop"] = format_duration(policy.stopped_retention)
    groups: dict[str, dict[str, Any]] = {}
    for name, tier in policy.tiers.items():
        if name == policy.default_tier:
            continue
        groups[name] = {"members": [u.name for u in result.users if u.spec.tier == name and u.name not in policy.users],
                        **limits(tier.model_dump(by_alias=True)), "priority": tier.priority // 1000}
    overrides = {}
    for name, override in policy.users.items():
        overrides[name] = {**limits(override.model_dump(by_alias=True)),
                           **({"reason": override.reason} if override.reason else {})}
        user = next((u for u in result.users if u.name == name), None)
        if user and user.spec.tier != policy.default_tier:
            groups[user.spec.tier]["members"].append(name)
    return yaml.safe_dump({"defaults": defaults, "groups": groups, "user_overrides": overrides}, sort_keys=False)

