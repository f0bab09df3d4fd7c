"""A stand-in for NVIDIA's device plugin on a real test node: a gRPC server speaking the kubelet's
device-plugin API (v1beta1) that advertises MIG devices with stable ids and answers `Allocate` as
NVIDIA's plugin does in its "envvar" list strategy (`NVIDIA_VISIBLE_DEVICES=<device ids>`), so the
kubelet's own device manager decides which container gets which device.

The messages are described here with protobuf's descriptor API instead of generated code: only the
field numbers and types go over the wire, and they are those of the kubelet's
`pkg/apis/deviceplugin/v1beta1/api.proto`."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from labkeeper.testing.devices import MigDevice, cgroup_pids, fake_nvml, mig_devices

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
HEALTHY = "Healthy"

_F = descriptor_pb2.FieldDescriptorProto
_STRING, _BOOL, _INT32, _INT64, _MESSAGE = _F.TYPE_STRING, _F.TYPE_BOOL, _F.TYPE_INT32, _F.TYPE_INT64, _F.TYPE_MESSAGE
_REPEATED, _OPTIONAL = _F.LABEL_REPEATED, _F.LABEL_OPTIONAL

# message name -> fields (name, number, type, label, message type); the maps are proto3 map entries
_MESSAGES: dict[str, list[tuple]] = {
    "DevicePluginOptions": [("pre_start_required", 1, _BOOL, _OPTIONAL, None),
                            ("get_preferred_allocation_available", 2, _BOOL, _OPTIONAL, None)],
    "RegisterRequest": [("version", 1, _STRING, _OPTIONAL, None), ("endpoint", 2, _STRING, _OPTIONAL, None),
                        ("resource_name", 3, _STRING, _OPTIONAL, None),
                        ("options", 4, _MESSAGE, _OPTIONAL, "DevicePluginOptions")],
    "Empty": [],
    "ListAndWatchResponse": [("devices", 1, _MESSAGE, _REPEATED, "Device")],
    "TopologyInfo": [("nodes", 1, _MESSAGE, _REPEATED, "NUMANode")],
    "NUMANode": [("ID", 1, _INT64, _OPTIONAL, None)],
    "Device": [("ID", 1, _STRING, _OPTIONAL, None), ("health", 2, _STRING, _OPTIONAL, None),
               ("topology", 3, _MESSAGE, _OPTIONAL, "TopologyInfo")],
    "PreStartContainerRequest": [("devices_ids", 1, _STRING, _REPEATED, None)],
    "PreStartContainerResponse": [],
    "PreferredAllocationRequest": [("container_requests", 1, _MESSAGE, _REPEATED,
                                    "ContainerPreferredAllocationRequest")],
    "ContainerPreferredAllocationRequest": [("available_deviceIDs", 1, _STRING, _REPEATED, None),
                                            ("must_include_deviceIDs", 2, _STRING, _REPEATED, None),
                                            ("allocation_size", 3, _INT32, _OPTIONAL, None)],
    "PreferredAllocationResponse": [("container_responses", 1, _MESSAGE, _REPEATED,
                                     "ContainerPreferredAllocationResponse")],
    "ContainerPreferredAllocationResponse": [("deviceIDs", 1, _STRING, _REPEATED, None)],
    "AllocateRequest": [("container_requests", 1, _MESSAGE, _REPEATED, "ContainerAllocateRequest")],
    "ContainerAllocateRequest": [("devices_ids", 1, _STRING, _REPEATED, None)],
    "AllocateResponse": [("container_responses", 1, _MESSAGE, _REPEATED, "ContainerAllocateResponse")],
    "ContainerAllocateResponse": [("envs", 1, _MESSAGE, _REPEATED, "ContainerAllocateResponse.EnvsEntry"),
                                  ("annotations", 4, _MESSAGE, _REPEATED,
                                   "ContainerAllocateResponse.AnnotationsEntry")],
}
_MAP_ENTRIES = {"ContainerAllocateResponse": ("EnvsEntry", "AnnotationsEntry")}


def _build_messages() -> dict[str, type]:
    proto = descriptor_pb2.FileDescriptorProto(name="labkeeper_deviceplugin_v1beta1.proto", package=API_VERSION,
                                               syntax="proto3")
    for name, fields in _MESSAGES.items():
        msg = proto.message_type.add(name=name)
        for entry in _MAP_ENTRIES.get(name, ()):
            nested = msg.nested_type.add(name=entry)
            nested.options.map_entry = True
            nested.field.add(name="key", number=1, type=_STRING, label=_OPTIONAL)
            nested.field.add(name="value", number=2, type=_STRING, label=_OPTIONAL)
        for fname, number, ftype, label, type_name in fields:
            field = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = f".{API_VERSION}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    file = pool.Add(proto)
    del file
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{API_VERSION}.{name}"))
            for name in _MESSAGES}


M = _build_messages()


def _rpc(handler, request: str, response: str, stream: bool = False):
    make = grpc.unary_stream_rpc_method_handler if stream else grpc.unary_unary_rpc_method_handler
    return make(handler, request_deserializer=M[request].FromString,
                response_serializer=M[response].SerializeToString)


class _ResourcePlugin:
    """The DevicePlugin service for one resource name, served on its own socket."""

    def __init__(self, resource: str, devices: Sequence[MigDevice], socket: Path) -> None:
        self.resource = resource
        self.devices = list(devices)
        self.socket = socket
        self.allocations: list[list[str]] = []
        self._stop = threading.Event()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(f"{API_VERSION}.DevicePlugin", {
            "GetDevicePluginOptions": _rpc(self.options, "Empty", "DevicePluginOptions"),
            "ListAndWatch": _rpc(self.list_and_watch, "Empty", "ListAndWatchResponse", stream=True),
            "GetPreferredAllocation": _rpc(self.preferred, "PreferredAllocationRequest", "PreferredAllocationResponse"),
            "Allocate": _rpc(self.allocate, "AllocateRequest", "AllocateResponse"),
            "PreStartContainer": _rpc(self.pre_start, "PreStartContainerRequest", "PreStartContainerResponse"),
        })])
        self.server.add_insecure_port(f"unix://{socket}")

    def options(self, request, context):
        return M["DevicePluginOptions"](pre_start_required=False, get_preferred_allocation_available=True)

    def list_and_watch(self, request, context) -> Iterator:
        yield M["ListAndWatchResponse"](devices=[M["Device"](ID=d.id, health=HEALTHY) for d in self.devices])
        # the device list never changes; the kubelet keeps the stream open for the plugin's lifetime
        while context.is_active() and not self._stop.wait(0.5):
            pass

    def preferred(self, request, context):
        # as NVIDIA's plugin without topology: the lowest ids first, so a device is chosen deterministically
        responses = []
        for req in request.container_requests:
            chosen = list(req.must_include_deviceIDs)
            for dev in sorted(req.available_deviceIDs):
                if len(chosen) >= req.allocation_size:
                    break
                if dev not in chosen:
                    chosen.append(dev)
            responses.append(M["ContainerPreferredAllocationResponse"](deviceIDs=chosen))
        return M["PreferredAllocationResponse"](container_responses=responses)

    def allocate(self, request, context):
        known = {d.id for d in self.devices}
        responses = []
        for req in request.container_requests:
            ids = list(req.devices_ids)
            unknown = [i for i in ids if i not in known]
            if unknown:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"{self.resource}: unknown device ids {unknown}; known: {sorted(known)}")
            self.allocations.append(ids)
            responses.append(M["ContainerAllocateResponse"](envs={"NVIDIA_VISIBLE_DEVICES": ",".join(ids)}))
        return M["AllocateResponse"](container_responses=responses)

    def pre_start(self, request, context):
        return M["PreStartContainerResponse"]()

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self._stop.set()
        self.server.stop(grace=0)


class FakeNvidiaDevicePlugin:
    """Serves one socket per MIG resource in `plugin_dir` (the kubelet's device-plugins directory as this
    process sees it) and registers each with the kubelet's `Registration` service in that directory."""

    def __init__(self, plugin_dir: Path, devices: Sequence[MigDevice]) -> None:
        self.plugin_dir = Path(plugin_dir)
        self.devices = list(devices)
        self.plugins: list[_ResourcePlugin] = []

    @property
    def allocations(self) -> list[list[str]]:
        return [ids for plugin in self.plugins for ids in plugin.allocations]

    def start(self, timeout: float = 30.0) -> FakeNvidiaDevicePlugin:
        by_resource: dict[str, list[MigDevice]] = {}
        for device in self.devices:
            by_resource.setdefault(device.resource, []).append(device)
        for resource, devices in sorted(by_resource.items()):
            socket = self.plugin_dir / f"labkeeper-{resource.split('/', 1)[1]}.sock"
            socket.unlink(missing_ok=True)
            plugin = _ResourcePlugin(resource, devices, socket)
            plugin.start()
            self.plugins.append(plugin)
            self._register(plugin, timeout)
        return self

    def _register(self, plugin: _ResourcePlugin, timeout: float) -> None:
        kubelet = self.plugin_dir / KUBELET_SOCKET
        with grpc.insecure_channel(f"unix://{kubelet}") as channel:
            register = channel.unary_unary(f"/{API_VERSION}.Registration/Register",
                                           request_serializer=M["RegisterRequest"].SerializeToString,
                                           response_deserializer=M["Empty"].FromString)
            options = M["DevicePluginOptions"](get_preferred_allocation_available=True)
            register(M["RegisterRequest"](version=API_VERSION, endpoint=plugin.socket.name,
                                          resource_name=plugin.resource, options=options),
                     timeout=timeout, wait_for_ready=True)

    def stop(self) -> None:
        for plugin in self.plugins:
            plugin.stop()
            plugin.socket.unlink(missing_ok=True)
        self.plugins.clear()


def write_activity_file(path: Path, devices: Sequence[MigDevice], pids_cgroup: Path | None) -> None:
    """NVML's view of the node as an activity file, replaced atomically so the agent never reads half of it."""
    doc = fake_nvml(devices, cgroup_pids(pids_cgroup) if pids_cgroup else ())
    text = json.dumps(doc, sort_keys=True)
    try:
        if path.read_text() == text:
            return
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    partial.rename(path)


def main(argv: Sequence[str] | None = None) -> int:
    """Serves the devices of a MIG layout until SIGTERM, registering again whenever the kubelet's socket
    is created anew (a restarted kubelet forgets its plugins, as NVIDIA's plugin also handles). With
    `--activity-file` it also plays NVML: every half second it writes the GPU, its MIG instances and the GPU
    processes of the containers in `--pids-cgroup` to that file (`labkeeper.testing.devices.fake_nvml`)."""
    parser = argparse.ArgumentParser(prog="python -m labkeeper.testing.deviceplugin")
    parser.add_argument("--plugin-dir", required=True, type=Path, help="the kubelet's device-plugins directory")
    parser.add_argument("--layout", required=True, help='MIG layout as JSON, e.g. {"1g.10gb": 2}')
    parser.add_argument("--activity-file", type=Path, help="write NVML's view here (docs/activity-file.md)")
    parser.add_argument("--pids-cgroup", type=Path, help="the cgroup (pids controller) holding the node's containers")
    args = parser.parse_args(argv)
    devices = mig_devices(json.loads(args.layout))
    if args.activity_file:
        write_activity_file(args.activity_file, devices, args.pids_cgroup)  # before any agent looks for it
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    kubelet = args.plugin_dir / KUBELET_SOCKET
    registered_to = None
    plugin: FakeNvidiaDevicePlugin | None = None
    while not stopping.is_set():
        try:
            current = os.stat(kubelet).st_ino
        except FileNotFoundError:
            current = None
        if current is not None and current != registered_to:
            if plugin is not None:
                plugin.stop()
                plugin = None
            candidate = FakeNvidiaDevicePlugin(args.plugin_dir, devices)
            try:
                # after a reboot the socket of the kubelet before it is still on disk until the new one replaces it
                plugin = candidate.start(timeout=10)
                registered_to = current
                print(f"registered {len(devices)} devices with the kubelet at {kubelet}", flush=True)
            except grpc.RpcError as err:
                candidate.stop()
                print(f"registration with the kubelet at {kubelet} failed ({err.code()}); trying again", flush=True)
        if args.activity_file:
            try:
                write_activity_file(args.activity_file, devices, args.pids_cgroup)
            except OSError as err:
                print(f"activity file {args.activity_file}: {err}", flush=True)
        stopping.wait(0.5)
    if plugin is not None:
        plugin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
