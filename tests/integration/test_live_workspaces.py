"""The Workspace's selectable fields on the real API server: the union that admission and the board read
(api/admission.LIVE_WORKSPACES) holds every workspace that waits, runs, stops or holds a device, and leaves out
only the Stopped ones that hold nothing; the count the board adds them back from is the API's own. A control plane
of its own, with no operator: the session's would rewrite the statuses these tests set."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from labkeeper.api import admission
from labkeeper.api.names import MANAGED_GPU_SELECTOR
from labkeeper.kube.client import Kube, list_union
from labkeeper.testing.cluster import REPO_ROOT, LocalCluster, NodeSpec
from labkeeper.testing.lab import workspace

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with LocalCluster(tmp_path_factory.mktemp("live"), (NodeSpec("live-node", "cpu-only"),),
                      preload=[REPO_ROOT / "crds"]) as local:
        yield local


SOON = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
# name -> the status it is given (None: none yet, as before the operator's first pass)
STATUSES = {
    "new": None,
    "queued": {"phase": "Pending", "reason": "WaitingForDevice", "waitingSince": "2026-12-07T10:00:00.000000Z"},
    "running": {"phase": "Running", "node": "gpu-node-1"},
    "stopping": {"phase": "Stopping"},
    "held": {"phase": "Stopped", "holdNode": "gpu-node-1", "holdResource": "nvidia.com/mig-1g.10gb",
             "holdCount": 1, "holdUntil": SOON},
    "done": {"phase": "Failed", "reason": "Error"},
    "stopped-1": {"phase": "Stopped"},
    "stopped-2": {"phase": "Stopped", "holdNode": None},
}


def test_the_live_union_is_every_workspace_but_the_stopped_ones_that_hold_nothing(api, unique):
    user = f"live-{unique}"
    namespace = f"lab-{user}"
    api.kubectl("create", "namespace", namespace)
    bodies = [workspace(name, user, profile="1g.10gb", state="Stopped" if name.startswith("stopped") else "Running")
              for name in STATUSES]
    api.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": bodies}))
    for name, status in STATUSES.items():
        if status is not None:
            api.kubectl("patch", "workspace", name, "-n", namespace, "--subresource=status", "--type=merge",
                         "-p", json.dumps({"status": status}))
    kube = Kube.from_kubeconfig(str(api.kubeconfig))

    for cached in (False, True):
        listed = list_union(kube, "Workspace", admission.LIVE_WORKSPACES, namespace, cached=cached)
        assert [w["metadata"]["name"] for w in listed] == ["done", "held", "new", "queued", "running", "stopping"]
    everything = kube.list("Workspace", namespace)
    assert kube.count("Workspace", namespace) == len(everything) == len(STATUSES)
    # nothing admission reads from a workspace is in the ones left out
    now = dt.datetime.now(dt.UTC)
    left_out = [w for w in everything if w["metadata"]["name"].startswith("stopped")]
    assert all(admission.hold_claim(w, now) is None and admission.waiting_since(w) is None for w in left_out)
    assert admission.releases_of(left_out, now) == []
    assert [c.owner for c in filter(None, (admission.hold_claim(w, now) for w in everything))] == [f"{namespace}/held"]


def test_a_crd_from_before_the_selectable_fields_gets_the_whole_list(api, unique):
    """labctl newer than the lab's CRDs: the API server refuses the field selectors, and the union falls back to
    every workspace, which holds it (the board then counts each one itself)."""
    user = f"old-{unique}"
    namespace = f"lab-{user}"
    api.kubectl("create", "namespace", namespace)
    api.kubectl("apply", "-f", "-", input=json.dumps(workspace("nb", user, profile="1g.10gb")))
    kube = Kube.from_kubeconfig(str(api.kubeconfig))
    refused = ("status.unknownField!=",)  # a field the CRD does not select by, as before its selectableFields
    assert [w["metadata"]["name"] for w in list_union(kube, "Workspace", refused, namespace)] == ["nb"]


def test_the_board_lists_the_pods_that_may_hold_a_device_and_those_from_before_the_label(api, unique):
    namespace = f"lab-pods-{unique}"
    api.kubectl("create", "namespace", namespace)

    def pod(name: str, gpu: str | None) -> dict:
        labels = {"app.kubernetes.io/managed-by": "labkeeper", "labkeeper.io/workspace": name}
        if gpu is not None:
            labels["labkeeper.io/gpu"] = gpu
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"ws-{name}", "namespace": namespace,
                                                                "labels": labels},
                "spec": {"containers": [{"name": "workspace", "image": "busybox"}]}}

    pods = [pod("cpu", "none"), pod("slice", "1g.10gb"), pod("whole", "full"), pod("older", None)]
    api.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": pods}))
    kube = Kube.from_kubeconfig(str(api.kubeconfig))
    listed = kube.list("Pod", namespace, label_selector=MANAGED_GPU_SELECTOR)
    assert sorted(p["metadata"]["name"] for p in listed) == ["ws-older", "ws-slice", "ws-whole"]
