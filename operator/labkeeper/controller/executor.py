"""The operator's pass threads, serving what a person waits on first.

Every pass runs its API calls on one pool of threads (asyncio.to_thread). With a plain pool they are served in the
order asked, so in a department-sized lab a Workspace just applied waited behind every re-pass the lab's own
decisions had queued (waiters woken, queue places moved, usage passes): at 1500 applied, 659 had not been looked at
330 s later. Here a call made while `URGENT` is set in its context (controller/main.py sets it for a Workspace
whose status lags what was asked of it) goes before every call that is not, in the order asked among each."""

from __future__ import annotations

import concurrent.futures
import contextvars
import heapq
import itertools
import queue
from typing import Any

URGENT: contextvars.ContextVar[bool] = contextvars.ContextVar("labkeeper_urgent", default=False)


class _UrgentFirst(queue.Queue):  # type: ignore[type-arg]
    """The pool's work queue: a heap of (not urgent, order asked, work). put() runs in the asking thread, in the
    asking task's context, which is where URGENT is read."""

    def _init(self, maxsize: int) -> None:
        self.queue: list[tuple[bool, int, Any]] = []
        self._order = itertools.count()

    def _qsize(self) -> int:
        return len(self.queue)

    def _put(self, item: Any) -> None:
        heapq.heappush(self.queue, (not URGENT.get(), next(self._order), item))

    def _get(self) -> Any:
        return heapq.heappop(self.queue)[2]


class UrgentFirstExecutor(concurrent.futures.ThreadPoolExecutor):
    def __init__(self, max_workers: int, thread_name_prefix: str = "") -> None:
        super().__init__(max_workers, thread_name_prefix=thread_name_prefix)
        # ThreadPoolExecutor's workers, shutdown and exit hook use only put, get(block=True) and get_nowait
        self._work_queue = _UrgentFirst()  # type: ignore[assignment]
