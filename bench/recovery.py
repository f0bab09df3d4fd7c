"""Reboot recovery: builds a host with 100 users, 5 caches and 4 model stores under a temporary host
root, wipes what a reboot wipes (/etc's accounts, /home, /etc/profile.d), keeps the data root, and times
one agent pass that restores it all. Prints the time and exactly what was restored and what was not;
writes bench/results/recovery.json. Runs as root (it creates accounts and ACLs under the temp root)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from labkeeper.agent.model import HostUser, LabHost, Members, SharedTree
from labkeeper.agent.recovery import Host, reconcile_host
from labkeeper.testing.processes import seed_host_etc

RESULTS = Path(__file__).resolve().parent / "results"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBenchBenchBenchBenchBenchBenchBenchBench000{i:03d} u{i}@lab"


def the_lab(users: int) -> LabHost:
    people = tuple(HostUser(f"user{i:03d}", 20000 + i, 20000 + i, f"User {i}", ssh_keys=(KEY.format(i=i),))
                   for i in range(users))
    caches = tuple(SharedTree(t, "cache", t, f"cache/{t}", ((f"{t.upper()}_CACHE", "$(PATH)"),))
                   for t in ("pip", "conda", "uv", "npm", "yarn"))
    stores = tuple(SharedTree(t, "models", t, f"models/{t}", ((f"{t.upper()}_MODELS", "$(PATH)"),),
                              writers=Members(users=(people[0].name,)))
                   for t in ("huggingface", "torch", "comfyui", "flux"))
    return LabHost(people, caches + stores, 2000)


def summarize(lines: list[str]) -> dict[str, int]:
    kinds = Counter()
    for line in lines:
        if line.startswith("account "):
            kinds["accounts"] += 1
        elif line.startswith("group ") and "members" not in line:
            kinds["groups"] += 1
        elif "members" in line:
            kinds["group memberships"] += 1
        elif line.startswith("/home/"):
            kinds["/home symlinks"] += 1
        elif "profile.d" in line:
            kinds["profile.d"] += 1
        else:
            kinds["other: " + line.split(":")[0]] += 1
    return dict(kinds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/recovery.py runs as root", file=sys.stderr)
        return 2
    lab = the_lab(args.users)
    work = Path(tempfile.mkdtemp(prefix="labkeeper-recovery-"))
    try:
        root, data = work / "host", work / "host/data"
        data.mkdir(parents=True)
        seed_host_etc(root)
        host = Host(root, data)
        build = time.perf_counter()
        first = reconcile_host(host, lab)
        build = time.perf_counter() - build
        host.close()
        times, result = [], first
        for _ in range(args.rounds):
            shutil.rmtree(root / "home")
            shutil.rmtree(root / "etc")
            seed_host_etc(root)
            started = time.perf_counter()
            host = Host(root, data)
            result = reconcile_host(host, lab)
            times.append(time.perf_counter() - started)
            host.close()
        restore = sorted(times)[len(times) // 2]
        restored = summarize(result.report.done)
        report = {
            "users": args.users, "caches": 5, "model_stores": 4,
            "first_build_seconds": round(build, 3),
            "restore_seconds": round(restore, 3),
            "restore_seconds_all_rounds": [round(t, 3) for t in times],
            "restored": restored,
            "provisioned_users": len(result.provisioned),
            "not_restored": result.report.failed,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"recovery: {args.users} users, 5 caches, 4 model stores restored in {restore:.3f} s "
          f"(median of {args.rounds}; first build {build:.3f} s)")
    for kind, count in sorted(restored.items()):
        print(f"  restored {count:4d} {kind}")
    print(f"  users provisioned: {len(result.provisioned)}/{args.users}")
    print(f"  could not restore: {len(result.report.failed)}" +
          "".join(f"\n    - {line}" for line in result.report.failed))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "recovery.json").write_text(json.dumps(report, indent=2))
    return 0 if not result.report.failed and len(result.provisioned) == args.users else 1


if __name__ == "__main__":
    sys.exit(main())
