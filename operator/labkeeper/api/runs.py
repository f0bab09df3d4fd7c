"""How a Batch run ended, a pure function of its pod: the operator writes it into the Workspace's status
(phase Succeeded or Failed, reason, exitCode, finishedAt) and labctl run exits with the same code."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from labkeeper.api.phases import ENDED_PHASES as ENDED_PHASES
from labkeeper.api.units import parse_time

BATCH = "Batch"
CONTAINER = "workspace"
# what the runtime says about a command it killed, in the words a person reads
KILLED = {"OOMKilled": "killed for running out of memory (its memory limit)",
          "DeadlineExceeded": "stopped at the pod's deadline", "Evicted": "evicted by the node",
          "ContainerCannotRun": "could not be started"}


def is_batch(ws: dict[str, Any]) -> bool:
    return ((ws.get("spec") or {}).get("mode") or "Interactive") == BATCH


@dataclass(frozen=True)
class RunEnd:
    phase: str  # Succeeded | Failed
    reason: str  # Completed, Error, OOMKilled, ... (the container's words), or the pod's when it has none
    exit_code: int | None
    message: str
    finished_at: dt.datetime | None


def run_end(pod: dict[str, Any] | None) -> RunEnd | None:
    """The end of the run whose pod this is; None while its command has not ended (a pod whose phase is not
    Succeeded or Failed still holds its devices, so the run is not over for the lab either)."""
    status = (pod or {}).get("status") or {}
    phase = status.get("phase")
    if phase not in ENDED_PHASES:
        return None
    containers = status.get("containerStatuses") or []
    container = next((c for c in containers if c.get("name") == CONTAINER), containers[0] if containers else {})
    terminated = (container.get("state") or {}).get("terminated") or \
        (container.get("lastState") or {}).get("terminated") or {}
    code = terminated.get("exitCode")
    code = int(code) if code is not None else None
    finished = parse_time(terminated.get("finishedAt"))
    succeeded = phase == "Succeeded" and code in (0, None)
    if code is None:
        # no container said how it ended: the pod itself did (evicted, deadline, node gone)
        reason = status.get("reason") or ("Completed" if succeeded else "PodFailed")
        detail = status.get("message") or KILLED.get(reason) or f"its pod ended {phase}"
        return RunEnd(phase if succeeded else "Failed", reason, None, f"the command ended without an exit code: {detail}",
                      finished)
    reason = terminated.get("reason") or ("Completed" if code == 0 else "Error")
    if phase == "Failed" and code == 0:
        reason = status.get("reason") or "PodFailed"  # the command was fine; its pod was not
    if succeeded:
        message = "the command completed with exit code 0"
    elif code == 0:
        message = f"the command exited with code 0 but its pod failed: {status.get('message') or reason}"
    elif reason in KILLED:
        message = f"the command was {KILLED[reason]}: exit code {code}"
    else:
        message = f"the command exited with code {code}"
    if terminated.get("message"):
        message += f" ({terminated['message'].strip()[:512]})"
    return RunEnd("Succeeded" if succeeded else "Failed", reason, code, message, finished)
