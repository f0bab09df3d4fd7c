"""The pass threads serve a call made in an urgent context (a Workspace whose status lags what was asked of it)
before every other call waiting, and in the order asked within each kind. No API server."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from labkeeper.controller.executor import URGENT, UrgentFirstExecutor
from labkeeper.controller.workspaces import lags


def test_urgent_calls_go_before_those_asked_earlier_and_each_kind_keeps_its_order():
    pool = UrgentFirstExecutor(1)
    gate = threading.Event()
    ran: list[str] = []
    try:
        pool.submit(gate.wait)  # the one thread is busy while the rest queue
        futures = []
        for name, urgent in [("re-pass 1", False), ("re-pass 2", False), ("first look 1", True),
                             ("re-pass 3", False), ("first look 2", True)]:
            context = contextvars.copy_context()
            context.run(URGENT.set, urgent)
            futures.append(context.run(pool.submit, ran.append, name))
        gate.set()
        for future in futures:
            future.result(timeout=10)
    finally:
        pool.shutdown()
    assert ran == ["first look 1", "first look 2", "re-pass 1", "re-pass 2", "re-pass 3"]


def test_asyncio_to_thread_reads_the_urgency_of_the_task_that_asks():
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        pool = UrgentFirstExecutor(1)
        loop.set_default_executor(pool)
        gate = threading.Event()
        ran: list[str] = []
        blocker = asyncio.ensure_future(asyncio.to_thread(gate.wait))
        await asyncio.sleep(0)

        async def task(name: str, urgent: bool) -> None:
            URGENT.set(urgent)
            await asyncio.to_thread(ran.append, name)

        tasks = [loop.create_task(task("sweep", False), context=contextvars.Context()),
                 loop.create_task(task("new workspace", True), context=contextvars.Context())]
        while pool._work_queue.qsize() < 2:  # both asked (their tasks ran up to the call)
            await asyncio.sleep(0.001)
        gate.set()
        await asyncio.gather(blocker, *tasks)
        return ran

    assert asyncio.run(main()) == ["new workspace", "sweep"]


@pytest.mark.parametrize(("spec", "status", "generation", "urgent"), [
    ({"state": "Running"}, {}, 1, True),  # applied, never looked at
    ({"state": "Running"}, {"phase": "Starting", "observedGeneration": 1}, 1, True),  # its pod on the way
    ({"state": "Running"}, {"phase": "Running", "observedGeneration": 1}, 1, False),
    ({"state": "Running"}, {"phase": "Pending", "observedGeneration": 1}, 1, False),  # waiting, as last told
    ({"state": "Stopped"}, {"phase": "Running", "observedGeneration": 1}, 2, True),  # a stop: frees a device
    ({"state": "Stopped"}, {}, 1, False),  # applied Stopped: its first pass only writes Stopped
    ({"state": "Stopped"}, {"phase": "Stopped", "observedGeneration": 1}, 2, False),
    ({"state": "Running"}, {"phase": "Stopped", "observedGeneration": 1}, 2, True),  # started again
])
def test_a_workspace_whose_status_lags_what_someone_waits_on_is_urgent(spec, status, generation, urgent):
    ws = {"metadata": {"name": "ws", "namespace": "lab-ann", "generation": generation}, "spec": spec, "status": status}
    assert lags(ws) is urgent
