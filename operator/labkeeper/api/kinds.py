"""Where each custom resource lives in the API, for the operator, the agent and labctl."""

from __future__ import annotations

from dataclasses import dataclass

GROUP = "labkeeper.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "labkeeper"


@dataclass(frozen=True)
class Kind:
    kind: str
    plural: str
    singular: str
    short_name: str
    namespaced: bool
    group: str = GROUP
    version: str = VERSION

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{self.group}"


# short names clash with nothing in Kubernetes, k3s or the NVIDIA GPU Operator (`sc` is StorageClass's)
GPUUSER = Kind("GPUUser", "gpuusers", "gpuuser", "gu", namespaced=False)
SHAREDCACHE = Kind("SharedCache", "sharedcaches", "sharedcache", "scache", namespaced=False)
MODELSTORE = Kind("ModelStore", "modelstores", "modelstore", "ms", namespaced=False)
WORKSPACE = Kind("Workspace", "workspaces", "workspace", "ws", namespaced=True)

KINDS: dict[str, Kind] = {k.kind: k for k in (GPUUSER, SHAREDCACHE, MODELSTORE, WORKSPACE)}
