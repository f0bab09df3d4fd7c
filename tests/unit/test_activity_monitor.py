"""Scenarios for the activity monitor on a node written to disk: file-backed GPUs, kubelet-shaped
cgroups, a /proc with the pids' cgroup and net/dev files, and one clock that the tests move."""

import pytest
from activity_node import ALICE_UID, BOB_UID, Clock, Node
from prometheus_client import CollectorRegistry

from labkeeper.agent.activity import (
    ActivityMetrics,
    ActivityMonitor,
    FileSampler,
    Thresholds,
    WatchedWorkspace,
)

GPU, MIG_A, MIG_B = "GPU-4c1e0f3a-0000", "MIG-aaaa-1111", "MIG-bbbb-2222"
ALICE = WatchedWorkspace("lab-alice", "train", ALICE_UID)
BOB = WatchedWorkspace("lab-bob", "notebook", BOB_UID)


def h100_split(alice_sm, bob_sm, *, bob_memory="2Gi"):
    """One H100 cut into two 1g.10gb instances: alice's pid 101 on one, bob's pid 202 on the other."""
    return {
        "devices": [{"uuid": GPU, "name": "NVIDIA H100 80GB HBM3", "migInstances": [
            {"uuid": MIG_A, "profile": "1g.10gb", "smUtilization": alice_sm},
            {"uuid": MIG_B, "profile": "1g.10gb", "smUtilization": bob_sm},
        ]}],
        "processes": [
            {"pid": 101, "device": MIG_A, "usedMemory": "6Gi"},
            {"pid": 202, "device": MIG_B, "usedMemory": bob_memory},
        ],
    }


@pytest.fixture
def node(tmp_path):
    node = Node(tmp_path)
    node.pod(ALICE_UID, 101)
    node.pod(BOB_UID, 202, layout="systemd")
    return node


def monitor_for(node, clock, registry=None, **thresholds):
    metrics = ActivityMetrics(registry) if registry is not None else None
    return ActivityMonitor(FileSampler(node.gpu_file), Thresholds(**thresholds), clock, host=node.host,
                           metrics=metrics)


def test_gpu_work_on_one_mig_instance_keeps_only_that_workspace_active(node):
    clock = Clock()
    node.gpu_state(h100_split(alice_sm=41, bob_sm=0))
    monitor = monitor_for(node, clock)
    monitor.observe([ALICE, BOB])
    clock.advance(minutes=1)
    verdicts = monitor.observe([ALICE, BOB])

    assert verdicts[ALICE.key].active
    assert verdicts[ALICE.key].reason == "gpu 41% SM on 1g.10gb"
    assert not verdicts[BOB.key].active, "bob's neighbour instance is busy, his is not"
    assert verdicts[BOB.key].reason.startswith("cpu 0.00 cores; network 0 B/1m; gpu idle 1m")

    # alice's training ends; 27 minutes later her verdict says how long the GPU has been idle
    node.gpu_state(h100_split(alice_sm=0, bob_sm=0))
    clock.advance(minutes=27)
    verdicts = monitor.observe([ALICE, BOB])
    assert not verdicts[ALICE.key].active
    assert "gpu idle 27m" in verdicts[ALICE.key].reason


def test_gpu_memory_held_at_zero_percent_is_idle_unless_the_policy_counts_memory(node):
    node.gpu_state(h100_split(alice_sm=0, bob_sm=0, bob_memory="9Gi"))

    clock = Clock()
    strict = monitor_for(node, clock, count_gpu_memory_as_active=False)
    verdict = strict.observe([BOB])[BOB.key]
    assert not verdict.active
    assert "0% SM on 1g.10gb with 9.0 GiB held; memory not counted" in verdict.reason

    lenient = monitor_for(node, clock, count_gpu_memory_as_active=True)
    verdict = lenient.observe([BOB])[BOB.key]
    assert verdict.active
    assert verdict.reason == "gpu memory on 1g.10gb (pid 202 holds 9.0 GiB)"


def test_a_mig_instance_that_cannot_measure_utilisation_falls_back_to_process_presence(node):
    doc = h100_split(alice_sm=None, bob_sm=None)
    doc["processes"] = [p for p in doc["processes"] if p["pid"] == 101]
    node.gpu_state(doc)
    verdicts = monitor_for(node, Clock()).observe([ALICE, BOB])
    assert verdicts[ALICE.key].active
    assert "gpu process on 1g.10gb (pid 101 holds 6.0 GiB; utilisation not measurable)" in verdicts[ALICE.key].reason
    assert not verdicts[BOB.key].active


def test_cpu_is_a_rate_over_the_interval_from_the_pod_cgroup(node):
    clock = Clock()
    monitor = monitor_for(node, clock, cpu_cores=0.1)
    first = monitor.observe([ALICE])[ALICE.key]
    assert not first.active and first.reason.startswith("cpu not measured yet")

    node.set_cpu(ALICE_UID, 30.0)  # 30 s of CPU over one minute
    clock.advance(minutes=1)
    busy = monitor.observe([ALICE])[ALICE.key]
    assert busy.active and busy.reason == "cpu 0.50 cores"

    node.set_cpu(ALICE_UID, 31.2)  # 1.2 s over the next minute: 0.02 cores
    clock.advance(minutes=1)
    quiet = monitor.observe([ALICE])[ALICE.key]
    assert not quiet.active
    assert quiet.reason.startswith("cpu 0.02 cores")


def test_cgroup_v1_cpuacct_counts_the_same_way(tmp_path):
    node = Node(tmp_path)
    node.pod(ALICE_UID, 101, v1=True)
    clock = Clock()
    monitor = monitor_for(node, clock)
    monitor.observe([ALICE])
    node.set_cpu(ALICE_UID, 90.0, v1=True)
    clock.advance(minutes=1)
    assert monitor.observe([ALICE])[ALICE.key].reason == "cpu 1.50 cores"


def test_network_is_judged_on_bytes_per_interval_not_the_cumulative_counter(node):
    clock = Clock()
    monitor = monitor_for(node, clock, network_bytes_per_interval=1_000_000)
    node.set_network(101, received=50 * 10**9, sent=3 * 10**9)  # a long-lived pod: a huge counter
    monitor.observe([ALICE])
    clock.advance(minutes=1)
    still = monitor.observe([ALICE])[ALICE.key]
    assert not still.active, "no new bytes this interval, however large the counter"
    assert "network 0 B/1m" in still.reason

    node.set_network(101, received=50 * 10**9 + 4_000_000, sent=3 * 10**9 + 1_000_000)
    clock.advance(minutes=1)
    downloading = monitor.observe([ALICE])[ALICE.key]
    assert downloading.active and downloading.reason == "network 4.8 MiB/1m"


def test_a_restarted_pod_with_fresh_counters_is_not_read_as_negative_activity(node):
    clock = Clock()
    monitor = monitor_for(node, clock)
    node.set_cpu(ALICE_UID, 5000.0)
    monitor.observe([ALICE])
    node.set_cpu(ALICE_UID, 2.0)  # the pod was recreated: its cgroup counts from zero again
    clock.advance(minutes=1)
    verdict = monitor.observe([ALICE])[ALICE.key]
    assert verdict.signals["cpuCores"] is None and not verdict.active


def test_gauges_carry_every_signal_and_vanish_with_the_workspace(node):
    registry = CollectorRegistry()
    clock = Clock()
    node.gpu_state(h100_split(alice_sm=41, bob_sm=0))
    monitor = monitor_for(node, clock, registry)
    monitor.observe([ALICE, BOB])
    node.set_cpu(ALICE_UID, 12.0)
    clock.advance(minutes=1)
    monitor.observe([ALICE, BOB])

    ws = {"namespace": "lab-alice", "workspace": "train"}
    dev = {**ws, "device": MIG_A, "label": "1g.10gb"}
    assert registry.get_sample_value("labkeeper_workspace_active", ws) == 1
    assert registry.get_sample_value("labkeeper_workspace_cpu_cores", ws) == pytest.approx(0.2)
    assert registry.get_sample_value("labkeeper_workspace_network_bytes_per_interval", ws) == 0
    assert registry.get_sample_value("labkeeper_workspace_gpu_utilization_percent", dev) == 41
    assert registry.get_sample_value("labkeeper_workspace_gpu_memory_bytes", dev) == 6 * 2**30
    assert registry.get_sample_value("labkeeper_workspace_gpu_processes", dev) == 1
    assert registry.get_sample_value("labkeeper_workspace_active",
                                     {"namespace": "lab-bob", "workspace": "notebook"}) == 0

    monitor.observe([BOB])  # alice's workspace stopped
    assert registry.get_sample_value("labkeeper_workspace_active", ws) is None
    assert registry.get_sample_value("labkeeper_workspace_gpu_utilization_percent", dev) is None


def test_an_idle_verdicts_gist_ignores_its_numbers_but_not_what_it_saw(node):
    """The gist decides whether an idle verdict is worth a new write: durations and byte counts do not
    change it, cpu measured at last or a process starting to hold GPU memory does."""
    clock = Clock()
    node.gpu_state(h100_split(alice_sm=0, bob_sm=0))
    doc = h100_split(alice_sm=0, bob_sm=0)
    doc["processes"] = []
    node.gpu_state(doc)
    monitor = monitor_for(node, clock)
    first = monitor.observe([BOB])[BOB.key]
    assert "cpu not measured yet" in first.reason and "cpu not measured" in first.gist
    clock.advance(minutes=1)
    second = monitor.observe([BOB])[BOB.key]
    clock.advance(minutes=5)
    later = monitor.observe([BOB])[BOB.key]
    assert second.gist != first.gist, "cpu is measured from the second sample on"
    assert later.reason != second.reason and later.gist == second.gist, (later.reason, second.reason)

    node.gpu_state(h100_split(alice_sm=0, bob_sm=0))  # pid 202 now holds 2 GiB on bob's instance
    clock.advance(minutes=1)
    held = monitor.observe([BOB])[BOB.key]
    assert not held.active and "memory not counted" in held.reason
    assert held.gist != later.gist and "1g.10gb" in held.gist
