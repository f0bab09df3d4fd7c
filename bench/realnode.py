"""The real node: time from `kubectl apply` of a Workspace with a 1g.10gb slice to its process running in a
real container (the process itself writes the moment into its home on the data root), and to the
Workspace's phase Running; p50/p99 over N workspaces started one after another. Also the lab's start-up
(control plane, real node). Prints its figures and writes bench/results/realnode.json."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from labkeeper.testing.lab import gpuuser, workspace
from labkeeper.testing.processes import wait_for
from labkeeper.testing.reallab import RealLab

RESULTS = Path(__file__).resolve().parent / "results"
USER = "benchy"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workspaces", type=int, default=20)
    args = parser.parse_args()
    with RealLab(Path(tempfile.mkdtemp(prefix="labkeeper-bench-realnode-"))) as lab:
        assert lab.node is not None and lab.node.workspace_image is not None
        lab.apply(gpuuser(USER, "researcher"))
        lab.wait_user_ready(USER)
        home = lab.node.data_root / "users" / USER
        to_process, to_running = [], []
        for i in range(args.workspaces):
            name = f"b{i}"
            marker = home / f"started-{name}"
            command = ["bash", "-c", f'date +%s.%N > "$HOME/started-{name}"; exec python3 -m http.server 8000']
            doc = workspace(name, USER, profile="1g.10gb", image=lab.node.workspace_image.name, cpu="100m",
                            memory="128Mi", command=command)
            applied = time.time()
            lab.apply(doc)
            wait_for(lambda m=marker: m.exists() and m.read_text().strip(), timeout=120, interval=0.02,
                     what=lambda n=name: f"{n}'s process; {lab.diagnostics()}")
            to_process.append(float(marker.read_text()) - applied)
            wait_for(lambda n=name: lab.status("workspace", n, f"lab-{USER}").get("phase") == "Running",
                     timeout=60, interval=0.05, what=f"{name} Running")
            to_running.append(time.time() - applied)
            lab.kubectl("delete", "workspace", name, "-n", f"lab-{USER}", "--wait=false")
            wait_for(lambda n=name: lab.pod(n, USER) is None, timeout=120, interval=0.2, what=f"{name}'s pod gone")
        result = {
            "workspaces": args.workspaces,
            "apply_to_process_p50_s": round(statistics.median(to_process), 3),
            "apply_to_process_p99_s": round(percentile(to_process, 0.99), 3),
            "apply_to_running_phase_p50_s": round(statistics.median(to_running), 3),
            "apply_to_running_phase_p99_s": round(percentile(to_running, 0.99), 3),
            **{k: round(v, 2) for k, v in lab.timings.items()},
        }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "realnode.json").write_text(json.dumps(result, indent=2))
    print(f"workspace apply -> process running in the container, p50/p99 of {args.workspaces}: "
          f"{result['apply_to_process_p50_s']} / {result['apply_to_process_p99_s']} s")
    print(f"workspace apply -> phase Running p50/p99: {result['apply_to_running_phase_p50_s']} / "
          f"{result['apply_to_running_phase_p99_s']} s")
    print(f"lab start: control plane {result.get('control_plane_s')} s, real node {result.get('real_node_s')} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
