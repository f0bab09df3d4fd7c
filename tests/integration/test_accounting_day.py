"""A scripted lab day on the real control plane (with an operator crash in the middle), compressed so that a second stands for a longer stretch: activity
comes from the agent's file-backed sampler, the operator decides idle stops and holds, and at the end the
accounting folded into each GPUUser's status, `labctl admin report` and the operator's Prometheus metrics must
tell the day as the script ran it.

One balanced H100 (two 1g.10gb slices, 1/7 GPU equivalent each). Idle timeout 10s, hold after stop 5s, checks every
second, verdicts reported every 2s, accounting folded every 3s. ann trains (busy) until she stops; ben's notebook
never computes and is culled; cleo waits for a slice until ben's hold runs out, computes a while, then idles until
culled. Every state change may land up to one check interval (plus the status' one-second timestamps) late.

A real Prometheus (Debian's package) scrapes the operator's /metrics, and every query of the Grafana dashboard
shipped in the chart returns series."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from labkeeper.testing.cluster import NodeSpec, free_port
from labkeeper.testing.lab import Lab, example_policy, gpuuser, workspace
from labkeeper.testing.processes import AgentProcess, wait_for

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
LABCTL = Path(sys.executable).parent / "labctl"
FIXTURE = REPO_ROOT / "tests" / "data" / "report" / "scripted_day.yaml"
DASHBOARD = REPO_ROOT / "charts" / "labkeeper" / "files" / "dashboards" / "labkeeper-usage.json"
NODE = "acct-node"
IDLE, HOLD, CHECK, REPORT, FOLD = 10, 5, 1, 2, 3
EQ = 1 / 7  # GPU equivalents of a 1g.10gb slice


def day_policy() -> dict:
    policy = example_policy()
    policy["defaults"].update({"idleTimeout": f"{IDLE}s"})
    for tier in policy["tiers"].values():
        tier.update({"idleTimeout": f"{IDLE}s"})
    policy.update({"gpuHoldAfterStop": f"{HOLD}s", "stoppedRetention": "10m", "terminationGracePeriod": "1s",
                   "warnings": {"idle": [0.5], "runtime": [0.9]}, "fairShare": {"flushInterval": f"{FOLD}s"}})
    policy["activity"].update({"sampleInterval": "1s", "reportInterval": f"{REPORT}s",
                               "checkInterval": f"{CHECK}s"})
    return policy


class GpuFile:
    """The activity file the agent samples: one H100 with two 1g.10gb instances, and who computes on which."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.busy: dict[str, str] = {}  # MIG instance → pod uid computing there
        self.write()

    def compute(self, instance: str, pod_uid: str | None) -> None:
        if pod_uid is None:
            self.busy.pop(instance, None)
        else:
            self.busy[instance] = pod_uid
        self.write()

    def write(self) -> None:
        doc = {"devices": [{"uuid": "GPU-acct-0", "name": "NVIDIA H100 80GB HBM3", "migInstances": [
            {"uuid": uuid_, "profile": "1g.10gb", "smUtilization": 70 if uuid_ in self.busy else 0}
            for uuid_ in ("MIG-acct-a", "MIG-acct-b")]}],
            "processes": [{"pid": 4_100_000 + i, "device": instance, "usedMemory": "5Gi", "podUid": uid}
                          for i, (instance, uid) in enumerate(sorted(self.busy.items()))]}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc))
        tmp.replace(self.path)


class Prometheus:
    """Debian's prometheus, scraping the operator every second, on loopback, with its own storage."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                                          "scrape_configs": [{"job_name": "labkeeper-operator",
                                                              "static_configs": [{"targets": [target]}]}]}))
        self.log = workdir / "prometheus.log"
        self.args = [shutil.which("prometheus") or "prometheus", f"--config.file={config}",
                     f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"]
        self.proc: subprocess.Popen | None = None

    def start(self) -> Prometheus:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self._ready(), timeout=60, what=lambda: f"prometheus ready; {self.log.read_text()[-2000:]}")
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def query(self, expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def day_lab(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the agent runs as root under a temporary host root")
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus is missing: hack/deps.sh installs Debian's package")
    workdir = tmp_path_factory.mktemp("accounting")
    gpus = GpuFile(workdir / "gpus.yaml")
    metrics_port = free_port()
    with Lab((NodeSpec(NODE, "h100-balanced"),), day_policy(), workdir / "lab",
             operator_args=("--metrics-port", str(metrics_port))) as lab:
        # the selector matches nobody: the agent provisions no home here, it only samples activity
        agent = AgentProcess(lab.cluster.kubeconfig, workdir / "host", NODE, "--selector",
                             "labkeeper.io/test-accounting=home", "--sampler", f"file:{gpus.path}",
                             "--cgroup-root", "/sys/fs/cgroup", "--proc-root", "/proc",
                             log=workdir / "agent.log").start()
        prometheus = Prometheus(workdir / "prometheus", f"127.0.0.1:{metrics_port}").start()
        lab.add_users(gpuuser("ann"), gpuuser("ben"), gpuuser("cleo"))
        try:
            yield lab, gpus, prometheus
        finally:
            prometheus.stop()
            agent.kill()
            print(lab.log_tail(80))
            print(agent.log_tail())


def stamp(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def status(lab: Lab, user: str, name: str) -> dict:
    return lab.status("workspace", name, f"lab-{user}")


def pod_uid(lab: Lab, user: str, name: str) -> str:
    return wait_for(lambda: status(lab, user, name).get("podUID"), what=f"{user}/{name} has a pod")


HOLDS_ENDED: dict[str, float] = {}  # when each user's last hold of the day ran out: her last state change


def stopped_and_released(lab: Lab, user: str, name: str, timeout: float) -> dict:
    held = wait_for(lambda: (s := status(lab, user, name)).get("holdUntil") and s, timeout=timeout,
                    what=f"{user}/{name} stopped with a hold")
    HOLDS_ENDED[user] = stamp(held["holdUntil"])
    return wait_for(lambda: (s := status(lab, user, name)).get("phase") == "Stopped" and not s.get("holdNode") and s,
                    timeout=timeout, what=f"{user}/{name} stopped and its hold over")


def labctl(lab: Lab, *args: str) -> str:
    env = {**os.environ, "KUBECONFIG": str(lab.cluster.kubeconfig), "COLUMNS": "250", "NO_COLOR": "1"}
    result = subprocess.run([str(LABCTL), *args], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_a_scripted_day_is_accounted_reported_and_scraped_as_it_ran(day_lab):
    lab, gpus, prometheus = day_lab
    truth: dict[str, dict[str, float]] = {u: {"active": 0.0, "idle": 0.0, "heldAfterStop": 0.0, "waiting": 0.0}
                                          for u in ("ann", "ben", "cleo")}

    # 1. ann trains on one slice, ben opens a notebook on the other and never computes
    lab.apply(workspace("train", "ann", profile="1g.10gb"))
    ann_start = time.time()
    gpus.compute("MIG-acct-a", pod_uid(lab, "ann", "train"))
    lab.apply(workspace("nb", "ben", profile="1g.10gb"))
    lab.wait_phase("train", "ann", "Running")
    lab.wait_phase("nb", "ben", "Running")

    # 2. cleo wants a slice: the box is full, she waits
    lab.apply(workspace("job", "cleo", profile="1g.10gb"))
    cleo_waits = stamp(wait_for(lambda: status(lab, "cleo", "job").get("waitingSince"), what="cleo waiting"))

    # 3. ben is culled for idling, his slice is held for him, then it goes to cleo, who computes
    ben_stopped = stopped_and_released(lab, "ben", "nb", timeout=IDLE + HOLD + 20)
    assert ben_stopped["stopReason"] == "Idle", ben_stopped
    truth["ben"]["idle"] = IDLE  # idle from his pod's start (no activity ever) to the cull
    truth["ben"]["heldAfterStop"] = HOLD
    gpus.compute("MIG-acct-b", pod_uid(lab, "cleo", "job"))
    cleo = lab.wait_phase("job", "cleo", "Running", timeout=30)
    cleo_starts = stamp(cleo["runningSince"])
    truth["cleo"]["waiting"] = cleo_starts - cleo_waits
    assert truth["cleo"]["waiting"] > HOLD, (cleo_waits, cleo_starts)
    # the operator crashes while cleo computes and comes back: nothing of the day is lost or counted twice
    lab.operator.kill()
    lab.operator.start()
    wait_for(lambda: (((lab.get("lease", "labkeeper-operator", "labkeeper-system") or {}).get("spec") or {})
                      .get("holderIdentity") or "").endswith(f"-{lab.operator.proc.pid}"),
             timeout=30, what="the restarted operator leads")
    time.sleep(4)

    # 4. ann stops her training herself; cleo stops computing and is culled in time
    ann_stop = time.time()
    lab.kubectl("patch", "workspace", "train", "-n", "lab-ann", "--type=merge", "-p", '{"spec":{"state":"Stopped"}}')
    gpus.compute("MIG-acct-a", None)
    cleo_quiet = time.time()
    gpus.compute("MIG-acct-b", None)
    truth["ann"]["active"] = ann_stop - ann_start
    truth["ann"]["heldAfterStop"] = HOLD
    stopped_and_released(lab, "ann", "train", timeout=HOLD + 20)
    cleo_stopped = stopped_and_released(lab, "cleo", "job", timeout=IDLE + HOLD + 20)
    assert cleo_stopped["stopReason"] == "Idle", cleo_stopped
    truth["cleo"]["active"] = cleo_quiet - cleo_starts
    truth["cleo"]["idle"] = IDLE
    truth["cleo"]["heldAfterStop"] = HOLD

    # 5. the day is folded into each user's status within a fold interval, nothing twice, nothing lost
    def folded(user: str) -> dict | None:
        acc = (lab.status("gpuuser", user).get("accounting")) or {}
        return acc if acc.get("through") and stamp(acc["through"]) >= HOLDS_ENDED[user] else None
    for user in truth:
        acc = wait_for(lambda u=user: folded(u), timeout=FOLD * 4 + 2 * (REPORT + CHECK),
                       what=lambda u=user: f"{u}'s accounting folded past {HOLDS_ENDED[u]}: "
                                           f"{lab.status('gpuuser', u).get('accounting')}")
        days = acc["days"]
        got = {key: sum(float(d.get(field) or 0) for d in days) for key, field in (
            ("active", "activeSeconds"), ("idle", "idleSeconds"), ("heldAfterStop", "heldAfterStopSeconds"),
            ("waiting", "waitingSeconds"))}
        # GPU figures are GPU-equivalent-seconds; each boundary may land a check interval (+1s stamps) late
        slack = 2 * (CHECK + 1) + REPORT
        meter = status(lab, user, {"ann": "train", "ben": "nb", "cleo": "job"}[user]).get("meter")
        print(user, "truth", truth[user], "folded", got, "meter", json.dumps(meter))
        for key in ("active", "idle", "heldAfterStop"):
            assert abs(got[key] - truth[user][key] * EQ) <= slack * EQ, (user, key, got, truth[user], meter)
        assert abs(got["waiting"] - truth[user]["waiting"]) <= slack, (user, got, truth[user])
        stops = {}
        for d in days:
            for reason, n in (d.get("stops") or {}).items():
                stops[reason] = stops.get(reason, 0) + n
        assert stops == {"ann": {"Stopped": 1}, "ben": {"Idle": 1}, "cleo": {"Idle": 1}}[user], (user, days)
        assert acc["decayedGpuHours"] > 0

    # 6. labctl admin report tells the same day, as the fixture says
    fixture = yaml.safe_load(FIXTURE.read_text())
    report = json.loads(labctl(lab, "admin", "report", "--since", "1d", "-o", "json"))
    rows = {r["user"]: r for r in report["users"]}
    for user, expected in fixture["users"].items():
        row = rows[user]
        for field, value in expected.items():
            if isinstance(value, dict) and "approx" in value:
                want = truth[user][value["approx"]] * value.get("times", 1) / value.get("per", 1)
                assert abs(row[field] - want) <= value["slack"], (user, field, row[field], want)
            else:
                assert row[field] == value, (user, field, row[field], value)
    held = {u: rows[u]["heldGpuHours"] for u in rows}
    assert sum(rows[u]["shareOfLab"] for u in rows) == pytest.approx(1.0, abs=1e-3)
    assert rows["ann"]["shareOfLab"] == pytest.approx(held["ann"] / sum(held.values()), abs=1e-3)
    for field, value in fixture["lab"].items():
        assert report["lab"][field] == value, (field, report["lab"])
    assert report["lab"]["idleShare"] == pytest.approx(
        sum(r["idleGpuHours"] for r in rows.values()) / sum(held.values()), abs=1e-3)
    table = labctl(lab, "admin", "report", "--since", "1d").splitlines()
    assert [line.split()[0] for line in table[2:]] == fixture["table"]["first_column"], table
    assert table[1].split() == fixture["table"]["header"], table
    csv_lines = labctl(lab, "admin", "report", "--since", "1d", "-o", "csv").splitlines()
    assert csv_lines[0] == fixture["csv"]["header"], csv_lines
    assert [line.split(",")[0] for line in csv_lines[1:]] == fixture["table"]["first_column"], csv_lines

    # 7. a real Prometheus scrapes the same figures, and every dashboard query returns series
    def scraped_stops() -> list[dict]:
        return prometheus.query('labkeeper_workspace_stops_total{reason="Idle"}')
    wait_for(lambda: len(scraped_stops()) == 2, timeout=30, what="prometheus has scraped the stops")
    idle_hours = prometheus.query('sum(labkeeper_gpu_equivalent_seconds_total{state="idle"}) / 3600')
    assert float(idle_hours[0]["value"][1]) == pytest.approx(
        sum(r["idleGpuHours"] for r in rows.values()), abs=4 * (CHECK + 1) * EQ / 3600)
    queries = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    empty = []
    for expr in queries:
        if not prometheus.query(expr):
            empty.append(expr)
    assert not empty, f"dashboard queries without series: {empty}"
