"""Cull reaction: seconds between a workspace's idle deadline (as its status states it) and the moment
its stop shows up in the API; plus the agent sampler's CPU cost at 100 workspaces (culling_sampler.py).

A lab with one fake H100 node, the operator and (as root) the agent as real subprocesses, a 20 s idle
timeout and a 1 s check interval; `--workspaces` idle workspaces started a moment apart, each watched
until the operator stops it. Target: every stop within one check interval of its deadline.
Writes bench/results/culling.json (`stop_after_deadline_s` is the worst workspace)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import culling_sampler

from labkeeper.kube.client import Kube
from labkeeper.testing.cluster import NodeSpec
from labkeeper.testing.lab import Lab, example_policy, gpuuser, workspace
from labkeeper.testing.processes import AgentProcess, wait_for

RESULTS = Path(__file__).resolve().parent / "results"
NODE = "bench-node"


def policy(idle: int, check: float) -> dict:
    body = example_policy()
    body["defaults"].update({"idleTimeout": f"{idle}s", "maxWorkspaces": 50})
    for tier in body["tiers"].values():
        tier.update({"idleTimeout": f"{idle}s", "maxWorkspaces": 50})
    body["stoppedRetention"] = "0s"
    body["activity"].update({"sampleInterval": "1s", "reportInterval": "5s", "checkInterval": f"{check:g}s"})
    return body


def start_agent(lab: Lab, root: Path) -> AgentProcess | None:
    """The agent with no GPU sampler and an empty cgroup root: every workspace reads as idle."""
    if os.geteuid() != 0:
        print("  (not root: no agent; idle clocks run from each workspace's start)")
        return None
    (root / "cgroup").mkdir(parents=True)
    return AgentProcess(lab.cluster.kubeconfig, root, NODE, "--selector", "labkeeper.io/bench-culling=none",
                        "--sampler", "none", "--cgroup-root", str(root / "cgroup"), log=root / "agent.log").start()


def parse(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def measure_reaction(count: int, idle: int, check: float, burst: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp, Lab((NodeSpec(NODE, "h100-balanced"),), policy(idle, check),
                                                   Path(tmp) / "lab") as lab:
        agent = start_agent(lab, Path(tmp) / "host")
        try:
            lab.add_users(gpuuser("idlebench"))
            kube = Kube.from_kubeconfig(str(lab.cluster.kubeconfig))
            names = [f"idle-{i}" for i in range(count)]
            for name in names:
                lab.apply(workspace(name, "idlebench"))
                if not burst:
                    time.sleep(0.7)  # deadlines a moment apart, so stops do not all land on one check
            wait_for(lambda: all(s.get("phase") in ("Running", "IdleWarning") or s.get("stopReason")
                                 for s in statuses(kube).values()) and len(statuses(kube)) == count,
                     timeout=60, what="all bench workspaces running")
            if burst:
                # as after a reboot: idle clocks never count from before the operator's start, so a restarted
                # operator gives every idle workspace the same deadline
                assert lab.operator is not None
                lab.operator.kill()
                lab.operator.start()
            reactions: dict[str, float] = {}
            give_up = time.monotonic() + idle * 3 + 30
            while len(reactions) < count and time.monotonic() < give_up:
                seen_at = time.time()
                for name, status in statuses(kube).items():
                    if name not in reactions and status.get("stopReason") == "Idle" and status.get("idleDeadline"):
                        reactions[name] = seen_at - parse(status["idleDeadline"]).timestamp()
                time.sleep(0.1)
        finally:
            if agent is not None:
                agent.kill()
    if len(reactions) < count:
        raise SystemExit(f"only {len(reactions)} of {count} idle workspaces were stopped: {sorted(reactions)}")
    values = sorted(reactions.values())
    return {"stop_after_deadline_s": round(values[-1], 2), "stop_after_deadline_p50_s": round(statistics.median(values), 2),
            "workspaces": count, "idle_timeout_s": idle, "check_interval_s": check, "with_agent": agent is not None,
            "one_deadline": burst, "load_average": round(os.getloadavg()[0], 1)}


def statuses(kube: Kube) -> dict[str, dict]:
    return {ws["metadata"]["name"]: ws.get("status") or {} for ws in kube.list("Workspace", "lab-idlebench")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspaces", type=int, default=6)
    parser.add_argument("--idle", type=int, default=20, help="idle timeout in seconds")
    parser.add_argument("--check-interval", type=float, default=1.0)
    parser.add_argument("--burst", action="store_true",
                        help="every deadline at once (the operator restarted after the starts, as after a reboot); "
                             "only the reaction is measured")
    args = parser.parse_args()
    reaction = measure_reaction(args.workspaces, args.idle, args.check_interval, args.burst)
    print(f"cull reaction, {args.workspaces} idle workspaces, {args.idle} s idle timeout, "
          f"{args.check_interval:g} s check interval{'' if reaction['with_agent'] else ' (no agent)'}:")
    print(f"  stop seen after the idle deadline: worst {reaction['stop_after_deadline_s']} s, "
          f"median {reaction['stop_after_deadline_p50_s']} s (target <= {args.check_interval:g} s; "
          f"deadlines in status have 1 s resolution, the poll 0.1 s; load {reaction['load_average']})")
    if args.burst:
        return
    sampler = culling_sampler.measure()
    culling_sampler.report(sampler)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "culling.json").write_text(json.dumps(
        {**reaction, "sampler_cpu_percent_100": sampler["sampler_cpu_percent_100"], "sampler": sampler}, indent=2))


if __name__ == "__main__":
    main()
