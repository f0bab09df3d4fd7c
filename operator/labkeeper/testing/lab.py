"""A whole lab for tests and benchmarks: a LocalCluster with chosen nodes, the CRDs, a policy,
and the operator as a real subprocess, plus the small verbs scenarios are written in."""

from __future__ import annotations

import copy
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml

from labkeeper.api.kinds import API_VERSION
from labkeeper.api.policy import POLICY_CONFIGMAP
from labkeeper.testing.cluster import NVIDIA_RUNTIME_CLASS, REPO_ROOT, LocalCluster, NodeSpec, manifest
from labkeeper.testing.processes import SYSTEM_NAMESPACE, OperatorProcess, wait_for


def example_policy() -> dict:
    """The policy in examples/policy.yaml, as a dict (the ConfigMap's `policy.yaml` key)."""
    configmap = yaml.safe_load((REPO_ROOT / "examples" / "policy.yaml").read_text())
    return yaml.safe_load(configmap["data"]["policy.yaml"])


def policy_configmap(policy: dict) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": POLICY_CONFIGMAP, "namespace": SYSTEM_NAMESPACE},
            "data": {"policy.yaml": yaml.safe_dump(policy, sort_keys=False)}}


def gpuuser(name: str, tier: str = "student", **spec) -> dict:
    return {"apiVersion": API_VERSION, "kind": "GPUUser", "metadata": {"name": name},
            "spec": {"displayName": name.title(), "tier": tier, **spec}}


def workspace(name: str, user: str, *, profile: str = "none", count: int = 1, image: str = "busybox",
              state: str = "Running", **spec) -> dict:
    body: dict = {"image": image, "state": state, "cpu": spec.pop("cpu", "100m"), "memory": spec.pop("memory", "256Mi")}
    if profile != "none":
        body["gpu"] = {"profile": profile, "count": count}
    body.update(spec)
    return {"apiVersion": API_VERSION, "kind": "Workspace", "metadata": {"name": name, "namespace": f"lab-{user}"},
            "spec": body}


class Lab:
    def __init__(self, nodes: Sequence[NodeSpec], policy: dict | None = None, workdir: Path | None = None,
                 operator_args: Sequence[str] = ()) -> None:
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="labkeeper-lab-"))
        self.cluster = LocalCluster(self.workdir / "cluster", nodes, preload=[REPO_ROOT / "crds"])
        self.policy = copy.deepcopy(policy) if policy is not None else example_policy()
        self.operator_args = ["--no-require-host", "--data-root", "/data", "--lease-duration", "3",
                              "--kubelet-settle", "2", *operator_args]
        self.operator: OperatorProcess | None = None

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> Lab:
        self.cluster.start()
        self.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        self.apply(NVIDIA_RUNTIME_CLASS)
        self.kubectl("create", "namespace", SYSTEM_NAMESPACE)
        self.set_policy(self.policy)
        logdir = self.workdir / "operator"
        logdir.mkdir(exist_ok=True)
        self.operator = OperatorProcess(self.cluster, logdir, *self.operator_args).start()
        return self

    def stop(self) -> None:
        if self.operator:
            self.operator.stop()
        self.cluster.stop()

    # ---- verbs ------------------------------------------------------------------------------
    def kubectl(self, *args: str, **kwargs):
        return self.cluster.kubectl(*args, **kwargs)

    def apply(self, *docs: dict, kubeconfig: str | Path | None = None):
        return self.kubectl("apply", "-f", "-", input=manifest(*docs), kubeconfig=kubeconfig)

    def set_policy(self, policy: dict) -> None:
        self.policy = copy.deepcopy(policy)
        self.apply(policy_configmap(policy))

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        args = ["get", kind, name, "-o", "json"] + (["-n", namespace] if namespace else [])
        result = self.kubectl(*args, check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def items(self, kind: str, *selectors: str) -> list[dict]:
        return json.loads(self.kubectl("get", kind, *selectors, "-o", "json").stdout)["items"]

    def status(self, kind: str, name: str, namespace: str | None = None) -> dict:
        obj = self.get(kind, name, namespace)
        return (obj or {}).get("status") or {}

    def add_users(self, *users: dict, timeout: float = 120) -> None:
        self.apply(*users)
        names = [u["metadata"]["name"] for u in users]
        wait_for(lambda: all(self.status("gpuuser", n).get("phase") == "Ready" for n in names),
                 timeout=timeout, what=f"users {names} Ready")

    def wait_phase(self, name: str, user: str, *phases: str, timeout: float = 60) -> dict:
        return wait_for(lambda: (s := self.status("workspace", name, f"lab-{user}")).get("phase") in phases and s,
                        timeout=timeout, what=f"workspace {user}/{name} in {phases}")

    def log_tail(self, lines: int = 60) -> str:
        return self.operator.log_tail(lines) if self.operator else ""
