"""A lab on a real node, for the e2e suite and the real-node benchmark: a LocalCluster with one kwok node
(it answers the cluster's start-up probe; it offers no GPU), a RealNode with MIG devices, the CRDs and the
example policy, and the operator and agent as processes, the agent's host root being the node's sandboxed
/etc and /home and its data root the node's (the same absolute path outside and inside the node's mount
namespace)."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from pathlib import Path

from labkeeper.testing.cluster import NVIDIA_RUNTIME_CLASS, REPO_ROOT, LocalCluster, NodeSpec, manifest
from labkeeper.testing.devices import process_environ
from labkeeper.testing.lab import example_policy, policy_configmap
from labkeeper.testing.processes import SYSTEM_NAMESPACE, AgentProcess, OperatorProcess, wait_for
from labkeeper.testing.realnode import RealNode

NODE = "real-node-1"


class RealLab:
    """With `processes` the operator and agent run here as processes (labkeeper's own CRDs and the example
    policy applied first); without, nothing of labkeeper is installed: a test installs the chart, whose pods
    reach the API server through the `kubernetes` Service (kube-proxy on the real node)."""

    def __init__(self, workdir: Path, policy: dict | None = None, *, processes: bool = True, node: str = NODE,
                 images=()) -> None:
        self.workdir = Path(workdir)
        self.policy = policy if policy is not None else example_policy()
        self.processes = processes
        self.real_node = RealNode(node, pods_reach_apiserver=not processes, images=tuple(images))
        self.cluster = LocalCluster(self.workdir / "cluster", [NodeSpec("kwok-cpu-1", "cpu-only")],
                                    preload=[REPO_ROOT / "crds"] if processes else [],
                                    pod_address=None if processes else self.real_node.gateway)
        self.node: RealNode | None = None
        self.operator: OperatorProcess | None = None
        self.agent: AgentProcess | None = None
        self.timings: dict[str, float] = {}

    def __enter__(self) -> RealLab:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> RealLab:
        started = time.monotonic()
        self.cluster.start()
        self.timings["control_plane_s"] = self.cluster.startup_seconds
        try:
            # the kwok node has answered the start-up probe; from now on every pod runs on the real node
            self.kubectl("taint", "node", "kwok-cpu-1", "labkeeper.io/probe-only=true:NoSchedule")
            if self.processes:
                self.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
                self.kubectl("apply", "-f", "-", input=json.dumps(NVIDIA_RUNTIME_CLASS))
                self.kubectl("create", "namespace", SYSTEM_NAMESPACE)
                self.kubectl("apply", "-f", "-", input=json.dumps(policy_configmap(self.policy)))
            self.node = self.cluster.add_real_node(self.real_node)
            self.timings["real_node_s"] = self.node.startup_seconds
            if not self.processes:
                self.timings["lab_s"] = time.monotonic() - started
                return self
            data_root = str(self.node.data_root)
            operator_dir = self.workdir / "operator"
            operator_dir.mkdir(exist_ok=True)
            self.operator = OperatorProcess(self.cluster, operator_dir, "--data-root", data_root,
                                            "--lease-duration", "3").start()
            self.agent = AgentProcess(self.cluster.kubeconfig, self.node.host_root, NODE, "--host-data-root", data_root,
                                      "--sampler", "none", "--resync", "5", log=self.workdir / "agent.log").start()
        except BaseException:
            self.stop()
            raise
        self.timings["lab_s"] = time.monotonic() - started
        return self

    def stop(self) -> None:
        if self.agent:
            self.agent.stop()
        if self.operator:
            self.operator.stop()
        self.cluster.stop()
        if self.node is None:  # never joined, so the cluster does not know it; its directory is made already
            self.real_node.cleanup()

    # ---- verbs ------------------------------------------------------------------------------
    def kubectl(self, *args: str, **kwargs):
        return self.cluster.kubectl(*args, **kwargs)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
        result = self.kubectl(*args, check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def status(self, kind: str, name: str, namespace: str | None = None) -> dict:
        return (self.get(kind, name, namespace) or {}).get("status") or {}

    def apply(self, *docs: dict) -> None:
        self.kubectl("apply", "-f", "-", input=manifest(*docs))

    def user_kubeconfig(self, name: str, directory: Path) -> Path:
        """The kubeconfig the operator issued her, as she would save it."""
        secret = self.get("secret", f"kubeconfig-{name}", SYSTEM_NAMESPACE)
        path = directory / f"{name}.kubeconfig"
        path.write_bytes(base64.b64decode(secret["data"]["config"]))
        return path

    def wait_user_ready(self, name: str, timeout: float = 120) -> dict:
        return wait_for(lambda: (s := self.status("gpuuser", name)).get("phase") == "Ready" and s, timeout=timeout,
                        what=lambda: f"GPUUser {name} Ready; {self.diagnostics()}")

    def pod(self, workspace: str, user: str) -> dict | None:
        return self.get("pod", f"ws-{workspace}", f"lab-{user}")

    # ---- the chart ----------------------------------------------------------------------------
    def helm(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.cluster.bin_dir / "helm"), "--kubeconfig", str(self.cluster.kubeconfig),
                               *args], capture_output=True, text=True, timeout=timeout, check=False)

    def chart_values(self, image) -> dict:
        """Values that install charts/labkeeper on this lab (without `processes`): its image, imported on the
        node; the node's data root; the operator on the real node (the kwok node only pretends to run pods);
        the agent's GPU sampler reading the node's stand-in for NVML, which the device plugin writes."""
        assert self.node is not None
        repository, tag = image.name.rsplit(":", 1)
        return {
            "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
            "agent": {"dataRoot": str(self.node.data_root), "sampler": f"file:{self.node.activity_file}"},
            "operator": {"nodeSelector": {"labkeeper.io/node-kind": "real"}},
            "runtimeClass": {"create": True},
        }

    def install_chart(self, image, values: dict | None = None, timeout: str = "5m") -> subprocess.CompletedProcess:
        """`helm install --wait` of charts/labkeeper into the system namespace."""
        values_file = self.workdir / "values.json"
        values_file.write_text(json.dumps(values if values is not None else self.chart_values(image)))
        return self.helm("install", "labkeeper", str(REPO_ROOT / "charts" / "labkeeper"), "--namespace",
                         SYSTEM_NAMESPACE, "--create-namespace", "-f", str(values_file), "--wait", "--timeout", timeout)

    def component_logs(self, tail: int = 40) -> str:
        return "\n".join(f"--- {c} pod log ---\n" + self.kubectl(
            "logs", "-n", SYSTEM_NAMESPACE, "-l", f"app.kubernetes.io/component={c}", f"--tail={tail}",
            check=False).stdout for c in ("operator", "agent"))

    # ---- real processes ---------------------------------------------------------------------------
    def workspace_pids(self, workspace: str, user: str) -> list[int]:
        """Host pids of the workspace's own container (not its sandbox's pause process): those whose
        environment names the workspace, as the operator's pod sets it."""
        assert self.node is not None
        status = self.status("workspace", workspace, f"lab-{user}")
        if not status.get("podUID"):
            return []
        return [pid for pid in self.node.pod_pids(status["podUID"])
                if process_environ(Path("/proc"), pid).get("LABKEEPER_WORKSPACE") == workspace]

    # ---- a power cut ----------------------------------------------------------------------------
    def power_cut(self, *, wipe_host: bool = True) -> None:
        """The node loses power: every process of it dies at once, the operator and agent with it (as pods, or
        SIGKILLed as processes); with `wipe_host` its /etc accounts and /home go too. The control plane
        (etcd) and the data root stay."""
        assert self.node is not None
        if self.operator:
            self.operator.kill()
        if self.agent:
            self.agent.kill()
        self.node.power_cut()
        if wipe_host:
            self.node.wipe_accounts_and_homes()

    def power_on(self) -> float:
        """The node boots; the operator and agent processes (if this lab runs them) start again. Returns the
        wall-clock time the kubelet was started."""
        assert self.node is not None
        kubelet_started = self.node.power_on()
        if self.operator:
            self.operator.start()
        if self.agent:
            self.agent.start()
        return kubelet_started

    def diagnostics(self) -> str:
        parts = [self.cluster.log_tails(10)]
        if self.node:
            parts.append(self.node.log_tails(30))
        if self.operator:
            parts += ["--- operator ---", self.operator.log_tail(40)]
        if self.agent:
            parts += ["--- agent ---", self.agent.log_tail(3000)]
        return "\n".join(parts)
