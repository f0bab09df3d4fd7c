"""`make bench`: runs every benchmark, prints one table with each figure beside its target and the
machine it ran on, and writes bench/results/summary.json."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# (script, args, figures: (json key, label, target, unit))
BENCHES = [
    ("provision.py", [], [
        ("apply_to_ready_p50_s", "user provisioning p50 (apply -> Ready)", "<= 1 s", "s"),
        ("apply_to_ready_p99_s", "user provisioning p99", "<= 3 s", "s"),
        ("api_writes_while_idle", "operator API writes over 60 s idle", "0", ""),
    ]),
    ("workspaces.py", [], [
        ("apply_to_running_p50_s", "workspace apply -> Running p50", "-", "s"),
        ("apply_to_running_p99_s", "workspace apply -> Running p99", "<= 2 s", "s"),
        ("operator_rss_mib", "operator memory holding 1000 workspaces", "<= 200 MiB", "MiB"),
    ]),
    ("recovery.py", [], [
        ("restore_seconds", "recovery of 100 users, 5 caches, 4 stores", "<= 1 s", "s"),
    ]),
    ("culling.py", [], [
        ("stop_after_deadline_s", "cull reaction (stop after the idle deadline)", "<= 1 check interval", "s"),
        ("sampler_cpu_percent_100", "agent sampler CPU at 100 workspaces", "< 5 % of a core", "%"),
    ]),
]


def machine() -> str:
    cpu = "unknown cpu"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return f"{os.cpu_count()} cores ({cpu}), {mem_kib // 1024 // 1024} GiB, {platform.system()} {platform.release()}"


def main() -> int:
    RESULTS.mkdir(exist_ok=True)
    rows, failures = [], []
    for script, args, figures in BENCHES:
        path = HERE / script
        if not path.exists():
            failures.append(f"{script}: missing")
            rows += [(label, "missing", target) for _, label, target, _ in figures]
            continue
        started = time.monotonic()
        proc = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True)
        print(proc.stdout, end="")
        if proc.returncode != 0:
            failures.append(f"{script}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
        data_file = RESULTS / script.replace(".py", ".json")
        data = json.loads(data_file.read_text()) if data_file.exists() else {}
        for key, label, target, unit in figures:
            value = data.get(key)
            rows.append((label, "n/a" if value is None else f"{value} {unit}".strip(), target))
        print(f"({script} took {time.monotonic() - started:.0f} s)")
    width = max(len(r[0]) for r in rows)
    table = [f"machine: {machine()}", "", f"| {'figure'.ljust(width)} | value | target |",
             f"|{'-' * (width + 2)}|-------|--------|"]
    table += [f"| {label.ljust(width)} | {value} | {target} |" for label, value, target in rows]
    print("\n".join(table))
    (RESULTS / "summary.json").write_text(json.dumps(
        {"machine": machine(), "figures": [{"figure": r[0], "value": r[1], "target": r[2]} for r in rows]},
        indent=2))
    (RESULTS / "summary.md").write_text("\n".join(table) + "\n")
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
