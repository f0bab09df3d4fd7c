"""Where each kind lives in the API, for the operator, the agent and labctl: labkeeper's four custom
resources and the Kubernetes kinds labkeeper reads and writes. The one table the client builds paths from."""

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
    group: str = GROUP  # "" for the core group
    version: str = VERSION

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{self.group}"

    def path(self, name: str | None = None, namespace: str | None = None, subresource: str | None = None) -> str:
        """The REST path of the collection, or of one object and its subresource."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if subresource:
            base += f"/{subresource}"
        return base


# short names clash with nothing in Kubernetes, k3s or the NVIDIA GPU Operator (`sc` is StorageClass's)
GPUUSER = Kind("GPUUser", "gpuusers", "gpuuser", "gu", namespaced=False)
SHAREDCACHE = Kind("SharedCache", "sharedcaches", "sharedcache", "scache", namespaced=False)
MODELSTORE = Kind("ModelStore", "modelstores", "modelstore", "ms", namespaced=False)
WORKSPACE = Kind("Workspace", "workspaces", "workspace", "ws", namespaced=True)
LAB_KINDS: tuple[Kind, ...] = (GPUUSER, SHAREDCACHE, MODELSTORE, WORKSPACE)


def _kube(kind: str, plural: str, namespaced: bool, group: str = "", version: str = "v1") -> Kind:
    return Kind(kind, plural, kind.lower(), "", namespaced, group, version)


KUBERNETES_KINDS: tuple[Kind, ...] = (
    _kube("Namespace", "namespaces", False),
    _kube("Pod", "pods", True),
    _kube("Secret", "secrets", True),
    _kube("ConfigMap", "configmaps", True),
    _kube("Event", "events", True),
    _kube("ResourceQuota", "resourcequotas", True),
    _kube("LimitRange", "limitranges", True),
    _kube("Node", "nodes", False),
    _kube("Role", "roles", True, "rbac.authorization.k8s.io"),
    _kube("RoleBinding", "rolebindings", True, "rbac.authorization.k8s.io"),
    _kube("ClusterRole", "clusterroles", False, "rbac.authorization.k8s.io"),
    _kube("ClusterRoleBinding", "clusterrolebindings", False, "rbac.authorization.k8s.io"),
    _kube("PriorityClass", "priorityclasses", False, "scheduling.k8s.io"),
    _kube("CertificateSigningRequest", "certificatesigningrequests", False, "certificates.k8s.io"),
    _kube("Lease", "leases", True, "coordination.k8s.io"),
)

KINDS: dict[str, Kind] = {k.kind: k for k in (*KUBERNETES_KINDS, *LAB_KINDS)}
