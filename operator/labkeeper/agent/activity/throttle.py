"""When a verdict is worth an API write: on a change, and at most once per report interval while active."""

from __future__ import annotations

import datetime as dt

from labkeeper.agent.activity.model import Verdict, WorkspaceKey
from labkeeper.api.resources import WorkspaceStatus


class PublishThrottle:
    """Turns verdicts into Workspace status patches (`lastActivity`, `activityReason`), or None.

    A verdict counts as changed when it flips between active and idle, or when an idle verdict says
    something new (cpu measured at last, a process now holding GPU memory); new numbers in the same
    idle verdict ("gpu idle 27m" becoming "gpu idle 28m") are not a change, so the reason recorded
    when a workspace is culled says what the agent last saw, at the cost of a write per new gist. The first publication
    for a workspace after the agent starts sets lastActivity to that moment, so an agent restart
    restarts the idle clocks (DESIGN, Lifecycle) instead of culling on stale readings.
    """

    def __init__(self, report_interval: dt.timedelta) -> None:
        self.report_interval = report_interval
        self._published: dict[WorkspaceKey, tuple[bool, str, dt.datetime]] = {}
        self._last_active: dict[WorkspaceKey, dt.datetime] = {}

    def decide(self, key: WorkspaceKey, verdict: Verdict, now: dt.datetime) -> WorkspaceStatus | None:
        if verdict.active:
            self._last_active[key] = now
        previous = self._published.get(key)
        if previous is not None:
            was_active, gist, at = previous
            if verdict.active and was_active and now - at < self.report_interval:
                return None
            if not verdict.active and not was_active and verdict.gist == gist:
                return None
        self._published[key] = (verdict.active, verdict.gist, now)
        last_active = self._last_active.get(key, now if previous is None else None)
        if last_active is None:
            return WorkspaceStatus(activity_reason=verdict.reason)
        return WorkspaceStatus(activity_reason=verdict.reason, last_activity=last_active.astimezone(dt.UTC).replace(microsecond=0))

    def retain(self, keys: set[WorkspaceKey]) -> None:
        """Forget workspaces no longer watched, so a restarted one publishes afresh."""
        for memory in (self._published, self._last_active):
            for key in set(memory) - keys:
                del memory[key]
