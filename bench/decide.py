"""One admission decision at a department's size, without an API server: the pure decision (api/admission.py)
and the queue places the lab-wide sweep tells every waiter (workspace_decisions.to_wake), on the lab shape of
bench/scale.py (100 nodes: 430 devices, every one taken), 1000 waiters in bench/scale.py's profile mix and one
known release per device (an idle or runtime deadline). Prints the median of `--repeat` runs of each.

    .venv/bin/python bench/decide.py [--waiters 1000] [--repeat 15]

To compare with another commit's code: `git archive COMMIT operator | tar -x -C DIR` and run this file with
PYTHONPATH=DIR/operator."""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale import PROFILES, nodes  # the same lab shape as the full bench

from labkeeper.api import admission as api_admission
from labkeeper.controller.admission import LabView
from labkeeper.controller.workspace_decisions import to_wake
from labkeeper.render.access import gpu_resource
from labkeeper.testing.cluster import NODE_PROFILES


def lab(waiters: int, seed: int = 7) -> LabView:
    rng = random.Random(seed)
    now = dt.datetime(2026, 12, 7, 12, tzinfo=dt.UTC)
    capacity: dict[api_admission.Slot, int] = {}
    claims, releases = [], []
    for spec in nodes(100):
        for resource, count in NODE_PROFILES[spec.profile].items():
            capacity[(spec.name, resource)] = int(count)
            for k in range(int(count)):
                owner = f"lab-r{spec.name}/{k}-{resource.rsplit('-', 1)[-1]}"
                claims.append(api_admission.Claim(owner, spec.name, resource, 1, priority=10))
                releases.append(api_admission.Release(now + dt.timedelta(minutes=rng.randint(1, 3000)), spec.name,
                                                      resource, 1, f"{owner} reaches its idle deadline"))
    queue = []
    for j in range(waiters):
        share, resource = (j * 0.618034) % 1.0, gpu_resource("full")
        for name, weight in PROFILES:
            if share < weight:
                resource = gpu_resource(name)
                break
            share -= weight
        queue.append(api_admission.Waiter(f"lab-s{j:04d}/g{j}", resource, 1, 10, now - dt.timedelta(seconds=j),
                                          False, rng.random()))
    return LabView(capacity, frozenset(), claims, queue, frozenset(), tuple(releases))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiters", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    decide_s, places_s = [], []
    for _ in range(args.repeat):
        view = lab(args.waiters)  # a fresh view each time: a view keeps its decision
        started = time.perf_counter()
        decision = view.decide()
        decided = time.perf_counter()
        _now, soon = to_wake(view, decision, shown=True)
        places_s.append(time.perf_counter() - decided)
        decide_s.append(decided - started)
    assert len(decision.waiting) == args.waiters and len(soon) == args.waiters, "every waiter waits and is told"
    print(f"{args.waiters} waiters, {sum(view.capacity.values())} devices all taken, median of {args.repeat}: "
          f"decide {statistics.median(decide_s) * 1000:.1f} ms, every waiter's queue place "
          f"{statistics.median(places_s) * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
