"""`labctl admin doctor`: one check per thing the lab needs; each failure says how to fix it."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from labkeeper.cli.session import SYSTEM_NAMESPACE, Session
from labkeeper.cli.views import human_duration, parse_time

CRDS = ("gpuusers.labkeeper.io", "workspaces.labkeeper.io", "sharedcaches.labkeeper.io", "modelstores.labkeeper.io")
OPERATOR_LEASE = "labkeeper-operator"
AGENT_SELECTOR = "app.kubernetes.io/component=agent"
RUNTIME_CLASS = "nvidia"
# a leader renews well inside its lease; past this many lease durations nobody is leading
LEASE_STALE_FACTOR = 2.0
LEASE_SLACK = dt.timedelta(seconds=10)


@dataclass(frozen=True)
class Check:
    name: str
    state: str  # ok | fail | warn | skip
    detail: str
    fix: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def render(checks: list[Check]) -> list[str]:
    marks = {"ok": "ok  ", "fail": "FAIL", "warn": "warn", "skip": "skip"}
    lines = []
    for c in checks:
        lines.append(f"[{marks[c.state]}] {c.name}: {c.detail}")
        if c.fix and c.state in ("fail", "warn"):
            lines += [f"       fix: {line}" if i == 0 else f"            {line}" for i, line in enumerate(c.fix.splitlines())]
    failed = sum(c.state == "fail" for c in checks)
    lines.append(f"{failed} check(s) failed" if failed else "all checks passed")
    return lines


def check_api(s: Session) -> Check:
    try:
        version = k8s.VersionApi(s.kube.api).get_code(_request_timeout=10)
    except Exception as err:
        return Check("API server", "fail", f"not reachable at {s.kube.api.configuration.host}: {str(err)[:160]}",
                     "start the cluster (k3s: `sudo systemctl start k3s`) and check the kubeconfig's server address")
    return Check("API server", "ok", f"{s.kube.api.configuration.host} answers (Kubernetes {version.git_version})")


def check_crds(s: Session) -> Check:
    api = k8s.ApiextensionsV1Api(s.kube.api)
    missing, unready = [], []
    for name in CRDS:
        try:
            crd = api.read_custom_resource_definition(name)
        except ApiException as err:
            if err.status == 404:
                missing.append(name)
                continue
            raise
        conditions = {c.type: c.status for c in (crd.status.conditions or [])} if crd.status else {}
        if conditions.get("Established") != "True":
            unready.append(name)
    if missing or unready:
        detail = "; ".join(filter(None, [f"missing: {', '.join(missing)}" if missing else "",
                                         f"not established: {', '.join(unready)}" if unready else ""]))
        return Check("CRDs", "fail", detail,
                     "kubectl apply --server-side -f crds/   (or: helm upgrade --install labkeeper charts/labkeeper "
                     "-n labkeeper-system --create-namespace)")
    return Check("CRDs", "ok", f"{len(CRDS)} labkeeper.io CRDs established")


def check_operator(s: Session, now: dt.datetime) -> Check:
    fix = ("kubectl -n labkeeper-system get pods -l app.kubernetes.io/component=operator; "
           "kubectl -n labkeeper-system logs deploy/labkeeper-operator\n"
           "(outside a cluster: python -m labkeeper operator --kubeconfig FILE)")
    lease = s.kube.get("Lease", OPERATOR_LEASE, SYSTEM_NAMESPACE)
    if lease is None:
        return Check("operator", "fail", f"no Lease {SYSTEM_NAMESPACE}/{OPERATOR_LEASE}: no operator has ever led", fix)
    spec = lease.get("spec") or {}
    renewed = parse_time(spec.get("renewTime"))
    duration = dt.timedelta(seconds=spec.get("leaseDurationSeconds") or 15)
    holder = spec.get("holderIdentity") or "nobody"
    if renewed is None or now - renewed > duration * LEASE_STALE_FACTOR + LEASE_SLACK:
        ago = human_duration(now - renewed) if renewed else "never"
        return Check("operator", "fail", f"the leader lease (held by {holder}) was last renewed {ago} ago", fix)
    return Check("operator", "ok", f"{holder} leads (lease renewed {human_duration(now - renewed)} ago)")


def check_agent(s: Session) -> Check:
    fix = ("helm upgrade --install labkeeper charts/labkeeper -n labkeeper-system (the chart runs the agent "
           "DaemonSet); then kubectl -n labkeeper-system describe ds -l app.kubernetes.io/component=agent")
    daemonsets = k8s.AppsV1Api(s.kube.api).list_namespaced_daemon_set(SYSTEM_NAMESPACE, label_selector=AGENT_SELECTOR)
    if not daemonsets.items:
        return check_agent_processes(s, fix)
    problems = []
    for ds in daemonsets.items:
        st = ds.status
        if (st.number_ready or 0) < (st.desired_number_scheduled or 0) or not st.desired_number_scheduled:
            problems.append(f"{ds.metadata.name}: {st.number_ready or 0}/{st.desired_number_scheduled or 0} ready")
    if problems:
        return Check("node agent", "fail", "; ".join(problems), fix)
    ready = sum(ds.status.number_ready or 0 for ds in daemonsets.items)
    return Check("node agent", "ok", f"{ready} agent pod(s) ready")


def reporting_nodes(objects: list[dict]) -> set[str]:
    """Nodes whose agent has written its entry into a GPUUser's, SharedCache's or ModelStore's status.nodes."""
    return {n["node"] for o in objects for n in (o.get("status") or {}).get("nodes") or [] if n.get("node")}


def check_agent_processes(s: Session, fix: str) -> Check:
    """No DaemonSet: agents may run as processes outside the cluster (`make dev`, a systemd unit). Their only
    trace in the API is each node's entry in the status of the objects they provision."""
    objects: list[dict] = []
    for kind in ("GPUUser", "SharedCache", "ModelStore"):
        try:
            objects += s.kube.list(kind)
        except ApiException as err:
            if err.status != 404:  # no CRD yet: the CRDs check says so
                raise
    reported = reporting_nodes(objects)
    if not reported:
        return Check("node agent", "fail", f"no agent DaemonSet in {SYSTEM_NAMESPACE}, and no agent running "
                     "elsewhere has reported on any GPUUser, SharedCache or ModelStore", fix)
    silent = sorted({n["metadata"]["name"] for n in s.kube.list("Node")} - reported)
    where = f"no agent DaemonSet in {SYSTEM_NAMESPACE}; agents outside the cluster (as `make dev` runs them) " \
            f"have reported for {', '.join(sorted(reported))}"
    if silent:
        return Check("node agent", "warn", f"{where}; none for {', '.join(silent)}",
                     "start an agent for each node (python -m labkeeper agent --node NAME ...), or install the chart")
    return Check("node agent", "ok", where)


def gpu_resources(nodes: list[dict]) -> dict[str, dict[str, str]]:
    """node → {nvidia resource: allocatable} for nodes that advertise any GPU or MIG slice."""
    found = {}
    for node in nodes:
        alloc = (node.get("status") or {}).get("allocatable") or {}
        gpus = {k: v for k, v in alloc.items()
                if (k == "nvidia.com/gpu" or k.startswith("nvidia.com/mig-")) and str(v) not in ("0", "")}
        if gpus:
            found[node["metadata"]["name"]] = gpus
    return found


def check_gpus(s: Session) -> Check:
    nodes = s.kube.list("Node")
    found = gpu_resources(nodes)
    if not found:
        return Check("GPU resources", "fail", f"none of {len(nodes)} node(s) advertises nvidia.com/mig-* or nvidia.com/gpu",
                     "install the NVIDIA device plugin with MIG strategy \"mixed\" (GPU Operator: "
                     "--set mig.strategy=mixed) and create MIG instances (nvidia-smi mig -cgi 19,19,14,9 -C)")
    parts = [f"{node}: " + ", ".join(f"{v} x {k.removeprefix('nvidia.com/')}" for k, v in sorted(res.items()))
             for node, res in sorted(found.items())]
    return Check("GPU resources", "ok", "; ".join(parts))


def check_runtime_class(s: Session) -> Check:
    try:
        k8s.NodeV1Api(s.kube.api).read_runtime_class(RUNTIME_CLASS)
    except ApiException as err:
        if err.status != 404:
            raise
        return Check("nvidia RuntimeClass", "fail", f"RuntimeClass {RUNTIME_CLASS!r} does not exist; GPU pods cannot start",
                     "on k3s install nvidia-container-toolkit and restart k3s (it registers the runtime), then: "
                     "kubectl apply -f - <<< '{\"apiVersion\":\"node.k8s.io/v1\",\"kind\":\"RuntimeClass\","
                     "\"metadata\":{\"name\":\"nvidia\"},\"handler\":\"nvidia\"}'  (or helm --set runtimeClass.create=true)")
    return Check("nvidia RuntimeClass", "ok", f"RuntimeClass {RUNTIME_CLASS!r} exists")


def check_acl(data_root: Path | None) -> Check:
    fix = ("mount the data disk with ACL support (ext4 and xfs have it; remount with -o acl where it was turned off) "
           "and install the acl package (setfacl)")
    if data_root is None:
        return Check("ACLs on the data root", "skip", "run on the server with --data-root /data to test it")
    if not data_root.is_dir():
        return Check("ACLs on the data root", "fail", f"{data_root} is not a directory", "mount the data disk there")
    if shutil.which("setfacl") is None:
        return Check("ACLs on the data root", "fail", "setfacl is not installed", fix)
    try:
        with tempfile.NamedTemporaryFile(dir=data_root, prefix=".labctl-acl-") as probe:
            result = subprocess.run(["setfacl", "-m", "u:65534:r", probe.name], capture_output=True, text=True,
                                    timeout=10, check=False)
    except OSError as err:
        return Check("ACLs on the data root", "fail", f"cannot write a probe file in {data_root}: {err.strerror}",
                     "run doctor as root (or as a user who may write there)")
    if result.returncode != 0:
        return Check("ACLs on the data root", "fail",
                     f"{data_root} does not take ACLs: {result.stderr.strip()[:120]}", fix)
    return Check("ACLs on the data root", "ok", f"{data_root} supports POSIX ACLs")


def _guard(name: str, fn: Callable[[], Check]) -> Check:
    try:
        return fn()
    except ApiException as err:
        reason = "Forbidden: doctor needs an admin kubeconfig" if err.status == 403 else f"{err.status} {err.reason}"
        return Check(name, "fail", f"cannot check: {reason}", "run it with the admin kubeconfig")
    except Exception as err:
        return Check(name, "fail", f"cannot check: {str(err)[:160]}")


def run_checks(s: Session, data_root: Path | None, now: dt.datetime | None = None) -> list[Check]:
    now = now or dt.datetime.now(dt.UTC)
    api = _guard("API server", lambda: check_api(s))
    if api.state != "ok":
        names = ("CRDs", "operator", "node agent", "GPU resources", "nvidia RuntimeClass")
        return [api, *[Check(n, "skip", "the API server is not reachable") for n in names], check_acl(data_root)]
    return [
        api,
        _guard("CRDs", lambda: check_crds(s)),
        _guard("operator", lambda: check_operator(s, now)),
        _guard("node agent", lambda: check_agent(s)),
        _guard("GPU resources", lambda: check_gpus(s)),
        _guard("nvidia RuntimeClass", lambda: check_runtime_class(s)),
        check_acl(data_root or (Path(os.environ["LABKEEPER_DATA_ROOT"]) if os.environ.get("LABKEEPER_DATA_ROOT") else None)),
    ]
