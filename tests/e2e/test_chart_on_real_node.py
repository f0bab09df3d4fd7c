"""`helm install` of charts/labkeeper on a real node, with the image built from the Dockerfile: the operator
Deployment and the agent DaemonSet run as real pods with the chart's own security settings, reach the API
server through the `kubernetes` Service (kube-proxy), `labctl admin doctor` calls them healthy, and
examples/alice.yaml is provisioned by the agent pod into the node's sandboxed /etc, /home and data root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labkeeper.testing.cluster import REPO_ROOT
from labkeeper.testing.images import product_image
from labkeeper.testing.processes import SYSTEM_NAMESPACE, wait_for
from labkeeper.testing.reallab import RealLab

LABCTL = Path(sys.executable).parent / "labctl"
NODE = "real-node-chart"
FIGURES: dict[str, float] = {}


@pytest.fixture(scope="module")
def chart_lab(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the real-node suite runs as root")
    if shutil.which("buildah") is None:
        pytest.fail("the labkeeper image is built with buildah: bash hack/deps.sh installs buildah and debootstrap")
    started = time.monotonic()
    image = product_image(REPO_ROOT)
    FIGURES["image_s"] = time.monotonic() - started
    with RealLab(tmp_path_factory.mktemp("chart"), processes=False, node=NODE, images=[image]) as lab:
        lab.image = image
        yield lab
    print(f"\nchart on the real node: {FIGURES}")


def helm(lab: RealLab, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(lab.cluster.bin_dir / "helm"), "--kubeconfig", str(lab.cluster.kubeconfig), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_the_chart_runs_labkeeper_on_the_real_node_and_the_agent_pod_provisions_alice(chart_lab):
    lab = chart_lab
    repository, tag = lab.image.name.rsplit(":", 1)
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "agent": {"dataRoot": str(lab.node.data_root)},
        # the kwok node only pretends to run pods
        "operator": {"nodeSelector": {"labkeeper.io/node-kind": "real"}},
        "runtimeClass": {"create": True},
    }
    values_file = lab.workdir / "values.json"
    values_file.write_text(json.dumps(values))
    started = time.monotonic()
    install = helm(lab, "install", "labkeeper", str(REPO_ROOT / "charts" / "labkeeper"), "--namespace",
                   SYSTEM_NAMESPACE, "--create-namespace", "-f", str(values_file), "--wait", "--timeout", "5m")
    assert install.returncode == 0, install.stderr + lab.diagnostics() + pods_described(lab)
    FIGURES["helm_install_s"] = time.monotonic() - started

    pods = json.loads(lab.kubectl("get", "pods", "-n", SYSTEM_NAMESPACE, "-o", "json").stdout)["items"]
    by_component = {p["metadata"]["labels"].get("app.kubernetes.io/component"): p for p in pods}
    for component in ("operator", "agent"):
        pod = by_component[component]
        assert pod["spec"]["nodeName"] == NODE, (component, pod["spec"].get("nodeName"))
        assert all(c["ready"] for c in pod["status"]["containerStatuses"]), pod["status"]
    # as the chart sets them: the operator non-root on a read-only root filesystem
    operator_pod = by_component["operator"]["spec"]
    assert operator_pod["securityContext"]["runAsNonRoot"] is True
    assert operator_pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True

    def doctor_healthy():
        result = subprocess.run([str(LABCTL), "admin", "doctor", "-o", "json"], capture_output=True, text=True,
                                timeout=120, env={**os.environ, "KUBECONFIG": str(lab.cluster.kubeconfig)})
        checks = {c["name"]: c for c in json.loads(result.stdout or "[]")}
        healthy = ("operator", "node agent", "GPU resources", "nvidia RuntimeClass", "CRDs")
        return all(checks.get(n, {}).get("state") == "ok" for n in healthy) and checks

    checks = wait_for(doctor_healthy, timeout=120, interval=2, what=lambda: "doctor healthy; " + lab.diagnostics())
    FIGURES["helm_install_to_lab_ready_s"] = time.monotonic() - started
    assert checks["operator"]["state"] == "ok"

    lab.kubectl("apply", "-f", str(REPO_ROOT / "examples" / "alice.yaml"))
    status = wait_for(lambda: (s := lab.status("gpuuser", "alice")).get("phase") == "Ready" and s, timeout=120,
                      what=lambda: f"alice Ready; status {lab.status('gpuuser', 'alice')}\n{component_logs(lab)}")
    host = lab.node.host_root
    passwd = {line.split(":")[0]: line.split(":") for line in (host / "etc" / "passwd").read_text().splitlines()}
    assert int(passwd["alice"][2]) == int(status["uid"])
    home = lab.node.data_root / "users" / "alice"
    assert os.readlink(host / "home" / "alice") == str(home)
    assert (home.stat().st_uid, home.stat().st_gid) == (int(status["uid"]), int(status["gid"]))
    assert "alice@laptop" in (home / ".ssh" / "authorized_keys").read_text()
    assert lab.get("secret", "kubeconfig-alice", SYSTEM_NAMESPACE) is not None
    assert "alice:" not in Path("/etc/passwd").read_text()


def component_logs(lab: RealLab) -> str:
    return "\n".join(f"--- {c} pod log ---\n" + lab.kubectl(
        "logs", "-n", SYSTEM_NAMESPACE, "-l", f"app.kubernetes.io/component={c}", "--tail=40", check=False).stdout
        for c in ("operator", "agent"))


def pods_described(lab: RealLab) -> str:
    return lab.kubectl("describe", "pods", "-n", SYSTEM_NAMESPACE, check=False).stdout[-6000:]
