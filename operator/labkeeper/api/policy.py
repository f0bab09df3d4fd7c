"""The lab policy: defaults, tiers and per-user overrides merged field by field, GPU weights,
durations, warning points and activity thresholds. Lives in the ConfigMap `labkeeper-policy`."""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import threading
from collections.abc import Iterator, Sequence
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from labkeeper.api.names import (
    DNS_LABEL_PATTERN,
    GPU_PROFILES,
    LABEL_MANAGED,
    MANAGED_BY,
    RELATIVE_PATH_PATTERN,
    SYSTEM_NAMESPACE,
    validate_username,
)
from labkeeper.api.resources import KEEP_ALIVE_CEILING, Limits
from labkeeper.api.units import (
    DURATION_PATTERN,
    format_duration,
    parse_cpu,
    parse_duration,
    parse_memory,
    parse_quantity,
)

__all__ = [
    "LAST_GOOD_CONFIGMAP", "LIMIT_FIELDS", "POLICY_CONFIGMAP", "POLICY_KEY", "Activity", "LabPolicy", "LimitValue", "PolicyError",
    "PolicyKeeper", "PolicyOutcome", "Tier",
    "Toolchain",
    "effective_limits", "gpu_equivalents", "last_good_configmap", "load_policy", "not_entitled", "parse_cpu", "parse_duration", "parse_memory",
    "parse_quantity", "policy_configmap",
]

LIMIT_FIELDS = tuple(Limits.model_fields)
POLICY_CONFIGMAP = "labkeeper-policy"
POLICY_KEY = "policy.yaml"
# the operator's copy of the last text it put in force: what a process that starts while the ConfigMap is refused
# runs on (operator and agent alike), so a restart never falls back to the built-in defaults
LAST_GOOD_CONFIGMAP = "labkeeper-policy-last-good"


class _Policy(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


def _duration(value: Any) -> dt.timedelta:
    if isinstance(value, dt.timedelta):
        return value
    return parse_duration(str(value))


# a timedelta in Python, a string such as 15m in YAML and in the JSON schema
Duration = Annotated[
    dt.timedelta,
    BeforeValidator(_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "description": "a duration such as 30s, 15m, 24h"}),
]


class FullLimits(Limits):
    """The defaults: every limit has a value, so a merge always ends complete."""

    max_gpu_equivalents: float = Field(default=2, ge=0, le=64)
    cpu: str = "32"
    memory: str = "32Gi"
    max_workspaces: int = Field(default=3, ge=0, le=50)
    idle_timeout: str = "30m"
    max_runtime: str = "24h"
    allowed_profiles: list[Literal["1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb", "full"]] = Field(
        default_factory=lambda: list(GPU_PROFILES))  # type: ignore[arg-type]  # GPU_PROFILES are these names
    allowed_images: list[str] = Field(default_factory=list)


class Tier(Limits):
    """A tier: the limits it changes from the defaults, its PriorityClass value and whether it may preempt.

    Limits may be written flat on the tier or under `limits:`; both read the same. The tier's PriorityClass
    is always labkeeper-<tier>, made by labkeeper from `priority` and `preempt`: the user's namespace may
    run pods of that class only, so there is no name to choose."""

    priority: int = Field(default=10000, ge=0, le=1000000000)
    preempt: bool = False
    share: float | None = Field(default=None, gt=0, le=1000, description=(
        "fair-share weight of each user of this tier: her decayed usage is divided by it before the queue compares "
        "users of one priority; unset, the tier's maxGpuEquivalents (what she may hold at once)"))

    @model_validator(mode="before")
    @classmethod
    def _nested_limits(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "limits" not in data:
            return data
        data = dict(data)
        nested = data.pop("limits") or {}
        if not isinstance(nested, dict):
            raise ValueError(f"limits must be a mapping of limit fields, not {nested!r}")
        both = sorted(set(nested) & set(data))
        if both:
            raise ValueError(f"{', '.join(both)} set both on the tier and under its limits; keep one")
        return {**data, **nested}

    @property
    def limits(self) -> Limits:
        return Limits.model_validate(self.model_dump(include=set(LIMIT_FIELDS)))


class UserOverride(Limits):
    """One person's limits in the policy's users section; `reason` records why (DS01 kept one too)."""

    reason: str | None = Field(default=None, max_length=512)


class Warnings(_Policy):
    idle: list[float] = Field(default_factory=lambda: [0.8, 0.95], max_length=8)
    runtime: list[float] = Field(default_factory=lambda: [0.75, 0.9], max_length=8)

    @field_validator("idle", "runtime")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        for fraction in value:
            if not 0 < fraction < 1:
                raise ValueError(f"warning point {fraction} must be a fraction between 0 and 1 (e.g. 0.8)")
        return sorted(value)


class Activity(_Policy):
    """What counts as activity in one sample interval."""

    gpu_util_percent: float = Field(default=5, ge=0, le=100)
    cpu_cores: float = Field(default=0.1, ge=0)
    network_bytes_per_interval: int = Field(default=1_000_000, ge=0)
    count_gpu_memory_as_active: bool = False
    sample_interval: Duration = dt.timedelta(seconds=30)
    report_interval: Duration = dt.timedelta(seconds=60)
    check_interval: Duration = dt.timedelta(seconds=30)


class FairShare(_Policy):
    """How the queue weighs past use: decayed GPU-equivalent-hours, halved every `halfLife`."""

    half_life: Duration = Field(default=dt.timedelta(hours=24), description="a GPU-hour this long ago counts half")
    flush_interval: Duration = Field(default=dt.timedelta(minutes=5), description=(
        "how often each user's accounting is folded into her GPUUser status (one write per user per interval)"))

    @field_validator("half_life", "flush_interval")
    @classmethod
    def _positive(cls, value: dt.timedelta) -> dt.timedelta:
        if value.total_seconds() < 1:
            raise ValueError("must be at least 1s")
        return value


class UidRange(_Policy):
    start: int = Field(default=20000, ge=1000)
    end: int = Field(default=29999, le=2147483647)

    @model_validator(mode="after")
    def _ordered(self) -> UidRange:
        if self.end < self.start:
            raise ValueError(f"uidRange.end {self.end} is below uidRange.start {self.start}")
        return self


TOOLCHAIN_SOURCES = ("url", "file", "pypi")
# a requirement such as uv==0.5.11: never an option (no leading '-') and never a path or URL
PYPI_SPEC_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?((==|~=|>=|<=|!=|>|<)[A-Za-z0-9.*+!_-]+)?$"


class Toolchain(_Policy):
    """A tool the agent installs once into `<dataRoot>/apps/<name>-<version>` and puts on PATH for SSH users."""

    name: str = Field(pattern=DNS_LABEL_PATTERN, max_length=63, description="what Workspaces name in spec.toolchains")
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")
    url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$", max_length=2048)
    file: str | None = Field(default=None, pattern=r"^/[^\x00\n]*$", max_length=1024,
                             description="absolute path of the installer on the node")
    pypi: str | None = Field(default=None, pattern=PYPI_SPEC_PATTERN, max_length=256,
                             description='a package spec such as "uv==0.5.11"; installed with kind wheel')
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$", description="checked before anything runs")
    kind: Literal["installer-script", "archive", "wheel"]
    bin: list[Annotated[str, Field(pattern=RELATIVE_PATH_PATTERN, max_length=255)]] = Field(
        default_factory=lambda: ["bin"], max_length=8, description="directories under the prefix to put on PATH")
    timeout: Duration = Field(default=dt.timedelta(minutes=15), description="the installer is killed after this long")

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        if isinstance(value, float):
            raise ValueError(f"{value!r} was read as a number; quote it in YAML (version: \"24.11\") so no digit is lost")
        return str(value) if isinstance(value, int) else value

    @model_validator(mode="after")
    def _one_source(self) -> Toolchain:
        given = [s for s in TOOLCHAIN_SOURCES if getattr(self, s) is not None]
        if len(given) != 1:
            raise ValueError(f"toolchain {self.name!r}: set exactly one of url, file, pypi (got "
                             f"{', '.join(given) or 'none'})")
        if self.pypi is not None and self.kind != "wheel":
            raise ValueError(f"toolchain {self.name!r}: kind: a pypi source is installed as kind wheel, not {self.kind}")
        if self.file is not None and any(p in {".", ".."} for p in self.file.split("/")):
            raise ValueError(f"toolchain {self.name!r}: file {self.file!r} must not contain '.' or '..' segments")
        if any(".." in b.split("/") for b in self.bin):
            raise ValueError(f"toolchain {self.name!r}: bin entries must stay inside the prefix")
        return self

    @property
    def source(self) -> tuple[str, str]:
        """("url" | "file" | "pypi", value)."""
        return next((s, getattr(self, s)) for s in TOOLCHAIN_SOURCES if getattr(self, s) is not None)


def _fraction(value: Any) -> Any:
    """gpuWeights may be written as fractions of a GPU: "1/7" is exact where 0.143 is not."""
    if isinstance(value, str) and "/" in value:
        numerator, _, denominator = value.partition("/")
        try:
            return float(numerator) / float(denominator)
        except (ValueError, ZeroDivisionError) as err:
            raise ValueError(f"{value!r} is not a fraction such as 1/7") from err
    return value


Weight = Annotated[float, BeforeValidator(_fraction),
                   WithJsonSchema({"anyOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": 8},
                                             {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?/[0-9]+(\.[0-9]+)?$"}],
                                   "description": "GPU equivalents of one device: a number or a fraction such as 1/7"})]


class LimitValue(NamedTuple):
    value: Any
    source: Literal["default", "tier", "override"]


DEFAULT_TIERS = {
    "student": Tier(priority=10000, preempt=False),
    "researcher": Tier(max_gpu_equivalents=4, cpu="48", memory="64Gi", max_workspaces=5, idle_timeout="1h",
                       max_runtime="48h", priority=20000, preempt=False),
    "faculty": Tier(max_gpu_equivalents=4, cpu="64", memory="128Gi", max_workspaces=5, idle_timeout="2h",
                    max_runtime="72h", priority=30000, preempt=True),
}
DEFAULT_WEIGHTS = {"1g.10gb": 1 / 7, "1g.20gb": 1 / 7, "2g.20gb": 2 / 7, "3g.40gb": 3 / 7, "4g.40gb": 4 / 7,
                   "7g.80gb": 1.0, "full": 1.0}


class LabPolicy(_Policy):
    defaults: FullLimits = Field(default_factory=FullLimits)
    tiers: dict[str, Tier] = Field(default_factory=lambda: {k: v.model_copy() for k, v in DEFAULT_TIERS.items()})
    users: dict[str, UserOverride] = Field(default_factory=dict, description="per-user overrides, merged field by field")
    default_tier: str = "student"
    gpu_weights: dict[str, Weight] = Field(default_factory=lambda: dict(DEFAULT_WEIGHTS),
                                          json_schema_extra={"propertyNames": {"enum": list(GPU_PROFILES)}})
    hold_priority: int = Field(default=100000, ge=0, le=1000000000,
                               description="PriorityClass value of a GPU held after stop; above every tier")
    gpu_hold_after_stop: Duration = dt.timedelta(minutes=15)
    stopped_retention: Duration = dt.timedelta(minutes=30)
    keep_alive_max: Duration = dt.timedelta(hours=24)
    termination_grace_period: Duration = dt.timedelta(seconds=60)
    warnings: Warnings = Field(default_factory=Warnings)
    activity: Activity = Field(default_factory=Activity)
    fair_share: FairShare = Field(default_factory=FairShare)
    runtime_class_name: str = Field(default="nvidia", max_length=63)
    uid_range: UidRange = Field(default_factory=UidRange)
    lab_users_gid: int = Field(default=2000, ge=100, le=2147483647)
    toolchains: list[Toolchain] = Field(default_factory=list, max_length=32,
                                        description="tools installed on each node's data root for SSH users")

    @field_validator("gpu_weights")
    @classmethod
    def _weights(cls, value: dict[str, float]) -> dict[str, float]:
        for profile, weight in value.items():
            if profile not in GPU_PROFILES:
                raise ValueError(f"gpuWeights has unknown profile {profile!r}; valid: {', '.join(GPU_PROFILES)}")
            if not 0 < weight <= 8:
                raise ValueError(f"gpuWeights.{profile} = {weight} must be above 0 and at most 8")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> LabPolicy:
        if self.default_tier not in self.tiers:
            raise ValueError(f"defaultTier {self.default_tier!r} is not one of the tiers: {', '.join(self.tiers)}")
        for name, tier in self.tiers.items():
            if self.hold_priority <= tier.priority:
                raise ValueError(f"holdPriority {self.hold_priority} must be above tier {name!r}'s priority "
                                 f"{tier.priority}, so a held GPU is never preempted")
        if self.uid_range.start <= self.lab_users_gid <= self.uid_range.end:
            raise ValueError(f"labUsersGid {self.lab_users_gid} lies inside uidRange {self.uid_range.start}-"
                             f"{self.uid_range.end}, where users' private groups are allocated; move one of them")
        if self.keep_alive_max > parse_duration(KEEP_ALIVE_CEILING):
            raise ValueError(f"keepAliveMax {format_duration(self.keep_alive_max)} is above the Workspace CRD's "
                             f"ceiling of {KEEP_ALIVE_CEILING}")
        for name in self.users:
            validate_username(name)
        names = [t.name for t in self.toolchains]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"toolchains: {', '.join(twice)} listed more than once; keep one version per name")
        self._check_limits("defaults", self.defaults)
        for name, tier in self.tiers.items():
            self._check_limits(f"tiers.{name}", tier)
        for name, override in self.users.items():
            self._check_limits(f"users.{name}", override)
        return self

    @staticmethod
    def _check_limits(where: str, limits: Limits) -> None:
        for field, parse in (("cpu", parse_cpu), ("memory", parse_memory),
                             ("idle_timeout", parse_duration), ("max_runtime", parse_duration)):
            value = getattr(limits, field)
            if value is not None:
                try:
                    parse(value)
                except ValueError as err:
                    raise ValueError(f"{where}.{to_camel(field)}: {err}") from err

    # ---- queries -------------------------------------------------------------------------------
    def share(self, tier: str | None) -> float:
        """A user's fair-share weight: the tier's `share`, else the maxGpuEquivalents she may hold at once."""
        spec = self.tiers.get(tier or self.default_tier)
        if spec is None:
            return 1.0
        if spec.share is not None:
            return spec.share
        cap = spec.max_gpu_equivalents if spec.max_gpu_equivalents is not None else self.defaults.max_gpu_equivalents
        return cap if cap > 0 else 1.0

    @property
    def termination_grace(self) -> dt.timedelta:
        return self.termination_grace_period

    @property
    def sample_interval(self) -> dt.timedelta:
        return self.activity.sample_interval

    @property
    def report_interval(self) -> dt.timedelta:
        return self.activity.report_interval

    @property
    def check_interval(self) -> dt.timedelta:
        return self.activity.check_interval

    def effective_limits(self, username: str, tier: str | None = None,
                         user_overrides: Limits | dict[str, Any] | None = None) -> dict[str, LimitValue]:
        """Each limit with where it came from: the user's own overrides (GPUUser spec.limits, then the
        policy's users section), the tier, or the defaults — merged field by field, never replaced whole."""
        tier_name = tier or self.default_tier
        tier_limits = self.tiers.get(tier_name)
        overrides: list[Limits | None] = [self.users.get(username)]
        if isinstance(user_overrides, dict):
            user_overrides = Limits.model_validate(user_overrides)
        overrides.insert(0, user_overrides)
        result: dict[str, LimitValue] = {}
        for field in LIMIT_FIELDS:
            camel = to_camel(field)
            chosen = None
            for override in overrides:
                if override is not None and getattr(override, field) is not None:
                    chosen = LimitValue(getattr(override, field), "override")
                    break
            if chosen is None and tier_limits is not None and getattr(tier_limits, field) is not None:
                chosen = LimitValue(getattr(tier_limits, field), "tier")
            if chosen is None:
                chosen = LimitValue(getattr(self.defaults, field), "default")
            result[camel] = chosen
        return result

    def to_yaml_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json", exclude_none=True)


def gpu_equivalents(profile: str, count: int, policy: LabPolicy) -> float:
    if profile == "none":
        return 0.0
    return policy.gpu_weights.get(profile, 1.0) * count


def not_entitled(spec: dict[str, Any], *, tier: str, cpu: str, memory: str, allowed_profiles: Sequence[str],
                 allowed_images: Sequence[str] = ()) -> str | None:
    """Why a Workspace spec asks for more than the user's tier allows, or None. The operator's NotEntitled
    status and labctl's refusal before it applies anything both say exactly this."""
    gpu = spec.get("gpu") or {}
    profile = gpu.get("profile") or "none"
    if profile != "none" and profile not in allowed_profiles:
        return (f"spec.gpu.profile {profile!r} is not allowed for tier {tier}; "
                f"allowed: {', '.join(allowed_profiles) or 'none'}")
    image = spec.get("image", "")
    patterns = [p for p in allowed_images if p]
    if patterns and not any(fnmatch.fnmatch(image, p) for p in patterns):
        return f"spec.image {image!r} is not allowed for tier {tier}; allowed: {', '.join(patterns)}"
    for field, limit, parse in (("cpu", cpu, parse_cpu), ("memory", memory, parse_memory)):
        value = spec.get(field)
        if value is not None and parse(str(value)) > parse(str(limit)):
            return f"spec.{field} {value} exceeds the tier {tier} limit of {limit}"
    return None


def effective_limits(policy: LabPolicy, username: str, tier: str | None = None,
                     user_overrides: Limits | dict[str, Any] | None = None) -> dict[str, LimitValue]:
    """Module-level spelling of `LabPolicy.effective_limits`."""
    return policy.effective_limits(username, tier, user_overrides)


class PolicyError(ValueError):
    """A policy that cannot be used; the message names the source, each field, its value and what is valid."""


def describe_errors(err: ValidationError, limit: int = 10) -> list[str]:
    lines = []
    for problem in err.errors()[:limit]:
        where = ".".join(str(p) for p in problem["loc"]) or "(top level)"
        value = problem.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"{message}{shown}" if where == "(top level)" else f"{where}: {message}{shown}")
    return lines


DEFAULT_SOURCE = f"ConfigMap labkeeper-system/{POLICY_CONFIGMAP} key {POLICY_KEY}"


def load_policy(text: str, source: str = DEFAULT_SOURCE) -> LabPolicy:
    """The policy in a ConfigMap's `policy.yaml`; an empty text is the built-in DS01 defaults."""
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as err:
        raise PolicyError(f"{source} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise PolicyError(f"{source} must be a mapping of policy fields, not {type(data).__name__}")
    try:
        return LabPolicy.model_validate(data)
    except ValidationError as err:
        raise PolicyError(f"{source} is invalid: " + "; ".join(describe_errors(err))) from err


class PolicyOutcome(NamedTuple):
    """What one offered text did: `changed` when the policy in force is now a different one (everything
    evaluated under the old one, waiting Workspaces above all, needs another look); `reason`, `message` and
    `warning` are what to say on the ConfigMap, or reason None when there is nothing new to say."""

    changed: bool
    reason: str | None = None
    message: str = ""
    warning: bool = False


class PolicyKeeper:
    """The one rule by which the operator and the agent take the lab policy from its ConfigMap.

    A text the models accept replaces the policy in force whole; a text they refuse never half-applies: the
    last good policy stays in force (the built-in defaults until a good one has been read), the refusal is
    said once per text, and the next valid text is taken the moment it is offered. A missing ConfigMap or
    key changes nothing. The counters are what `collect()` exposes to Prometheus."""

    def __init__(self, component: str = "labkeeper") -> None:
        self.component = component
        self._lock = threading.Lock()
        self.current = LabPolicy()
        self.generation = 0  # policies put in force by this process; 0 is the built-in defaults
        self.rejected_total = 0
        self.refused: str | None = None  # why the ConfigMap's text is not in force, while it is not
        self._offered: str | None = None  # digest of the text last offered

    def offer(self, text: str | None, source: str = DEFAULT_SOURCE) -> PolicyOutcome:
        if text is None:
            return PolicyOutcome(False)
        digest = hashlib.sha256(text.encode()).hexdigest()
        with self._lock:
            if digest == self._offered:
                return PolicyOutcome(False)
            self._offered = digest
            try:
                policy = load_policy(text, source)
            except PolicyError as err:
                refused = str(err)
            except Exception as err:  # a validator's own bug must not take the process down either
                refused = f"{source} cannot be read: {type(err).__name__}: {err}"
            else:
                was_refused, self.refused = self.refused, None
                if self.generation and policy == self.current:
                    return PolicyOutcome(False, "PolicyApplied", f"{source} is valid again; the policy in force "
                                         "is unchanged") if was_refused else PolicyOutcome(False)
                self.current = policy
                self.generation += 1
                return PolicyOutcome(True, "PolicyApplied", f"lab policy from {source} is in force "
                                     f"(generation {self.generation} in {self.component})")
            self.rejected_total += 1
            self.refused = refused
            kept = f"generation {self.generation}" if self.generation else "the built-in defaults"
            return PolicyOutcome(False, "InvalidPolicy", f"{refused}; the last good policy ({kept}) stays "
                                 "in force until the ConfigMap is fixed", warning=True)

    @property
    def paused(self) -> bool:
        """True while the ConfigMap is refused and no good policy has been read by this process: the built-in
        defaults in force then are a guess, not the lab's policy, and nothing should be applied to a host on it."""
        return self.generation == 0 and self.refused is not None

    def recover(self, text: str | None, source: str) -> PolicyOutcome:
        """Puts the last good copy `text` in force, but only while the ConfigMap's own text is refused and this
        process has no good policy yet (it started on a broken ConfigMap). Leaves the refusal standing, so the
        next valid ConfigMap text is still taken the moment it is offered."""
        if text is None:
            return PolicyOutcome(False)
        with self._lock:
            if not self.paused:
                return PolicyOutcome(False)
            try:
                policy = load_policy(text, source)
            except Exception as err:  # a broken copy changes nothing: the process stays paused
                return PolicyOutcome(False, "InvalidPolicy", f"{self.refused}; the last good copy in {source} "
                                     f"cannot be used either ({err})", warning=True)
            self.current = policy
            self.generation += 1
            return PolicyOutcome(True, "PolicyRecovered", f"{self.refused}; the last good policy, kept in {source}, "
                                 f"is in force (generation {self.generation} in {self.component}) until the "
                                 "ConfigMap is fixed", warning=True)

    def collect(self) -> Iterator[Any]:
        """A Prometheus collector: register the keeper with a registry to expose these."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield CounterMetricFamily("labkeeper_policy_rejected", "policy texts refused by the models; the last good "
                                  "policy stayed in force", value=self.rejected_total)
        yield GaugeMetricFamily("labkeeper_policy_generation", "policies put in force since this process started "
                                "(0: the built-in defaults)", value=self.generation)
        yield GaugeMetricFamily("labkeeper_policy_paused", "1 while no good policy has been read (the ConfigMap is "
                                "refused and there is no last good copy): the agent changes no host", value=int(self.paused))
        yield GaugeMetricFamily("labkeeper_policy_refused", "1 while the policy ConfigMap's text is refused and "
                                "the last good policy holds", value=1 if self.refused else 0)


def last_good_configmap(text: str, namespace: str) -> dict[str, Any]:
    """The operator's copy of the policy text it last put in force (see LAST_GOOD_CONFIGMAP)."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": LAST_GOOD_CONFIGMAP, "namespace": namespace,
                         "labels": {LABEL_MANAGED: MANAGED_BY},
                         "annotations": {"labkeeper.io/about": f"the last {POLICY_CONFIGMAP} text labkeeper put in "
                                         "force; used only while that ConfigMap is refused at a start"}},
            "data": {POLICY_KEY: text}}


def policy_configmap(policy: LabPolicy, namespace: str = SYSTEM_NAMESPACE) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": POLICY_CONFIGMAP, "namespace": namespace},
            "data": {POLICY_KEY: yaml.safe_dump(policy.to_yaml_dict(), sort_keys=False)}}
