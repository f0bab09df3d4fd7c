"""The kube-apiserver restarts under a running operator: the same operator process reconnects, picks
up objects applied after the restart and changes to those it already managed.

The operator runs with its production lease (15s): a holder that cannot renew for longer exits by design
so that its pod restarts (controller/leader.py); the Lab's 3s test lease is shorter than a restart."""

from __future__ import annotations

import pytest
from chaos_support import operator_alive_without_traceback

from labkeeper.testing.cluster import NodeSpec
from labkeeper.testing.lab import Lab, gpuuser, workspace

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with Lab((NodeSpec("restart-node", "h100-balanced"),), workdir=tmp_path_factory.mktemp("apiserver"),
             operator_args=("--lease-duration", "15")) as running:
        yield running
        print(running.log_tail())


def test_the_operator_rides_out_an_apiserver_restart_and_converges_on_what_came_after(lab):
    lab.add_users(gpuuser("before"))
    lab.apply(workspace("early", "before"))
    lab.wait_phase("early", "before", "Running", timeout=60)
    operator_pid = lab.operator.proc.pid

    lab.cluster.restart_apiserver()

    lab.add_users(gpuuser("after"), timeout=120)
    lab.apply(workspace("late", "after"))
    assert lab.wait_phase("late", "after", "Running", timeout=120)["podUID"]
    lab.kubectl("patch", "workspace", "early", "-n", "lab-before", "--type=merge", "-p", '{"spec":{"state":"Stopped"}}')
    lab.wait_phase("early", "before", "Stopped", timeout=60)
    assert lab.operator.proc.pid == operator_pid and lab.operator.starts == 1, "the operator was restarted"
    assert lab.operator.proc.poll() is None, lab.log_tail()
    operator_alive_without_traceback(lab)
