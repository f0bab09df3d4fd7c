"""Who is calling and where: the kubeconfig, the API client, the username and the lab namespace."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import yaml
from kubernetes import config as k8s_config

from labkeeper.api.names import SYSTEM_NAMESPACE as SYSTEM_NAMESPACE
from labkeeper.api.names import namespace_for as namespace_for
from labkeeper.api.names import username_of
from labkeeper.api.resources import GPUUser, Workspace, read_object
from labkeeper.cli.errors import LabctlError
from labkeeper.kube.client import Body, Kube


def kubeconfig_path(explicit: str | None, env: dict[str, str] | None = None, home: Path | None = None) -> Path:
    """The first kubeconfig that exists: --kubeconfig, then $KUBECONFIG, then ~/.kube/config."""
    env = os.environ if env is None else env
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise LabctlError(f"kubeconfig {path} does not exist", "check the --kubeconfig path")
        return path
    candidates = [Path(p).expanduser() for p in (env.get("KUBECONFIG") or "").split(os.pathsep) if p]
    candidates.append((home or Path.home()) / ".kube" / "config")
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise LabctlError(f"no kubeconfig found (looked at {looked})",
                      "log in to the lab server once (your kubeconfig is placed in ~/.kube/config), "
                      "or pass --kubeconfig FILE")


def context_namespace(path: Path) -> str | None:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    current = doc.get("current-context")
    for ctx in doc.get("contexts") or []:
        if ctx.get("name") == current:
            return (ctx.get("context") or {}).get("namespace")
    return None


@dataclass
class Session:
    """Built lazily so `--help` and usage errors never touch the kubeconfig or the network."""

    kubeconfig: str | None = None
    user: str | None = None
    _kube: Kube | None = field(default=None, repr=False)

    @cached_property
    def kubeconfig_file(self) -> Path:
        return kubeconfig_path(self.kubeconfig)

    @property
    def kube(self) -> Kube:
        if self._kube is None:
            try:
                self._kube = Kube.from_kubeconfig(str(self.kubeconfig_file), field_manager="labctl")
            except (k8s_config.ConfigException, ValueError, KeyError, TypeError) as err:
                raise LabctlError(f"kubeconfig {self.kubeconfig_file} cannot be used: {err}",
                                  "ask the lab admin for a fresh one") from err
        return self._kube

    @property
    def server(self) -> str:
        return self.kube.api.configuration.host if self._kube else ""

    @cached_property
    def identity(self) -> str:
        """The caller's username as the API server sees it (the client certificate's CN)."""
        return self.kube.whoami()

    @cached_property
    def username(self) -> str:
        if self.user:
            return self.user
        namespace = context_namespace(self.kubeconfig_file)
        if namespace and username_of(namespace):
            return username_of(namespace)
        name = self.identity
        if name.startswith("system:") or ":" in name:
            raise LabctlError(f"you are {name!r}, not a lab user",
                              "pass --user NAME to act on a lab user's workspaces")
        return name

    @property
    def namespace(self) -> str:
        return namespace_for(self.username)

    @property
    def own_namespace(self) -> str | None:
        """The caller's own lab namespace, from her certificate's name, whatever --user or the context say."""
        name = self.identity
        return None if name.startswith("system:") or ":" in name else namespace_for(name)

    # ---- reads: objects enter labctl here, parsed into their api/ models (bodies only for -o json/yaml) ----------
    def workspace_bodies(self, all_users: bool = False) -> list[Body]:
        """Her Workspaces, or every user's, as the API sent them."""
        return self.kube.list("Workspace", None if all_users else self.namespace)

    def workspace(self, name: str) -> Workspace | None:
        """Her Workspace `name`, None when there is none."""
        body = self.kube.get("Workspace", name, self.namespace)
        return None if body is None else read_object(Workspace, body)[0]

    def gpu_user(self, name: str | None = None) -> GPUUser | None:
        """The GPUUser `name` (default: the caller's), None when there is none."""
        body = self.kube.get("GPUUser", name or self.username)
        return None if body is None else read_object(GPUUser, body)[0]
