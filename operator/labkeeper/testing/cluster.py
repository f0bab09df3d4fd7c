"""A real Kubernetes control plane on one machine: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake nodes that advertise MIG resources and run bound pods).

kwok also plays the kubelet's streaming side: the apiserver sends `exec`, `logs` and `port-forward`
for a fake pod to kwok's server, which answers them as `serve_pod()` configured that pod (a local
command in a directory, a CRI-format log file, local target ports). Pods without such a
configuration get an error, so nothing runs on this machine unless a test asked for it.

Used by the test suite (one per session) and by `make dev` (`python -m labkeeper.testing.cluster up`).
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from labkeeper.testing.kwokstages import pod_stages
from labkeeper.testing.logged import LoggedProcess, check_running, log_tails
from labkeeper.testing.pki import CertificateAuthority, KeyPair, service_account_keys

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO_ROOT / "hack" / "k8s-bin.sh"
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
SERVICE_CIDR = "10.96.0.0/16"
KWOK_API = "kwok.x-k8s.io/v1alpha1"
# kwok --enable-crds watches these but does not install them; a schema-less CRD is enough for kwok's
# typed client, and per-pod objects (rather than a --config file) let each test configure its own pods
STREAMING_KINDS = (("Exec", "execs", "exec"), ("Logs", "logs", "logs"), ("PortForward", "portforwards", "portforward"))

# MIG "mixed" strategy resource names, as the NVIDIA device plugin advertises them.
# what k3s with the NVIDIA container toolkit provides; kwok ignores the handler
NVIDIA_RUNTIME_CLASS = {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": "nvidia"},
                        "handler": "nvidia"}

NODE_PROFILES: dict[str, dict[str, str]] = {
    # one H100 80GB in the all-balanced layout: 2 x 1g.10gb + 1 x 2g.20gb + 1 x 3g.40gb
    "h100-balanced": {
        "nvidia.com/mig-1g.10gb": "2",
        "nvidia.com/mig-2g.20gb": "1",
        "nvidia.com/mig-3g.40gb": "1",
    },
    # one H100 80GB in the all-1g.10gb layout
    "h100-all-1g": {"nvidia.com/mig-1g.10gb": "7"},
    # two whole GPUs, MIG off
    "full-gpus": {"nvidia.com/gpu": "2"},
    "cpu-only": {},
}
BASE_CAPACITY = {"cpu": "64", "memory": "512Gi", "pods": "110", "ephemeral-storage": "1Ti"}


class ClusterStartError(RuntimeError):
    pass


class KubectlError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{' '.join(self.cmd[2:])} failed (exit {self.returncode}): {self.stderr.strip()}"


def manifest(*docs: dict) -> str:
    """Objects for `kubectl apply -f -`, as JSON documents: PyYAML writes a string such as `123e45`
    unquoted (a string to YAML 1.1) and kubectl reads it back as a number."""
    return "\n---\n".join(json.dumps(doc) for doc in docs) + "\n"


_HANDED_OUT: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free localhost port below the kernel's ephemeral range: a port the kernel handed out (bind to 0)
    can be taken again by any outgoing connection before the component binds it, and with a control
    plane's worth of client connections that happens ("bind: address already in use")."""
    low, _ = _ephemeral_range()
    candidates = list(range(max(1024, low - 12000), low)) if low > 3000 else []
    random.shuffle(candidates)
    for port in candidates[:200]:
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def binary_dir() -> Path:
    """Build (or find in the cache) the pinned component binaries; returns their directory."""
    override = os.environ.get("LABKEEPER_BIN_DIR")
    if override:
        return Path(override)
    result = subprocess.run(["bash", str(BUILD_SCRIPT)], check=False, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise ClusterStartError(f"building the control-plane binaries failed (exit {result.returncode})")
    return Path(result.stdout.strip().splitlines()[-1])


@dataclass
class NodeSpec:
    name: str
    profile: str = "h100-balanced"
    labels: dict[str, str] = field(default_factory=dict)

    def manifest(self) -> dict:
        if self.profile not in NODE_PROFILES:
            raise ValueError(f"node {self.name}: unknown profile {self.profile!r}; valid: {sorted(NODE_PROFILES)}")
        capacity = {**BASE_CAPACITY, **NODE_PROFILES[self.profile]}
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "annotations": {FAKE_NODE_ANNOTATION: "fake"},
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "type": "kwok",
                    "labkeeper.io/node-profile": self.profile,
                    **({"nvidia.com/gpu.present": "true"} if self.profile != "cpu-only" else {}),
                    **self.labels,
                },
            },
            "status": {"capacity": capacity, "allocatable": capacity},
        }


def streaming_crds() -> list[dict]:
    return [
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.kwok.x-k8s.io"},
            "spec": {
                "group": "kwok.x-k8s.io",
                "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": singular},
                "scope": "Namespaced",
                "versions": [{
                    "name": "v1alpha1", "served": True, "storage": True, "subresources": {"status": {}},
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                }],
            },
        }
        for kind, plural, singular in STREAMING_KINDS
    ]


def cri_log(lines: Iterable[str], stream: str = "stdout") -> str:
    """Lines in the CRI container log format, which is what kwok (like the kubelet) reads."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
    return "".join(f"{stamp} {stream} F {line}\n" for line in lines)


def kubeconfig_dict(server: str, ca_pem: bytes, user: str, pair: KeyPair) -> dict:
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "labkeeper-local", "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b64(pair.cert_pem), "client-key-data": b64(pair.key_pem)}}],
        "contexts": [{"name": user, "context": {"cluster": "labkeeper-local", "user": user}}],
        "current-context": user,
    }


class LocalCluster:
    """Start with `start()` (or as a context manager); `stop()` ends exactly the processes it started."""

    def __init__(
        self,
        workdir: Path | None = None,
        nodes: Sequence[NodeSpec] = (NodeSpec("gpu-node-1", "h100-balanced"),),
        *,
        bin_dir: Path | None = None,
        detach: bool = False,
        preload: Sequence[Path] = (),
        streaming: bool = True,
        pod_address: str | None = None,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="labkeeper-cluster-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logdir = self.workdir / "logs"
        self.logdir.mkdir(exist_ok=True)
        self.nodes = list(nodes)
        self.bin_dir = bin_dir
        self.detach = detach
        # manifests applied before the controllers start, so their discovery (e.g. quota counting
        # of custom resources) sees them from the first sync
        self.preload = list(preload)
        self.streaming = streaming
        # where pods of a real node reach the apiserver (an address on a bridge the run creates, relayed to
        # loopback): the apiserver then advertises it and keeps the `kubernetes` Service's endpoints
        self.pod_address = pod_address
        self.processes: list[LoggedProcess] = []
        self.real_nodes: list = []
        self.ca = CertificateAuthority()
        self.server = ""
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.startup_seconds = 0.0

    # ---- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> LocalCluster:
        started = time.monotonic()
        self.bin_dir = self.bin_dir or binary_dir()
        background = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        try:
            self._start_etcd()
            self._start_apiserver()
            self._wait_ready(timeout)
            # kwok's watches retry until these exist, so they need not hold up the rest of the start
            streaming_crds_applied = background.submit(self._apply_streaming_crds) if self.streaming else None
            self._apply_preload()
            self._start_controllers()
            self.create_nodes(self.nodes)
            self.wait_nodes_ready(timeout)
            self._wait_probe_pod(timeout)
            if streaming_crds_applied is not None:
                streaming_crds_applied.result(timeout)
        except Exception as err:
            tails = self.log_tails()
            self.stop()
            raise ClusterStartError(f"local control plane did not start: {err}\n{tails}") from err
        finally:
            background.shutdown(wait=False)
        self.startup_seconds = time.monotonic() - started
        self._write_state()
        return self

    def stop(self) -> None:
        try:
            for node in reversed(self.real_nodes):
                node.cleanup()
        finally:
            # a real node that failed to stop cleanly must not leave the control plane running too
            self.real_nodes.clear()
            for proc in reversed(self.processes):
                self._terminate(proc)
            self.processes.clear()
        state = self.workdir / "state.json"
        if state.exists():
            state.unlink()

    def _terminate(self, proc: LoggedProcess, grace: float = 10.0) -> None:
        if proc.popen.poll() is not None:
            return
        proc.popen.send_signal(signal.SIGTERM)
        try:
            proc.popen.wait(grace)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(5)

    def cleanup(self) -> None:
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    @property
    def pids(self) -> list[int]:
        return [p.popen.pid for p in self.processes]

    # ---- processes ---------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> LoggedProcess:
        proc = LoggedProcess.start(name, [str(self.bin_dir / args[0]), *args[1:]], self.logdir, self.workdir,
                                   new_session=self.detach)
        self.processes.append(proc)
        return proc

    def process(self, name: str) -> LoggedProcess:
        return next(p for p in self.processes if p.name == name)

    def _start_etcd(self) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn(
            "etcd",
            [
                "etcd", "--name=default", f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}", f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}", "--unsafe-no-fsync",
                "--log-level=warn", "--quota-backend-bytes=4294967296",
            ],
        )

    def _write_pki(self) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(exist_ok=True)
        self.ca_cert, self.ca_key = self.ca.pair.write(pki, "ca")
        serving = self.ca.issue(
            "kube-apiserver",
            server_names=("127.0.0.1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                          "kubernetes.default.svc.cluster.local", "10.96.0.1",
                          *([self.pod_address] if self.pod_address else [])),
            client=False,
        )
        self.serving_cert, self.serving_key = serving.write(pki, "apiserver")
        self.sa_pub, self.sa_key = service_account_keys().write(pki, "sa")
        self.kubelet_client_cert, self.kubelet_client_key = self.ca.issue(
            "kube-apiserver-kubelet-client", ("system:masters",)
        ).write(pki, "kubelet-client")
        self.admin_pair = self.ca.issue("labkeeper-admin", ("system:masters",))
        self.kubeconfig.write_text(yaml.safe_dump(kubeconfig_dict(self.server, self.ca.pair.cert_pem, "admin", self.admin_pair)))

    def _start_apiserver(self, port: int | None = None) -> None:
        self.apiserver_port = port or free_port()
        self.server = f"https://127.0.0.1:{self.apiserver_port}"
        if not hasattr(self, "ca_cert"):
            self._write_pki()
        self._spawn(
            "kube-apiserver",
            [
                "kube-apiserver", f"--etcd-servers={self.etcd_url}", "--bind-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}", f"--advertise-address={self.pod_address or '127.0.0.1'}",
                f"--endpoint-reconciler-type={'lease' if self.pod_address else 'none'}", f"--cert-dir={self.workdir / 'pki'}",
                f"--tls-cert-file={self.serving_cert}", f"--tls-private-key-file={self.serving_key}",
                f"--client-ca-file={self.ca_cert}", f"--service-account-key-file={self.sa_pub}",
                f"--service-account-signing-key-file={self.sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--authorization-mode=Node,RBAC", f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,Priority,"
                "DefaultTolerationSeconds,ResourceQuota,MutatingAdmissionWebhook,ValidatingAdmissionWebhook,"
                "ValidatingAdmissionPolicy,NodeRestriction",
                "--allow-privileged=true", f"--kubelet-client-certificate={self.kubelet_client_cert}",
                f"--kubelet-client-key={self.kubelet_client_key}", f"--kubelet-certificate-authority={self.ca_cert}",
                # a node's address, never its name: a name would be looked up in this machine's DNS
                "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
                "--profiling=false", "--v=1",
            ],
        )

    def _apply_preload(self) -> None:
        if self.preload:
            self.kubectl("apply", "--server-side", "--force-conflicts",
                         *[arg for path in self.preload for arg in ("-f", str(path))])

    def _apply_streaming_crds(self) -> None:
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=manifest(*streaming_crds()))

    def _start_controllers(self) -> None:
        kc = str(self.kubeconfig)
        self._spawn(
            "kube-controller-manager",
            [
                "kube-controller-manager", f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}", "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
                f"--service-account-private-key-file={self.sa_key}", f"--root-ca-file={self.ca_cert}",
                f"--cluster-signing-cert-file={self.ca_cert}", f"--cluster-signing-key-file={self.ca_key}",
                "--use-service-account-credentials=true", "--leader-elect=false",
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route,-persistentvolume-binder,"
                "-attachdetach,-persistentvolume-expander,-ephemeral-volume,-pv-protection,-pvc-protection",
                f"--service-cluster-ip-range={SERVICE_CIDR}", "--concurrent-gc-syncs=10", "--resource-quota-sync-period=10s",
                "--node-monitor-grace-period=40s", "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                "kube-scheduler", f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}", "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
                "--leader-elect=false", "--v=1",
            ],
        )
        self._start_kwok()

    def _start_kwok(self) -> None:
        self.kwok_port = getattr(self, "kwok_port", None) or free_port()
        streaming = []
        if self.streaming:
            # the apiserver verifies this against --kubelet-certificate-authority; kwok ignores its client cert
            cert, key = self.ca.issue("kwok-kubelet", server_names=("127.0.0.1", "localhost"), client=False).write(
                self.workdir / "pki", "kwok")
            streaming = [
                f"--server-address=127.0.0.1:{self.kwok_port}", f"--node-port={self.kwok_port}",
                f"--tls-cert-file={cert}", f"--tls-private-key-file={key}",
                "--enable-crds=" + ",".join(kind for kind, _, _ in STREAMING_KINDS),
            ]
        # kwok's own pod stages and pod-exit, which ends a fake pod's command with the exit code a test annotates
        stages = self.workdir / "kwok-stages.yaml"
        stages.write_text(pod_stages())
        self._spawn(
            "kwok",
            [
                "kwok", f"--kubeconfig={self.kubeconfig}", "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake",
                "--cidr=10.244.0.1/16", "--node-ip=127.0.0.1", "--node-lease-duration-seconds=40",
                f"--config={stages}", *streaming,
            ],
        )

    def add_real_node(self, node, timeout: float = 120.0):
        """Joins a `labkeeper.testing.realnode.RealNode` (a kubelet, containerd and runc) to this running
        cluster; `stop()` stops it first. Returns the node once it is Ready with its devices allocatable."""
        node.start(self, timeout)
        self.real_nodes.append(node)
        return node

    # ---- readiness ---------------------------------------------------------------------------
    def _check_alive(self) -> None:
        check_running(self.processes, lambda proc, code: ClusterStartError(f"{proc.name} exited with code {code}"))

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                result = self.kubectl("get", "--raw", "/readyz", check=False, timeout=10)
            except subprocess.TimeoutExpired:
                continue  # a starting apiserver on a loaded machine may not answer in 10 s; ask again
            if result.returncode == 0 and result.stdout.strip() == "ok":
                return
            time.sleep(0.3)
        raise ClusterStartError("kube-apiserver /readyz did not answer ok in time")

    def create_nodes(self, nodes: Iterable[NodeSpec]) -> None:
        docs = [n.manifest() for n in nodes]
        if docs:
            self.kubectl("apply", "-f", "-", input=manifest(*docs))

    def wait_nodes_ready(self, timeout: float = 60.0) -> None:
        names = [f"node/{n.name}" for n in self.nodes]
        if names:
            self.kubectl("wait", "--for=condition=Ready", *names, f"--timeout={int(timeout)}s", timeout=timeout + 10)

    def _wait_probe_pod(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        probe = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "labkeeper-probe", "namespace": "default"},
            "spec": {"containers": [{"name": "probe", "image": "busybox"}], "terminationGracePeriodSeconds": 0},
        }
        while time.monotonic() < deadline:
            self._check_alive()
            # the ServiceAccount admission refuses pods until the controller made the default account
            if self.kubectl("apply", "-f", "-", input=json.dumps(probe), check=False).returncode == 0:
                break
            time.sleep(0.5)
        while time.monotonic() < deadline:
            self._check_alive()
            phase = self.kubectl("get", "pod", "labkeeper-probe", "-o", "jsonpath={.status.phase}", check=False)
            if phase.stdout.strip() == "Running":
                self.kubectl("delete", "pod", "labkeeper-probe", "--wait=false", check=False)
                return
            time.sleep(0.3)
        raise ClusterStartError("probe pod did not reach Running")

    # ---- clients -----------------------------------------------------------------------------
    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120.0,
        kubeconfig: Path | str | None = None,
    ) -> subprocess.CompletedProcess:
        cmd = [str(self.bin_dir / "kubectl"), f"--kubeconfig={kubeconfig or self.kubeconfig}", *args]
        result = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise KubectlError(result.returncode, cmd, result.stdout, result.stderr)
        return result

    def user_kubeconfig(self, name: str, groups: Sequence[str] = ("labkeeper:users",)) -> Path:
        """A kubeconfig for a client certificate signed directly by the cluster CA."""
        path = self.workdir / "users" / f"{name}.kubeconfig"
        path.parent.mkdir(exist_ok=True)
        pair = self.ca.issue(name, tuple(groups))
        path.write_text(yaml.safe_dump(kubeconfig_dict(self.server, self.ca.pair.cert_pem, name, pair)))
        path.chmod(0o600)
        return path

    def api_client(self, kubeconfig: Path | str | None = None):
        from kubernetes import config

        return config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))

    # ---- kwok as the kubelet's streaming side -------------------------------------------------
    def serve_pod(
        self, namespace: str, pod: str, *, container_dir: Path | None = None, env: Mapping[str, str] | None = None,
        logs_file: Path | None = None, ports: Mapping[int, int] | None = None, timeout: float = 30.0,
    ) -> None:
        """Make kwok answer for one fake pod: exec runs the command here in `container_dir` with `env`
        added, logs read `logs_file` (CRI format, see `cri_log`), port-forward of a pod port goes to
        127.0.0.1 at the port `ports` maps it to. Returns once kwok has seen the configuration."""
        if not self.streaming:
            raise ValueError("this LocalCluster was started with streaming=False; kwok serves no pods")
        meta = {"name": pod, "namespace": namespace}
        docs = []
        if ports:
            forwards = [{"ports": [remote], "target": {"address": "127.0.0.1", "port": local}}
                        for remote, local in ports.items()]
            docs.append({"apiVersion": KWOK_API, "kind": "PortForward", "metadata": meta, "spec": {"forwards": forwards}})
        if container_dir is not None or env:
            local: dict = {"envs": [{"name": k, "value": v} for k, v in (env or {}).items()]}
            if container_dir is not None:
                local["workDir"] = str(container_dir)
            docs.append({"apiVersion": KWOK_API, "kind": "Exec", "metadata": meta, "spec": {"execs": [{"local": local}]}})
        if logs_file is None:
            logs_file = self.workdir / "pod-logs" / f"{namespace}_{pod}.log"
            logs_file.parent.mkdir(exist_ok=True)
            logs_file.touch()
        # Logs goes last: once kwok answers for it, the watches of the others have delivered too
        docs.append({"apiVersion": KWOK_API, "kind": "Logs", "metadata": meta,
                     "spec": {"logs": [{"logsFile": str(logs_file)}]}})
        self.kubectl("apply", "-f", "-", input=manifest(*docs))
        self._wait_kwok_serves(namespace, pod, timeout)

    def _wait_kwok_serves(self, namespace: str, pod: str, timeout: float) -> None:
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        url = f"https://127.0.0.1:{self.kwok_port}/containerLogs/{namespace}/{pod}/probe?tailLines=0"
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, context=context, timeout=5):
                    return
            except (urllib.error.URLError, OSError) as err:
                last = str(err)
            time.sleep(0.05)
        raise ClusterStartError(f"kwok did not pick up the streaming configuration of {namespace}/{pod}: {last}")

    def log_tails(self, lines: int = 25) -> str:
        return log_tails(self.logdir, lines)

    # ---- fault injection ---------------------------------------------------------------------
    def restart_apiserver(self) -> None:
        proc = self.process("kube-apiserver")
        self._terminate(proc)
        self.processes.remove(proc)
        self._start_apiserver(self.apiserver_port)
        self._wait_ready(60)

    # ---- make dev state ----------------------------------------------------------------------
    def _write_state(self) -> None:
        state = {
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "bin_dir": str(self.bin_dir),
            "pids": {p.name: p.popen.pid for p in self.processes},
        }
        (self.workdir / "state.json").write_text(json.dumps(state, indent=2))


def stop_detached(workdir: Path) -> list[str]:
    """End the processes a detached cluster recorded, by pid; returns what was stopped."""
    state_file = workdir / "state.json"
    if not state_file.exists():
        return []
    state = json.loads(state_file.read_text())
    stopped = []
    for name, pid in reversed(list(state["pids"].items())):
        try:
            os.kill(pid, signal.SIGTERM)
            stopped.append(f"{name} ({pid})")
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 15
    for pid in state["pids"].values():
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    state_file.unlink()
    return stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkeeper.testing.cluster")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a detached local control plane")
    up.add_argument("--dir", type=Path, required=True)
    up.add_argument("--node", action="append", default=[], help="NAME=PROFILE (default gpu-node-1=h100-balanced)")
    down = sub.add_parser("down", help="stop the detached control plane")
    down.add_argument("--dir", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "down":
        stopped = stop_detached(args.dir)
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        return 0
    if (args.dir / "state.json").exists():
        print(f"a local control plane is already running (state in {args.dir / 'state.json'}); `make down` first")
        return 1
    nodes = [NodeSpec(*n.split("=", 1)) for n in args.node] or [NodeSpec("gpu-node-1", "h100-balanced")]
    cluster = LocalCluster(args.dir, nodes, detach=True)
    cluster.start()
    print(f"local control plane up in {cluster.startup_seconds:.1f}s at {cluster.server}")
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
