"""A real node beside LocalCluster's kwok nodes: its own containerd, a kubelet with a client certificate
for `system:node:<name>` signed by the cluster CA, a bridge CNI network on a private /24, and the fake
NVIDIA device plugin, so a workspace is a real container running as its user.

Both containerd and the kubelet run in a private mount namespace whose `/etc`, `/home`, `/run`,
`/var/lib` and `/var/log` are throwaway directories of this node: hostPath volumes (a workspace's
`/etc/passwd`, the agent pod's `/etc` and `/home`) and the kubelet's fixed paths (its device-plugin
socket, pod logs, network namespaces) resolve there and change nothing on this machine. The data root
is a directory of the node, the same path inside and outside the namespace.

`stop()` kills what the node started (the containers in its cgroup, containerd and its shims, the
kubelet, the namespace), then undoes what the kubelet and the CNI plugin change on the host: sysctls,
iptables chains, the bridge, the node's cgroups."""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from labkeeper.testing.devices import ACTIVITY_FILE, MigDevice, mig_devices
from labkeeper.testing.images import Image, pause_image, workspace_image
from labkeeper.testing.logged import LoggedProcess, check_running, log_tails
from labkeeper.testing.pki import CertificateAuthority

CNI_BIN = "/usr/lib/cni"
# what a kubelet and the bridge plugin change on the host, restored on stop
HOST_SYSCTLS = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops", "net/ipv4/ip_forward",
                "net/ipv4/conf/all/route_localnet", "net/bridge/bridge-nf-call-iptables")
CGROUP_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd",
                      "unified")
# the CPU weight of the node's cgroup beside this machine's other work (cgroup v1 cpu.shares; a process has 1024):
# the node stands in for a whole machine, and with the default weight of one process a host busy with other suites
# (load 35 on 2 cores, seen) left all its pods together 0.06 cores, so a CPU burner in a workspace measured as idle
NODE_CPU_SHARES = 8192
# hold pods run labkeeper's hold image; on this node it is the local pause image under that name
HOLD_IMAGE_ALIAS = "docker.io/rancher/mirrored-pause:3.6"
# the directories of the node that replace the machine's own inside its mount namespace
PRIVATE_DIRS = ("etc", "home", "run", "var/lib", "var/log")
DEFAULT_MIG_LAYOUT = {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}
REQUIRED_TOOLS = ("containerd", "runc", "ctr", "unshare", "nsenter", "iptables", "ip", "mount", "socat", "conntrack")


class RealNodeError(RuntimeError):
    pass


def missing_tools() -> list[str]:
    """What this machine lacks to run a real node (hack/deps.sh installs it)."""
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if not Path(CNI_BIN, "bridge").exists():
        missing.append(f"{CNI_BIN}/bridge (containernetworking-plugins)")
    return missing


@dataclass
class RealNode:
    """Call `start(cluster)` (LocalCluster.add_real_node does) and `stop()`; `host_root` holds the
    node's `/etc` and `/home` as the agent sees them, `data_root` its data root."""

    name: str = "real-node-1"
    mig_layout: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_MIG_LAYOUT))
    subnet_octet: int = 0
    taints: Sequence[dict] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    images: Sequence[Image] = ()
    # pods that talk to the API server (the chart's operator and agent): kube-proxy routes the `kubernetes`
    # Service to the bridge's gateway, where a relay passes connections on to the apiserver on loopback
    # (the cluster must advertise `gateway`: LocalCluster(pod_address=node.gateway))
    pods_reach_apiserver: bool = False

    def __post_init__(self) -> None:
        # short: unix socket paths (the device plugin's, seen from outside) must stay under 108 bytes
        self.workdir = Path(tempfile.mkdtemp(prefix="lkn-", dir="/tmp"))
        self.octet = self.subnet_octet or _free_octet()
        self.subnet = f"10.89.{self.octet}.0/24"
        self.gateway = f"10.89.{self.octet}.1"
        self.bridge = f"lk{self.octet}-{self.name[-6:]}"[:15]
        # unique per node, so stopping one kills only its own containers
        self.cgroup = f"labkeeper-{self.name}-{self.workdir.name.removeprefix('lkn-')}"
        self.host_root = self.workdir / "host"
        self.data_root = self.host_root / "data"
        self.logdir = self.workdir / "logs"
        self.processes: list[LoggedProcess] = []
        self.holder: subprocess.Popen | None = None
        self.devices: list[MigDevice] = mig_devices(self.mig_layout)
        self.device_plugin: LoggedProcess | None = None
        self.workspace_image: Image | None = None
        self._sysctls: dict[str, str] = {}
        self._chains: dict[tuple[str, str], set[str]] = {}
        self.startup_seconds = 0.0

    # ---- paths as seen from outside the node's mount namespace --------------------------------
    def private(self, path: str) -> Path:
        """Where a path of the node's view (e.g. /var/lib/kubelet) lies on this machine."""
        for top in sorted(PRIVATE_DIRS, key=len, reverse=True):
            if path == f"/{top}" or path.startswith(f"/{top}/"):
                base = self.host_root if top in ("etc", "home") else self.workdir / "private"
                return base / path.lstrip("/")
        raise ValueError(f"{path} is not private to node {self.name}; private: {['/' + d for d in PRIVATE_DIRS]}")

    @property
    def device_plugin_dir(self) -> Path:
        return self.private("/var/lib/kubelet/device-plugins")

    @property
    def activity_file(self) -> str:
        """The node's stand-in for NVML (the device plugin writes it), as the node and its pods see it; an agent
        reads it with `--sampler file:<this>`."""
        return ACTIVITY_FILE

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self, cluster, timeout: float = 90.0) -> RealNode:
        started = time.monotonic()
        self.cluster = cluster
        self.bin_dir = Path(cluster.bin_dir)
        missing = missing_tools()
        if missing:
            raise RealNodeError(f"real node {self.name}: missing on this machine: {', '.join(missing)} "
                                "(bash hack/deps.sh installs them)")
        self.logdir.mkdir(parents=True, exist_ok=True)
        try:
            self._record_host_state()
            self._prepare_dirs()
            self._enter_namespace()
            self._write_cni()
            pause = pause_image()
            self.workspace_image = workspace_image()
            self._start_containerd(pause)
            self._import_images([pause, self.workspace_image, *self.images])
            self._tag(pause.name, HOLD_IMAGE_ALIAS)
            # the bridge's gateway is the node's address: the kubelet refuses a loopback node IP
            self._create_bridge()
            if self.pods_reach_apiserver:
                self._start_relay(cluster.apiserver_port)
            self._start_kubelet(cluster.ca, cluster.server)
            self._wait_registered(timeout)
            if self.pods_reach_apiserver:
                self._start_kube_proxy(cluster.ca, cluster.server)
            self._start_device_plugin()
            self._wait_ready(timeout)
        except Exception as err:
            tails = self.log_tails()
            self.stop()
            raise RealNodeError(f"real node {self.name} did not start: {err}\n{tails}") from err
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Every step runs even when one before it failed (a step left out leaves a kubelet, containers or
        host changes behind); the first failure is raised at the end."""
        failures: list[Exception] = []

        def step(action) -> None:
            try:
                action()
            except Exception as err:
                failures.append(err)

        if self.device_plugin:
            step(lambda plugin=self.device_plugin: _terminate(plugin.popen))
            self.device_plugin = None
        step(self._kill_containers)
        for proc in reversed(self.processes):
            step(lambda p=proc: _terminate(p.popen))
        self.processes.clear()
        step(self._kill_namespace)
        step(self._remove_cgroups)
        step(self._restore_host_state)
        shutil.rmtree(self.workdir / "private", ignore_errors=True)
        if failures:
            raise failures[0]

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # ---- a power cut and the boot after it -------------------------------------------------------
    def power_cut(self) -> None:
        """Everything of the node dies at once, as in a power cut: SIGKILL to the kubelet, containerd, its
        shims, every container, kube-proxy and the device plugin in one sweep (nothing is stopped gracefully),
        then what a reboot loses goes: the mount namespace with every mount the kubelet made, `/run`, the
        pods' cgroups, the bridge with the pods' network namespaces. Kept, as on a disk: `/etc`, `/home`,
        `/var/lib` (the kubelet's checkpoints, containerd's images) and the data root."""
        victims = {p.popen.pid for p in self.processes if p.popen.poll() is None}
        victims |= self._cgroup_pids() | self._namespace_pids()
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._kill_containers()
        self._kill_namespace()
        for proc in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(10)
        self.processes.clear()
        self.device_plugin = None
        run = self.private("/run")
        shutil.rmtree(run, ignore_errors=True)
        run.mkdir(parents=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # a cgroup is busy until its last killed process is reaped
            self._remove_cgroups()
            if not any(Path("/sys/fs/cgroup", c, self.cgroup).exists() for c in CGROUP_CONTROLLERS):
                break
            time.sleep(0.1)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)

    def wipe_accounts_and_homes(self) -> None:
        """The node's /etc accounts back to root only and /home emptied (a reinstalled or tmpfs /etc); the
        data root, where the homes' contents live, is kept."""
        for name, line in (("passwd", "root:x:0:0:root:/root:/bin/bash"), ("group", "root:x:0:"),
                           ("shadow", "root:*:19000:0:99999:7:::"), ("gshadow", "root:*::")):
            (self.host_root / "etc" / name).write_text(line + "\n")
        shutil.rmtree(self.host_root / "etc" / "profile.d", ignore_errors=True)
        shutil.rmtree(self.host_root / "home", ignore_errors=True)
        (self.host_root / "home").mkdir()

    def power_on(self, timeout: float = 90.0) -> float:
        """Boots the node again after `power_cut`, with the configuration and certificates it had; returns the
        wall-clock time (time.time()) the kubelet was started, once the node is Ready with its devices."""
        assert self.workspace_image is not None, "power_on follows a start and a power_cut"
        try:
            self.private("/run/containerd").mkdir(parents=True, exist_ok=True)
            self._make_cgroups()
            self._enter_namespace()
            self._create_bridge()
            self._start_containerd(pause_image())
            if self.pods_reach_apiserver:
                self._start_relay(self.cluster.apiserver_port)
            # first: it writes the activity file at once, before an agent pod may look for it
            self._start_device_plugin()
            kubelet_started = time.time()
            self._start_kubelet(self.cluster.ca, self.cluster.server)
            if self.pods_reach_apiserver:  # the Node object is there already: no need to wait for it
                self._start_kube_proxy(self.cluster.ca, self.cluster.server)
            # the Node still shows what the kubelet reported before the cut: wait for a heartbeat of the new one
            self._wait_ready(timeout, heartbeat_since=kubelet_started)
        except Exception as err:
            raise RealNodeError(f"real node {self.name} did not boot again: {err}\n{self.log_tails()}") from err
        return kubelet_started

    def pod_pids(self, pod_uid: str) -> list[int]:
        """Host pids of a pod's containers on this node (its sandbox's pause process included)."""
        pids: list[int] = []
        wanted = f"pod{pod_uid}"
        for directory, dirnames, _ in os.walk(Path("/sys/fs/cgroup/pids", self.cgroup)):
            if os.path.basename(directory) == wanted:
                for below, _, files in os.walk(directory):
                    if "cgroup.procs" in files:
                        with contextlib.suppress(OSError, ValueError):
                            pids += [int(p) for p in Path(below, "cgroup.procs").read_text().split()]
                dirnames.clear()
        return sorted(pids)

    # ---- host state -----------------------------------------------------------------------------
    def _record_host_state(self) -> None:
        for key in HOST_SYSCTLS:
            if Path("/proc/sys", key).exists():
                self._sysctls[key] = Path("/proc/sys", key).read_text().strip()
        for tool in ("iptables", "ip6tables"):
            for table in ("filter", "nat", "mangle"):
                self._chains[(tool, table)] = set(_chains(tool, table))

    def _restore_host_state(self) -> None:
        for key, value in self._sysctls.items():
            with contextlib.suppress(OSError):
                Path("/proc/sys", key).write_text(value)
        for (tool, table), before in self._chains.items():
            created = [c for c in _chains(tool, table) if c not in before]
            if not created:
                continue
            rules = subprocess.run([tool, "-w", "-t", table, "-S"], capture_output=True, text=True, check=False).stdout
            for rule in rules.splitlines():
                parts = shlex.split(rule)  # kube-proxy's rules carry quoted comments with spaces
                if parts[:1] == ["-A"] and parts[1] not in created and any(f"-j {c}" in rule for c in created):
                    subprocess.run([tool, "-w", "-t", table, "-D", *parts[1:]], capture_output=True, check=False)
            for chain in created:
                subprocess.run([tool, "-w", "-t", table, "-F", chain], capture_output=True, check=False)
            for chain in created:
                subprocess.run([tool, "-w", "-t", table, "-X", chain], capture_output=True, check=False)
        self._chains.clear()
        self._sysctls.clear()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)

    # ---- the node's sandbox -------------------------------------------------------------------
    def _prepare_dirs(self) -> None:
        # a copy of this machine's /etc (the loader cache, iptables' alternatives) with a fresh user database
        shutil.copytree("/etc", self.host_root / "etc", symlinks=True, dirs_exist_ok=True)
        for name, line in (("passwd", "root:x:0:0:root:/root:/bin/bash"), ("group", "root:x:0:"),
                           ("shadow", "root:*:19000:0:99999:7:::"), ("gshadow", "root:*::")):
            (self.host_root / "etc" / name).write_text(line + "\n")
        (self.host_root / "home").mkdir(exist_ok=True)
        self.data_root.mkdir(exist_ok=True)
        for top in PRIVATE_DIRS:
            if top not in ("etc", "home"):
                self.private(f"/{top}").mkdir(parents=True, exist_ok=True)
        self.private("/run/containerd").mkdir(exist_ok=True)
        self.device_plugin_dir.mkdir(parents=True, exist_ok=True)
        self._make_cgroups()

    def _make_cgroups(self) -> None:
        for controller in CGROUP_CONTROLLERS:
            base = Path("/sys/fs/cgroup", controller)
            if base.is_dir():
                (base / self.cgroup).mkdir(exist_ok=True)
        shares = Path("/sys/fs/cgroup/cpu", self.cgroup, "cpu.shares")
        if shares.exists():
            shares.write_text(str(NODE_CPU_SHARES))

    def _enter_namespace(self) -> None:
        binds = " && ".join(f"mount --bind {self.private('/' + top)} /{top}" for top in PRIVATE_DIRS)
        log = (self.logdir / "namespace.log").open("ab")
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
             f"{binds} && echo ready && exec sleep infinity"],
            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        line = self.holder.stdout.readline().decode().strip() if self.holder.stdout else ""
        if line != "ready":
            raise RealNodeError(f"the mount namespace of node {self.name} was not set up (see {self.logdir})")

    def nsenter(self, *cmd: str) -> list[str]:
        """A command line that runs `cmd` in the node's mount namespace."""
        assert self.holder is not None
        return ["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", "--", *cmd]

    def _spawn(self, name: str, cmd: list[str]) -> LoggedProcess:
        proc = LoggedProcess.start(name, self.nsenter(*cmd), self.logdir, self.workdir)
        self.processes.append(proc)
        return proc

    def _check_alive(self) -> None:
        check_running(self.processes,
                      lambda proc, code: RealNodeError(f"{proc.name} of node {self.name} exited with code {code}"))

    # ---- containerd ---------------------------------------------------------------------------
    def _write_cni(self) -> None:
        conf_dir = self.workdir / "cni" / "net.d"
        conf_dir.mkdir(parents=True, exist_ok=True)
        (conf_dir / "10-labkeeper.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": f"labkeeper-{self.name}",
            "plugins": [{
                "type": "bridge", "bridge": self.bridge, "isGateway": True, "ipMasq": False, "hairpinMode": True,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet, "gateway": self.gateway}]],
                         "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(self.workdir / "cni" / "ipam")},
            }],
        }, indent=2))

    @property
    def containerd_socket(self) -> str:
        return "/run/containerd/containerd.sock"

    def _start_containerd(self, pause: Image) -> None:
        runc_options = {"SystemdCgroup": False, "Root": "/run/containerd/runc"}
        runtime = {"runtime_type": "io.containerd.runc.v2", "options": runc_options}
        config = {
            "version": 2,
            "root": str(self.workdir / "containerd"),
            "state": "/run/containerd/state",
            "grpc": {"address": self.containerd_socket},
            "ttrpc": {"address": self.containerd_socket + ".ttrpc"},
            "disabled_plugins": ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                                 "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
                                 "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"],
            "plugins": {
                "io.containerd.internal.v1.opt": {"path": str(self.workdir / "containerd-opt")},
                "io.containerd.grpc.v1.cri": {
                    "sandbox_image": pause.name,
                    # this machine's bounding set lacks CAP_SYS_RESOURCE: without it every sandbox fails in runc
                    "restrict_oom_score_adj": True,
                    "disable_apparmor": True,
                    "containerd": {
                        "snapshotter": "overlayfs",
                        "default_runtime_name": "runc",
                        # the k3s name; the NVIDIA runtime would be runc plus a hook, and there is no GPU here
                        "runtimes": {"runc": runtime, "nvidia": runtime},
                    },
                    "cni": {"bin_dir": CNI_BIN, "conf_dir": str(self.workdir / "cni" / "net.d")},
                },
            },
        }
        path = self.workdir / "containerd.toml"
        path.write_text(_toml(config))
        self._spawn("containerd", ["containerd", "--config", str(path)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self._check_alive()
            if self.ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise RealNodeError(f"containerd of node {self.name} did not answer on {self.containerd_socket}")

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        cmd = self.nsenter("ctr", "--address", self.containerd_socket, "--namespace", "k8s.io", *args)
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise RealNodeError(f"ctr {' '.join(args)} on node {self.name} failed: {result.stderr.strip()}")
        return result

    def _import_images(self, images: Sequence[Image]) -> None:
        present = set(self.ctr("images", "ls", "-q").stdout.split())
        for image in images:
            if image.name not in present and f"docker.io/{image.name}" not in present:
                self.ctr("images", "import", str(image.tarball))

    def import_image(self, image: Image) -> None:
        self._import_images([image])

    def _tag(self, source: str, target: str) -> None:
        self.ctr("images", "tag", "--force", source, target)

    # ---- the API server as pods see it ----------------------------------------------------------
    def _create_bridge(self) -> None:
        # made before any pod so the kubelet and the relay can listen on the gateway; the bridge plugin adopts it
        for cmd in (["ip", "link", "add", self.bridge, "type", "bridge"],
                    ["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge],
                    ["ip", "link", "set", self.bridge, "up"]):
            subprocess.run(cmd, check=True, capture_output=True)

    def _start_relay(self, port: int) -> None:
        self._spawn("apiserver-relay", ["socat", f"TCP-LISTEN:{port},bind={self.gateway},fork,reuseaddr",
                                        f"TCP:127.0.0.1:{port}"])

    def _start_kube_proxy(self, ca: CertificateAuthority, server: str) -> None:
        from labkeeper.testing.cluster import free_port, kubeconfig_dict

        client = ca.issue("system:kube-proxy", ())
        kubeconfig = self.workdir / "kube-proxy.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(kubeconfig_dict(server, ca.pair.cert_pem, "system:kube-proxy", client)))
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "mode": "iptables", "hostnameOverride": self.name, "clusterCIDR": self.subnet,
            "bindAddress": "127.0.0.1", "healthzBindAddress": f"127.0.0.1:{free_port()}",
            "metricsBindAddress": f"127.0.0.1:{free_port()}",
            # leave this machine's conntrack table sizes alone
            "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
            "nodePortAddresses": ["127.0.0.1/32"],
        }
        path = self.workdir / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(config))
        self._spawn("kube-proxy", [str(self.bin_dir / "kube-proxy"), f"--config={path}", "--v=1"])

    # ---- kubelet ------------------------------------------------------------------------------
    def _start_kubelet(self, ca: CertificateAuthority, server: str) -> None:
        from labkeeper.testing.cluster import free_port, kubeconfig_dict

        pki = self.workdir / "pki"
        pki.mkdir(exist_ok=True)
        ca_cert, _ = ca.pair.write(pki, "ca")
        (pki / "ca.key").unlink()
        client = ca.issue(f"system:node:{self.name}", ("system:nodes",))
        kubeconfig = self.workdir / "kubelet.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(kubeconfig_dict(server, ca.pair.cert_pem, f"system:node:{self.name}",
                                                             client)))
        serving_cert, serving_key = ca.issue(self.name, server_names=(self.gateway, self.name),
                                             client=False).write(pki, "kubelet")
        self.kubelet_port = free_port()
        resolv = self.workdir / "resolv.conf"
        resolv.write_text("search labkeeper.local\n")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": self.gateway,
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzPort": 0,
            "authentication": {"x509": {"clientCAFile": str(ca_cert)}, "webhook": {"enabled": True},
                               "anonymous": {"enabled": False}},
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": str(serving_cert),
            "tlsPrivateKeyFile": str(serving_key),
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{self.cgroup}",
            "failCgroupV1": False,
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                             "nodefs.inodesFree": "1%"},
            "volumePluginDir": "/var/lib/kubelet/volume-plugins",
            "resolvConf": str(resolv),
            "registerWithTaints": list(self.taints),
            "serializeImagePulls": False,
            "nodeStatusUpdateFrequency": "5s",
            "syncFrequency": "10s",
            "protectKernelDefaults": False,
        }
        path = self.workdir / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config))
        labels = {"labkeeper.io/node-kind": "real", "nvidia.com/gpu.present": "true", **self.labels}
        self._spawn("kubelet", [
            str(self.bin_dir / "kubelet"), f"--config={path}", f"--kubeconfig={kubeconfig}",
            "--root-dir=/var/lib/kubelet", f"--hostname-override={self.name}", f"--node-ip={self.gateway}",
            "--node-labels=" + ",".join(f"{k}={v}" for k, v in labels.items()), "--v=1",
        ])

    def _start_device_plugin(self) -> None:
        # its own process, as NVIDIA's plugin is a pod of its own: gRPC must never load in a process that forks
        self.device_plugin = self._spawn("device-plugin", [
            sys.executable, "-m", "labkeeper.testing.deviceplugin",
            "--plugin-dir", "/var/lib/kubelet/device-plugins", "--layout", json.dumps(dict(self.mig_layout)),
            "--activity-file", self.activity_file, "--pids-cgroup", f"/sys/fs/cgroup/pids/{self.cgroup}"])

    def _node(self) -> dict | None:
        result = self.cluster.kubectl("get", "node", self.name, "-o", "json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def _wait_registered(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if self._node() is not None and (self.device_plugin_dir / "kubelet.sock").exists():
                return
            time.sleep(0.3)
        raise RealNodeError(f"kubelet of node {self.name} did not register in {timeout:.0f}s")

    def _wait_ready(self, timeout: float, heartbeat_since: float | None = None) -> None:
        wanted = {d.resource: str(sum(1 for x in self.devices if x.resource == d.resource)) for d in self.devices}
        since = int(heartbeat_since) if heartbeat_since is not None else None  # heartbeats have whole seconds
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            node = self._node() or {}
            status = node.get("status") or {}
            ready = any(c["type"] == "Ready" and c["status"] == "True" and
                        (since is None or _unix(c.get("lastHeartbeatTime")) >= since)
                        for c in status.get("conditions") or [])
            allocatable = status.get("allocatable") or {}
            if ready and all(allocatable.get(r) == n for r, n in wanted.items()):
                return
            time.sleep(0.3)
        raise RealNodeError(f"node {self.name} did not become Ready with {wanted} allocatable in {timeout:.0f}s")

    # ---- stopping -------------------------------------------------------------------------------
    def _cgroup_pids(self) -> set[int]:
        pids: set[int] = set()
        # os.walk, not rglob: the kubelet removes pod cgroups while this walks, and walk skips what vanished
        for directory, _, files in os.walk(Path("/sys/fs/cgroup/pids", self.cgroup)):
            if "cgroup.procs" in files:
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(p) for p in Path(directory, "cgroup.procs").read_text().split())
        return pids

    def _kill_containers(self) -> None:
        # every process in the node's cgroup is a container this node ran
        deadline = time.monotonic() + 10
        while (pids := self._cgroup_pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.1)

    def _namespace_pids(self, ns: str | None = None) -> set[int]:
        """Processes in the node's mount namespace but the namespace's holder (containerd, its shims, the kubelet)."""
        if ns is None:
            if self.holder is None:
                return set()
            try:
                ns = os.readlink(f"/proc/{self.holder.pid}/ns/mnt")
            except OSError:
                return set()
        pids = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid() or \
                    (self.holder is not None and int(entry.name) == self.holder.pid):
                continue
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns" / "mnt") == ns:
                    pids.add(int(entry.name))
        return pids

    def _kill_namespace(self) -> None:
        if self.holder is None:
            return
        try:
            ns = os.readlink(f"/proc/{self.holder.pid}/ns/mnt")
        except OSError:
            ns = None
        # containerd's shims outlive containerd; they are the node's, found by its mount namespace
        for pid in self._namespace_pids(ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _terminate(self.holder, grace=2)
        if self.holder.stdout:
            self.holder.stdout.close()
        self.holder = None

    def _remove_cgroups(self) -> None:
        for controller in CGROUP_CONTROLLERS:
            base = Path("/sys/fs/cgroup", controller, self.cgroup)
            if not base.is_dir():
                continue
            for directory, _, _ in sorted(os.walk(base), key=lambda entry: entry[0].count("/"), reverse=True):
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
            with contextlib.suppress(OSError):
                base.rmdir()

    def log_tails(self, lines: int = 25) -> str:
        return log_tails(self.logdir, lines, prefix=f"{self.name}/")


_OCTETS_HANDED_OUT: set[int] = set()


def _free_octet() -> int:
    """N of a 10.89.N.0/24 that no interface of this machine uses and no node of this process took."""
    used = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True, check=False).stdout
    for octet in range(100 + os.getpid() % 50, 250):
        if octet not in _OCTETS_HANDED_OUT and f" 10.89.{octet}." not in used:
            _OCTETS_HANDED_OUT.add(octet)
            return octet
    raise RealNodeError("no free 10.89.N.0/24 for a real node's bridge")


def _unix(stamp: str | None) -> float:
    if not stamp:
        return 0.0
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))


def _terminate(popen: subprocess.Popen, grace: float = 10.0) -> None:
    if popen.poll() is not None:
        return
    popen.send_signal(signal.SIGTERM)
    try:
        popen.wait(grace)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait(5)


def _chains(tool: str, table: str) -> list[str]:
    if shutil.which(tool) is None:
        return []
    out = subprocess.run([tool, "-w", "-t", table, "-S"], capture_output=True, text=True, check=False).stdout
    return [line.split()[1] for line in out.splitlines() if line.startswith("-N ")]


def _toml(config: dict) -> str:
    """The small TOML subset containerd's config needs: nested tables of strings, numbers, booleans, lists."""
    lines: list[str] = []

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return str(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))

    def table(prefix: str, body: dict) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict)}
        if prefix:
            lines.append(f"\n[{prefix}]")
        lines.extend(f"{k} = {value(v)}" for k, v in scalars.items())
        for k, v in body.items():
            if isinstance(v, dict):
                key = json.dumps(k) if "." in k else k
                table(f"{prefix}.{key}" if prefix else key, v)

    table("", config)
    return "\n".join(lines) + "\n"
