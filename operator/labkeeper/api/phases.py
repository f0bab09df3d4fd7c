"""The phases and reasons a Workspace's and a GPUUser's status say, in one place: the operator writes them,
accounting, the agent's notices and labctl read them. Each is a str, so it compares with what the API returns."""

from __future__ import annotations

from enum import StrEnum


class WorkspacePhase(StrEnum):
    PENDING = "Pending"
    STARTING = "Starting"
    RUNNING = "Running"
    IDLE_WARNING = "IdleWarning"
    STOPPING = "Stopping"
    STOPPED = "Stopped"
    PREEMPTED = "Preempted"
    FAILED = "Failed"
    SUCCEEDED = "Succeeded"  # a Batch run's command exited 0


# a workspace in these phases waits for a device or for quota that another pod's deletion may free
WAITING_PHASES = (WorkspacePhase.PENDING, WorkspacePhase.PREEMPTED)
RUNNING_PHASES = (WorkspacePhase.RUNNING, WorkspacePhase.IDLE_WARNING)
ENDED_PHASES = (WorkspacePhase.SUCCEEDED, WorkspacePhase.FAILED)  # of a Batch run


class WorkspaceReason(StrEnum):
    """status.reason of a Workspace (with its Events of the same name where it has one)."""

    USER_NOT_READY = "UserNotReady"
    NOT_ENTITLED = "NotEntitled"
    QUOTA_EXCEEDED = "QuotaExceeded"
    WAITING_FOR_DEVICE = "WaitingForDevice"
    PREEMPTED_BY_SCHEDULER = "PreemptedByScheduler"
    POD_CREATED = "PodCreated"
    POD_REJECTED = "PodRejected"
    POD_TERMINATING = "PodTerminating"
    POD_RUNNING = "PodRunning"
    SCHEDULING = "Scheduling"
    UNSCHEDULABLE = "Unschedulable"
    CONTAINER_CREATING = "ContainerCreating"
    CONTAINER_EXITED = "ContainerExited"
    IDLE_WARNING = "IdleWarning"
    IDLE = "Idle"  # culled: idle past its deadline
    MAX_RUNTIME = "MaxRuntime"
    STOPPED = "Stopped"  # spec.state Stopped
    USER_SUSPENDED = "UserSuspended"
    HOLD_LOST = "HoldLost"


class WorkspaceEvent(StrEnum):
    """Reasons of the Events the operator posts on a Workspace (beside the phases it enters)."""

    PREEMPTED = "Preempted"
    QUOTA_EXCEEDED = "QuotaExceeded"
    WAITING = "Waiting"
    STARTING = "Starting"
    STOPPING = "Stopping"
    HOLD_RELEASED = "HoldReleased"
    HOLD_LOST = "HoldLost"
    TREE_LEFT_OUT = "TreeLeftOut"
    UNKNOWN_TOOLCHAIN = "UnknownToolchain"
    CULLED = "Culled"
    MAX_RUNTIME = "MaxRuntime"


class UserPhase(StrEnum):
    READY = "Ready"
    PROVISIONING = "Provisioning"
    SUSPENDED = "Suspended"
    OFFBOARDED = "Offboarded"
    FAILED = "Failed"


class UserState(StrEnum):
    """spec.state of a GPUUser."""

    ACTIVE = "Active"
    SUSPENDED = "Suspended"
    OFFBOARDED = "Offboarded"


class UserReason(StrEnum):
    UNKNOWN_TIER = "UnknownTier"
    UID_UNAVAILABLE = "UidUnavailable"
    WAITING = "Waiting"
