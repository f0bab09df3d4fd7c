"""The four custom resources, defined once: the CRDs in crds/ are generated from these models."""

from __future__ import annotations

import datetime as dt
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    JsonValue,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from labkeeper.api.admission import QUEUE_AHEAD_LISTED
from labkeeper.api.kinds import API_VERSION
from labkeeper.api.names import (
    CACHE_ENV_NAMES,
    CACHE_ENV_RULE_TEXT,
    CACHE_ENV_SUFFIX_PATTERN,
    DNS_LABEL_PATTERN,
    ENV_NAME_PATTERN,
    REFUSED_GROUPS,
    RELATIVE_PATH_PATTERN,
    RESERVED_USERNAMES,
    USERNAME_PATTERN,
    validate_cache_env_name,
    validate_group,
    validate_username,
)
from labkeeper.api.units import DURATION_PATTERN, QUANTITY_PATTERN, parse_duration, parse_quantity


def cel(rule: str, message: str, *, field_path: str | None = None, reason: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def validations(*rules: dict[str, Any]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


class Model(BaseModel):
    """camelCase on the wire, unknown fields refused, both names accepted in Python."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    @model_validator(mode="after")
    def _unique_entries(self) -> Model:
        # the API server enforces x-kubernetes-list-type set/map; this says the same offline
        for name, field in type(self).model_fields.items():
            extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
            list_type = extra.get("x-kubernetes-list-type")
            values = getattr(self, name)
            if not values or list_type not in ("set", "map"):
                continue
            map_keys: list[str] = list(extra.get("x-kubernetes-list-map-keys") or [])  # type: ignore[arg-type]
            keys = [getattr(v, k) for v in values for k in map_keys] \
                if list_type == "map" else list(values)
            seen: set[Any] = set()
            for index, key in enumerate(keys):
                if key in seen:
                    raise ValueError(f"{to_camel(name)}[{index}]: duplicate entry {key!r}")
                seen.add(key)
        return self


class Status(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")


Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32,
                                description="a duration such as 90s, 30m, 1h30m, 24h, 2d")]
# Workspace durations are Go-style (h, m, s) so that CEL's duration() can hold them to a ceiling at apply
GO_DURATION_PATTERN = r"^([0-9]{1,6}(h|m|s))+$"
IDLE_TIMEOUT_CEILING = "168h"
MAX_RUNTIME_CEILING = "720h"
KEEP_ALIVE_CEILING = "168h"


def _within(floor: str, ceiling: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not parse_duration(floor) <= parse_duration(value) <= parse_duration(ceiling):
            raise ValueError(f"{value!r} must be between {floor} and {ceiling} (no tier allows more)")
        return value
    return check


def _positive(value: str | None) -> str | None:
    if value is not None and parse_quantity(value) <= 0:
        raise ValueError(f"{value!r} must be greater than zero")
    return value


def go_duration(ceiling: str, floor: str = "1m", what: str = "") -> Any:
    return Annotated[str, Field(
        pattern=GO_DURATION_PATTERN, max_length=24,
        description=f"{what}a duration in h, m and s such as 30m, 1h30m or 24h; from {floor} to {ceiling}",
        json_schema_extra=validations(
            cel(f"duration(self) >= duration('{floor}') && duration(self) <= duration('{ceiling}')",
                f"must be between {floor} and {ceiling} (no tier allows more)"))),
        AfterValidator(_within(floor, ceiling)),
    ]


def _quantity_text(value: Any) -> Any:
    # YAML reads `cpu: 4` as a number; Kubernetes quantities are int-or-string
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a Kubernetes quantity; e.g. 500m, 4, 16Gi")
    return str(value) if isinstance(value, int | float) else value


Quantity = Annotated[str, BeforeValidator(_quantity_text), Field(pattern=QUANTITY_PATTERN, max_length=32),
                     WithJsonSchema({"x-kubernetes-int-or-string": True,
                                     "anyOf": [{"type": "integer"}, {"type": "string"}],
                                     "pattern": QUANTITY_PATTERN, "maxLength": 32, "minimum": 0,
                                     "description": "a Kubernetes quantity such as 500m, 4, 16Gi"})]
Username = Annotated[str, Field(pattern=USERNAME_PATTERN, max_length=32)]
DnsName = Annotated[str, Field(pattern=DNS_LABEL_PATTERN, max_length=63)]
GroupName = Annotated[str, Field(pattern=USERNAME_PATTERN, max_length=32)]


def _cel_list(names: Iterable[str]) -> str:
    return "[" + ", ".join(f"'{n}'" for n in sorted(names)) + "]"


# an extra host group of a GPUUser: never one that hands out root or the machine
# (Field before the validator: after it, pydantic leaves the pattern out of the JSON schema, so out of the CRD)
HostGroup = Annotated[str, Field(
    pattern=USERNAME_PATTERN, max_length=32,
    json_schema_extra=validations(cel(
        f"!(self in {_cel_list(REFUSED_GROUPS)})",
        "is a privileged or system group on the host (root, sudo, adm, disk, docker, ...); labkeeper never grants it",
        reason="FieldValueForbidden"))), AfterValidator(validate_group)]
GpuProfile = Literal["1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb", "full", "none"]
AllowedProfile = Literal["1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb", "full"]
SshKey = Annotated[str, Field(
    pattern=r"^(ssh-(rsa|ed25519|dss)|ecdsa-sha2-nistp(256|384|521)|sk-(ssh-ed25519|ecdsa-sha2-nistp256)@openssh\.com)"
            r" [A-Za-z0-9+/]+={0,3}( [^\n\r]*)?$",
    max_length=8192, description="an OpenSSH public key line: type, base64 key, optional comment")]

PositiveQuantity = Annotated[str, AfterValidator(_positive)]
POSITIVE_QUANTITY = cel("type(self) == int ? self > 0 : quantity(self).isGreaterThan(quantity('0'))",
                        "must be greater than zero")


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = Field(max_length=64)
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(default="", max_length=128)
    message: str = Field(default="", max_length=4096)
    lastTransitionTime: dt.datetime | None = None
    observedGeneration: int | None = None


# ---- shared pieces -------------------------------------------------------------------------------

class Limits(Model):
    """What a tier or a user may use; every field optional so overrides name only what they change."""

    max_gpu_equivalents: float | None = Field(default=None, ge=0, le=64,
                                              description="weighted GPU equivalents in use at once")
    cpu: Annotated[Quantity | None, AfterValidator(_positive),
                   Field(json_schema_extra=validations(POSITIVE_QUANTITY))] = None
    memory: Annotated[Quantity | None, AfterValidator(_positive),
                      Field(json_schema_extra=validations(POSITIVE_QUANTITY))] = None
    max_workspaces: int | None = Field(default=None, ge=0, le=50, description="running workspaces at once")
    idle_timeout: Duration | None = None
    max_runtime: Duration | None = None
    allowed_profiles: list[AllowedProfile] | None = Field(default=None, max_length=8)
    allowed_images: list[Annotated[str, Field(max_length=256)]] | None = Field(
        default=None, max_length=32, description="glob patterns of images this tier may run; empty: any")


class EnvVar(Model):
    name: Annotated[str, Field(
        pattern=ENV_NAME_PATTERN, max_length=128,
        description="a variable that points a tool at the tree: " + CACHE_ENV_RULE_TEXT,
        json_schema_extra=validations(cel(
            f"self in {_cel_list(CACHE_ENV_NAMES)} || self.matches('{CACHE_ENV_SUFFIX_PATTERN}')",
            "does not point a tool at a cache or a model tree; allowed: " + CACHE_ENV_RULE_TEXT,
            reason="FieldValueForbidden"))), AfterValidator(validate_cache_env_name)]
    value: str = Field(default="", max_length=4096,
                       description="may use $(PATH) for the tree's absolute path on the host")


EnvList = Annotated[list[EnvVar], Field(
    max_length=32, json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})]
PathField = Annotated[str, Field(
    pattern=RELATIVE_PATH_PATTERN, max_length=255,
    description="path relative to the data root, e.g. cache/pip; no leading '/', no '..'",
    json_schema_extra=validations(
        cel("!self.split('/').exists(p, p == '..' || p == '.')", "must not contain '.' or '..' segments"),
        cel("self == oldSelf", "is immutable; create a new object to move a tree"),
    ))]


class Members(Model):
    users: list[Username] = Field(default_factory=list, max_length=256,
                                  json_schema_extra={"x-kubernetes-list-type": "set"})
    groups: list[GroupName] = Field(default_factory=list, max_length=64,
                                    json_schema_extra={"x-kubernetes-list-type": "set"})


class SizeAlerts(Model):
    model_config = ConfigDict(json_schema_extra=validations(
        cel("self.warnPercent < self.criticalPercent", "warnPercent must be below criticalPercent")))
    warn_percent: int = Field(default=80, ge=1, le=100)
    critical_percent: int = Field(default=95, ge=1, le=100)
    size_limit: Quantity | None = Field(default=None, description="alerts are fractions of this size")

    @model_validator(mode="after")
    def _ordered(self) -> SizeAlerts:
        if self.warn_percent >= self.critical_percent:
            raise ValueError(f"warnPercent {self.warn_percent} must be below criticalPercent {self.critical_percent}")
        return self


class NodeState(Status):
    node: str
    state: str = ""
    message: str = ""
    last_sync: dt.datetime | None = None


# ---- GPUUser --------------------------------------------------------------------------------------

class GPUUserSpec(Model):
    model_config = ConfigDict(json_schema_extra=validations(
        cel("!has(oldSelf.uid) || (has(self.uid) && self.uid == oldSelf.uid)",
            "spec.uid is immutable once set", field_path=".uid")))
    display_name: str = Field(default="", max_length=128)
    tier: str = Field(default="student", pattern=DNS_LABEL_PATTERN, max_length=32)
    groups: list[HostGroup] = Field(default_factory=list, max_length=32,
                                    json_schema_extra={"x-kubernetes-list-type": "set"},
                                    description="extra Linux groups; privileged and system groups are refused")
    ssh_keys: list[SshKey] = Field(default_factory=list, max_length=32)
    shell: str = Field(default="/bin/bash", pattern=r"^/[A-Za-z0-9_/.+-]*$", max_length=64,
                       json_schema_extra=validations(cel("!self.contains('..')", "must not contain '..'")))
    limits: Limits = Field(default_factory=Limits, description="overrides of the tier's limits, field by field")
    state: Literal["Active", "Suspended", "Offboarded"] = "Active"
    data_policy: Literal["Keep", "Archive", "Delete"] = Field(default="Keep", description="what offboarding does")
    uid: int | None = Field(default=None, ge=1000, le=2147483647, description="pin a uid (existing accounts)")


class LimitSource(Status):
    value: str
    source: Literal["default", "tier", "override"]


class Usage(Status):
    """Written by the operator within seconds of a pod change; home bytes are per node, in nodes[].homeBytes."""

    gpu_equivalents: float = Field(default=0, description="GPU equivalents of her pods and holds that hold devices")
    workspaces: int = Field(default=0, description="her workspace pods that are not terminating")


class AccountingDay(Status):
    """One workspace's day (UTC): GPU-equivalent-seconds held while active, while idle and after its stop,
    seconds spent waiting for a device, the waits that ended that day and the stops that began it, by reason."""

    date: str = Field(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
    workspace: str
    active_seconds: float | None = None
    idle_seconds: float | None = None
    held_after_stop_seconds: float | None = None
    waiting_seconds: float | None = None
    waits: list[float] = Field(default_factory=list)
    stops: dict[str, int] = Field(default_factory=dict)


class Accounting(Status):
    """Her usage folded up to `through` by the operator; what came after is read from her Workspaces' meters."""

    through: dt.datetime | None = None
    decayed_gpu_hours: float = Field(default=0, description="GPU-equivalent-hours held, each halved every "
                                     "fairShare.halfLife, as of `through`: what the queue weighs")
    days: list[AccountingDay] = Field(default_factory=list)


class UserNodeState(NodeState):
    """One node's account and home of the user, written by that node's agent."""

    home_bytes: int | None = Field(default=None, description="bytes her home takes on this node's data root")


class GPUUserStatus(Status):
    uid: int | None = None
    gid: int | None = None
    namespace: str | None = None
    home: str | None = None
    phase: str | None = None
    kubeconfig_secret: str | None = None
    effective_limits: dict[str, LimitSource] = Field(default_factory=dict)
    incarnation: str | None = Field(default=None, description=(
        "this incarnation of the user: her certificate's group labkeeper:<name>:<incarnation> is what her "
        "bindings name; a new one after offboarding, so an older certificate grants nothing"))
    usage: Usage | None = None
    accounting: Accounting | None = None
    nodes: list[UserNodeState] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None


class Resource(Model):
    """A whole object as `kubectl apply` sends it: apiVersion, kind, metadata, spec, status."""

    api_version: str = Field(default=API_VERSION, alias="apiVersion", pattern=f"^{re.escape(API_VERSION)}$")
    kind: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)
    _refused: str | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _kind(cls, data: Any) -> Any:
        if isinstance(data, dict):
            kind = data.get("kind", cls.__name__)
            if kind != cls.__name__:
                raise ValueError(f"kind {kind!r} is not {cls.__name__}")
            data = {**data, "kind": cls.__name__}
        return data

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str | None:
        namespace = self.metadata.get("namespace")
        return str(namespace) if namespace else None

    @property
    def refused(self) -> str | None:
        """Why its model refuses what the API holds, on a stand-in made by read_object; None on a parsed object."""
        return self._refused

    def reference(self) -> dict[str, Any]:
        """apiVersion, kind and metadata: what an Event or a patch needs to name the object."""
        return {"apiVersion": self.api_version, "kind": self.kind, "metadata": self.metadata}

    def manifest(self) -> dict[str, Any]:
        """The object as YAML/JSON for kubectl or server-side apply: camelCase, no status, no unset fields."""
        return self.model_dump(by_alias=True, mode="json", exclude_none=True, exclude={"status"})


RESERVED_RULE = "[" + ", ".join(f"'{n}'" for n in sorted(RESERVED_USERNAMES)) + "]"


class GPUUser(Resource):
    model_config = ConfigDict(json_schema_extra=validations(
        cel(f"self.metadata.name.matches('{USERNAME_PATTERN}')",
            "metadata.name is the Linux username: a lowercase letter first, then lowercase letters, digits or '-', "
            "at most 32 characters", reason="FieldValueInvalid"),
        cel(f"!(self.metadata.name in {RESERVED_RULE})",
            "metadata.name is a reserved system account name; choose another",
            reason="FieldValueForbidden"),
    ))
    spec: GPUUserSpec = Field(default_factory=GPUUserSpec)
    status: GPUUserStatus | None = None

    @field_validator("metadata")
    @classmethod
    def _username(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        validate_username(metadata.get("name", ""))
        return metadata


# ---- SharedCache / ModelStore -----------------------------------------------------------------------

class Cleanup(Model):
    max_age: Duration | None = Field(default=None, description="remove files not accessed for this long")
    max_size: Quantity | None = Field(default=None, description="remove least recently used files above this")
    schedule: Duration | None = Field(default=None, description="how often to clean, e.g. 24h")


# the API server checks a default against the CEL rules before nested defaults apply, so it is spelled out
DEFAULT_ALERTS: dict[str, JsonValue] = {"warnPercent": 80, "criticalPercent": 95}


class SharedCacheSpec(Model):
    type: Literal["pip", "conda", "uv", "npm", "yarn", "custom"]
    path: PathField
    env: EnvList = Field(default_factory=list)
    writers: Members = Field(default_factory=Members, description="who may write; default: every lab member")
    cleanup: Cleanup | None = None
    alerts: SizeAlerts = Field(default_factory=SizeAlerts, json_schema_extra={"default": DEFAULT_ALERTS})


class LastCleanup(Status):
    time: dt.datetime | None = None
    freed_bytes: int = 0
    removed_files: int = 0
    reason: str = ""
    request: str | None = Field(default=None, description="the clean-requested annotation this cleanup answered")
    node: str | None = Field(default=None, description="status.lastCleanup only: the node that cleaned last")


class TreeNodeState(NodeState):
    """One node's copy of a shared tree; each agent writes only its own entry, the top level is derived from all."""

    size_bytes: int | None = None
    acl_supported: bool | None = Field(default=None,
                                       description="false: no ACL support here, setgid 2775 and umask 002 only")
    disk_alert: Literal["OK", "Warning", "Critical"] | None = Field(
        default=None, description="the worse of the tree against its size limit and the data filesystem")
    disk_message: str | None = None
    last_cleanup: LastCleanup | None = None


class TreeStatus(Status):
    phase: str | None = None
    size_bytes: int | None = Field(default=None, description="the largest size any node measured")
    size: str | None = Field(default=None, description="sizeBytes as a short quantity (12Mi, 1.5Gi) for kubectl get")
    last_cleanup: LastCleanup | None = Field(default=None, description="the most recent cleanup on any node")
    nodes: list[TreeNodeState] = Field(default_factory=list)
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None


class SharedCache(Resource):
    spec: SharedCacheSpec
    status: TreeStatus | None = None


class ModelStoreSpec(Model):
    type: Literal["huggingface", "torch", "comfyui", "flux", "generic"]
    path: PathField
    env: EnvList = Field(default_factory=list)
    writers: Members = Field(default_factory=Members, description="users and groups with rwx")
    readers: Members = Field(default_factory=Members, description="users and groups with r-x; default: every member")
    size_alert: Quantity | None = None


class ModelStore(Resource):
    spec: ModelStoreSpec
    status: TreeStatus | None = None


# ---- Workspace --------------------------------------------------------------------------------------

class GpuRequest(Model):
    model_config = ConfigDict(json_schema_extra=validations(
        cel("self.profile != 'none' || self.count == 1", "count must be 1 when profile is none",
            field_path=".count")))
    profile: GpuProfile = "none"
    count: int = Field(default=1, ge=1, le=8)

    @model_validator(mode="after")
    def _count_needs_a_profile(self) -> GpuRequest:
        if self.profile == "none" and self.count != 1:
            raise ValueError(f"count {self.count} needs a GPU profile; with profile none, count must be 1")
        return self


if TYPE_CHECKING:  # to a type checker each is the string it holds; pydantic sees the pattern and the bounds
    IdleTimeout: TypeAlias = str
    MaxRuntime: TypeAlias = str
    KeepAliveFor: TypeAlias = str
else:
    IdleTimeout = go_duration(IDLE_TIMEOUT_CEILING, what="stop after idling this long, within the user's entitlement; ")
    MaxRuntime = go_duration(MAX_RUNTIME_CEILING, what="stop after running this long in total, within the "
                             "user's entitlement; ")
    KeepAliveFor = go_duration(KEEP_ALIVE_CEILING, what="self-service: count the workspace as active for this long "
                               "after its last activity, capped by the policy's keepAliveMax; ")

BATCH_NEEDS_COMMAND = ("spec.command is required when spec.mode is Batch: the run's command, "
                       "e.g. [python, train.py]")


class WorkspaceSpec(Model):
    model_config = ConfigDict(json_schema_extra=validations(
        cel("!has(self.idleTimeout) || !has(self.maxRuntime) || duration(self.idleTimeout) <= duration(self.maxRuntime)",
            "spec.idleTimeout must not be longer than spec.maxRuntime", field_path=".idleTimeout"),
        cel("!has(self.mode) || self.mode != 'Batch' || (has(self.command) && size(self.command) > 0)",
            BATCH_NEEDS_COMMAND, field_path=".command", reason="FieldValueRequired")))
    mode: Annotated[Literal["Interactive", "Batch"], Field(
        description="Interactive: a workspace that runs until stopped; Batch: a run of spec.command whose pod never "
                    "restarts, that ends Succeeded or Failed with its exit code and frees its device at once",
        json_schema_extra=validations(cel("self == oldSelf", "spec.mode is immutable; create a new Workspace "
                                          "for a run or a workspace"))),
    ] = "Interactive"
    image: str = Field(min_length=1, max_length=512, pattern=r"^[^\s]+$")
    command: list[Annotated[str, Field(max_length=4096)]] = Field(default_factory=list, max_length=64)
    args: list[Annotated[str, Field(max_length=4096)]] = Field(default_factory=list, max_length=256)
    gpu: GpuRequest = Field(default_factory=GpuRequest, json_schema_extra={"default": {"profile": "none", "count": 1}})
    cpu: Annotated[Quantity, AfterValidator(_positive), Field(json_schema_extra=validations(POSITIVE_QUANTITY))] = "1"
    memory: Annotated[Quantity, AfterValidator(_positive),
                      Field(json_schema_extra=validations(POSITIVE_QUANTITY))] = "2Gi"
    state: Literal["Running", "Stopped"] = "Running"
    caches: list[DnsName] | None = Field(default=None, max_length=32, json_schema_extra={"x-kubernetes-list-type": "set"},
                                         description="SharedCaches to mount; absent: all")
    model_stores: list[DnsName] | None = Field(default=None, max_length=32,
                                               json_schema_extra={"x-kubernetes-list-type": "set"},
                                               description="ModelStores to mount; absent: all")
    toolchains: list[DnsName] = Field(default_factory=list, max_length=16,
                                      json_schema_extra={"x-kubernetes-list-type": "set"})
    idle_timeout: IdleTimeout | None = None
    max_runtime: MaxRuntime | None = None
    keep_alive: KeepAliveFor | None = None
    keep_alive_until: dt.datetime | None = Field(
        default=None, description="postpone idle culling until this time; the operator caps it at keepAliveMax")

    @model_validator(mode="after")
    def _idle_within_runtime(self) -> WorkspaceSpec:
        if self.idle_timeout and self.max_runtime and \
                parse_duration(self.idle_timeout) > parse_duration(self.max_runtime):
            raise ValueError(f"idleTimeout {self.idle_timeout} must not be longer than maxRuntime {self.max_runtime}")
        return self

    @model_validator(mode="after")
    def _batch_has_command(self) -> WorkspaceSpec:
        if self.mode == "Batch" and not self.command:
            raise ValueError(BATCH_NEEDS_COMMAND)
        return self


class WorkspaceWarning(Status):
    key: str
    reason: str = ""
    message: str = ""
    at: dt.datetime | None = None
    since: dt.datetime | None = None


class MeterMark(Status):
    state: Literal["waiting", "active", "idle", "held", "off"]
    since: dt.datetime
    gpu_equivalents: float = 0
    until: dt.datetime | None = Field(default=None, description="a hold after stop ends by itself then")
    reason: str | None = Field(default=None, description="the stop that began this state")


class QueuePlace(Status):
    """A waiting workspace's place in the lab's queue for its device, as admission last decided it."""

    position: int = Field(ge=1, description="1: next in line for this kind of device")
    ahead: list[str] = Field(default_factory=list, description=f"user/workspace of the first {QUEUE_AHEAD_LISTED} of "
                             "those ahead, first first (position says how many there are)")
    reason: str = ""
    relative_usage: float | None = Field(default=None, description="her decayed GPU-equivalent-hours divided by her "
                                         "tier's share: within a tier, lower goes first")
    estimated_start: dt.datetime | None = Field(default=None, description="the earliest start the lab can know of")
    estimate_basis: str | None = None


class WorkspaceStatus(Status):
    phase: str | None = None
    reason: str | None = None
    message: str | None = None
    pod_name: str | None = None
    pod_uid: str | None = Field(default=None, alias="podUID")
    node: str | None = None
    devices: list[str] = Field(default_factory=list)
    gpu_equivalents: float | None = None
    runtime_seconds: int | None = None
    running_since: dt.datetime | None = None
    last_seen_running: dt.datetime | None = Field(
        default=None, description="a moment the run was known alive: its start, the last status write while the "
                                  "operator watched it, or where the operator before last recorded its node alive; "
                                  "a run that ended while no operator watched ends at the latest such moment")
    last_activity: dt.datetime | None = None
    activity_reason: str | None = None
    idle_since: dt.datetime | None = None
    idle_deadline: dt.datetime | None = None
    runtime_deadline: dt.datetime | None = None
    stop_reason: str | None = None
    stopped_at: dt.datetime | None = None
    warnings: list[WorkspaceWarning] = Field(default_factory=list)
    waiting_since: dt.datetime | None = Field(default=None, description="when it began to wait for a device; "
                                              "the queue is served in this order within a tier")
    hold_node: str | None = Field(default=None, description="a stopped workspace's devices are held on this node "
                                  "until holdUntil; admission offers them to nobody else")
    hold_resource: str | None = None
    hold_count: int | None = None
    hold_until: dt.datetime | None = None
    keep_alive_until: dt.datetime | None = Field(
        default=None, description="the keep-alive in force: what spec.keepAliveUntil or spec.keepAlive asked, "
                                  "within the policy's keepAliveMax (condition KeepAliveCapped says when it was cut)")
    keep_alive_grant: dict[str, str] | None = Field(
        default=None, description="spec.keepAliveUntil as the operator first saw it and the time granted for it; "
                                  "the cap counts from that moment")
    queue: QueuePlace | None = None
    exit_code: int | None = Field(default=None, description="a Batch run's command exit code, once it has ended")
    finished_at: dt.datetime | None = Field(default=None, description="when a Batch run's command ended; its pod "
                                            "(and so its logs) stays for the policy's stoppedRetention after it")
    meter: list[MeterMark] = Field(default_factory=list, description=(
        "what it did with devices since when: one mark per change, folded into its user's status.accounting"))
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None


class Workspace(Resource):
    model_config = ConfigDict(json_schema_extra=validations(
        cel("self.metadata.name.size() <= 60", "metadata.name must be at most 60 characters (the pod adds 'ws-')",
            ),
    ))
    spec: WorkspaceSpec
    status: WorkspaceStatus | None = None

    @field_validator("metadata")
    @classmethod
    def _short_name(cls, metadata: dict[str, Any]) -> dict[str, Any]:
        if len(str(metadata.get("name", ""))) > 60:
            raise ValueError("metadata.name must be at most 60 characters (the pod adds 'ws-')")
        return metadata


# ---- objects in, status out -------------------------------------------------------------------------

R = TypeVar("R", bound=Resource)
STATUS_MODELS: dict[str, type[Status]] = {"GPUUser": GPUUserStatus, "SharedCache": TreeStatus,
                                          "ModelStore": TreeStatus, "Workspace": WorkspaceStatus}


class InvalidObject(ValueError):
    """An object the API holds that its model refuses: stored before a rule existed, or written around it."""


def _where(loc: Iterable[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _problem(error: Any) -> str:
    text = f"{_where(error['loc']) or 'the object'}: {str(error['msg']).removeprefix('Value error, ')}"
    return text if isinstance(error["input"], dict | list) else f"{text} (got {error['input']!r})"


def parse_object(model: type[R], body: Mapping[str, Any]) -> R:
    """The object as its model; InvalidObject names the object, each refused field, its value and the rule. Spec
    fields the model does not declare are left out, not refused: a newer CRD's, which this version does not act on
    (a manifest a person writes is checked with model_validate, which refuses them)."""
    spec, spec_model = body.get("spec"), model.model_fields["spec"].annotation
    if isinstance(spec, Mapping) and isinstance(spec_model, type) and issubclass(spec_model, BaseModel):
        body = {**body, "spec": declared_only(spec_model, spec)}
    try:
        return model.model_validate(body)
    except ValidationError as err:
        name = (body.get("metadata") or {}).get("name", "?")
        raise InvalidObject(f"{model.__name__} {name}: {'; '.join(map(_problem, err.errors()))}") from err


def read_object(model: type[R], body: Mapping[str, Any]) -> tuple[R, str | None]:
    """The object as its model, and None; or, for one its model refuses (stored before a rule existed), a stand-in
    and why (also its `refused`). A stand-in has the object's metadata, its status where that parses, and the spec's
    defaults with only the spec's required fields as the API holds them (a tree's raw path still claims its
    directory): enough to show it and to say why it is refused, never enough to act on it."""
    try:
        return parse_object(model, body), None
    except InvalidObject as err:
        why = str(err)
    spec_model: Any = model.model_fields["spec"].annotation
    status_model: Any = STATUS_MODELS[model.__name__]
    spec = body.get("spec") or {}
    required = {name: spec.get(field.alias or name) for name, field in spec_model.model_fields.items()
                if field.is_required()}
    try:
        status = status_model.model_validate(body["status"]) if body.get("status") else None
    except ValidationError:
        status = None  # a status no writer of this version made
    fields: dict[str, Any] = {"kind": model.__name__, "metadata": dict(body.get("metadata") or {}),
                              "spec": spec_model.model_construct(**required), "status": status}
    stand_in = typing.cast(R, model.model_construct(**fields))
    stand_in._refused = why
    return stand_in, why


def wire(model: BaseModel) -> dict[str, Any]:
    """A status, or a part of one, as a merge patch: camelCase, JSON types, only the fields that were set."""
    return model.model_dump(by_alias=True, mode="json", exclude_unset=True, exclude_none=True)


def _models_in(annotation: Any) -> list[tuple[str, type[BaseModel]]]:
    """The models a field's type holds, with how they sit in it: "" itself, "[]" in a list, "{}" in a dict."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [("", annotation)]
    if origin is Annotated:
        return _models_in(args[0])
    if origin in (typing.Union, types.UnionType):
        return [found for arg in args for found in _models_in(arg)]
    if origin in (list, tuple) and args:
        return [("[]", m) for shape, m in _models_in(args[0]) if not shape]
    if origin is dict and len(args) == 2:
        return [("{}", m) for shape, m in _models_in(args[1]) if not shape]
    return []


def declared_only(model: type[BaseModel], data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` (camelCase, as the API holds it) without the fields `model` does not declare, at every depth."""
    fields = {(f.alias or n): f for n, f in model.model_fields.items()}
    out: dict[str, Any] = {}
    for key, value in data.items():
        field = fields.get(key)
        if field is None:
            continue
        for shape, inner in _models_in(field.annotation):
            if shape == "" and isinstance(value, Mapping):
                value = declared_only(inner, value)
            elif shape == "[]" and isinstance(value, list):
                value = [declared_only(inner, item) if isinstance(item, Mapping) else item for item in value]
            elif shape == "{}" and isinstance(value, Mapping):
                value = {k: declared_only(inner, item) if isinstance(item, Mapping) else item for k, item in value.items()}
        out[key] = value
    return out


def undeclared_fields(model: type[BaseModel], data: Any, where: str = "") -> list[str]:
    """The fields in `data` (camelCase, as written to the API) that `model` does not declare, as paths.
    Status models keep unknown fields when they read (a newer agent's), so this is what holds a writer to them."""
    if not isinstance(data, Mapping):
        return []
    fields = {(f.alias or n): f for n, f in model.model_fields.items()}
    out = []
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        field = fields.get(key)
        if field is None:
            out.append(path)
            continue
        for shape, inner in _models_in(field.annotation):
            if shape == "" and isinstance(value, Mapping):
                out += undeclared_fields(inner, value, path)
            elif shape == "[]" and isinstance(value, list):
                out += [f for i, item in enumerate(value) for f in undeclared_fields(inner, item, f"{path}[{i}]")]
            elif shape == "{}" and isinstance(value, Mapping):
                out += [f for k, item in value.items() for f in undeclared_fields(inner, item, f"{path}.{k}")]
    return out


def check_status(kind: str, status: Mapping[str, Any]) -> None:
    """ValueError unless every field of this status patch is declared by the kind's status model with a value
    it accepts: what the operator and the agent write is what the CRD and labctl describe."""
    model = STATUS_MODELS[kind]
    undeclared = undeclared_fields(model, status)
    if undeclared:
        raise ValueError(f"{kind} status: {model.__name__} declares no {', '.join(undeclared)}")
    model.model_validate(status)
