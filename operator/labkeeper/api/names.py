"""Names the lab accepts, in one place: usernames, host groups and the environment variables of shared trees.
The CRD patterns and CEL rules, the policy, the importers, labctl and the agent all use these."""

from __future__ import annotations

import re

USERNAME_MAX = 32
USERNAME_PATTERN = r"^[a-z]([a-z0-9-]{0,30}[a-z0-9])?$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
RELATIVE_PATH_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$"
MIG_PROFILES = ("1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb")
GPU_PROFILES = (*MIG_PROFILES, "full")

# accounts every Debian system has, plus names that would confuse the host or the cluster
RESERVED_USERNAMES = frozenset({
    "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy",
    "www-data", "backup", "list", "irc", "gnats", "nobody", "nogroup", "systemd-network", "systemd-resolve",
    "systemd-timesync", "messagebus", "sshd", "_apt", "syslog", "admin", "operator", "halt", "shutdown",
    "lab-users", "labkeeper", "kube", "kubernetes", "system", "default",
})


# host groups that would hand a lab member root or the machine: never granted through spec.groups
PRIVILEGED_GROUPS = frozenset({
    "root", "sudo", "wheel", "admin", "adm", "disk", "docker", "lxd", "incus", "incus-admin", "libvirt", "kvm",
    "shadow", "staff", "kmem", "tty", "utmp", "systemd-journal", "containerd", "microk8s", "k3s",
})
# neither a privileged group nor one belonging to a system account (daemon, mail, sshd, ...)
REFUSED_GROUPS = PRIVILEGED_GROUPS | (RESERVED_USERNAMES - {"lab-users"})

# Environment variables a SharedCache or ModelStore may set in every login shell (/etc/profile.d) and every
# workspace: only names that point a tool at a cache or a model tree. Anything else (LD_PRELOAD, PATH,
# PYTHONPATH, BASH_ENV, HF_HOME, whose token must stay private) would change what root's shell runs.
CACHE_ENV_NAMES = frozenset({
    "PIP_CACHE_DIR", "CONDA_PKGS_DIRS", "UV_CACHE_DIR", "UV_LINK_MODE", "npm_config_cache", "NPM_CONFIG_CACHE",
    "YARN_CACHE_FOLDER", "PNPM_STORE_DIR", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_DATASETS_CACHE",
    "HF_ASSETS_CACHE", "HF_XET_CACHE", "TRANSFORMERS_CACHE", "SENTENCE_TRANSFORMERS_HOME", "TORCH_HOME",
    "TORCH_EXTENSIONS_DIR", "KERAS_HOME", "TFHUB_CACHE_DIR", "OLLAMA_MODELS", "COMFYUI_MODELS", "FLUX_MODELS",
})
# a lab's own trees (type custom / generic) name theirs like the known ones: upper case, ending in one of these
CACHE_ENV_SUFFIX_PATTERN = r"^[A-Z][A-Z0-9_]*_(CACHE|CACHE_DIR|MODELS|MODELS_DIR)$"
CACHE_ENV_RULE_TEXT = (f"one of {', '.join(sorted(CACHE_ENV_NAMES, key=lambda n: (n.lower(), n)))}, or an upper-case name ending "
                       "in _CACHE, _CACHE_DIR, _MODELS or _MODELS_DIR")


# ---- names of what labkeeper makes in the API ------------------------------------------------------------
SYSTEM_NAMESPACE = "labkeeper-system"  # the default; the operator and the agent take --namespace
NAMESPACE_PREFIX = "lab-"
OPERATOR_FINALIZER = "labkeeper.io/operator"
LABEL_USER = "labkeeper.io/user"
LABEL_WORKSPACE = "labkeeper.io/workspace"
LABEL_ROLE = "labkeeper.io/role"  # "workspace" on a workspace's pod
LABEL_GPU = "labkeeper.io/gpu"  # on a workspace's pod: the GPU profile it asks for, or "none"
LABEL_MANAGED = "app.kubernetes.io/managed-by"
MANAGED_BY = "labkeeper"
MANAGED_SELECTOR = f"{LABEL_MANAGED}={MANAGED_BY}"
# labkeeper's pods that may hold a device: `!=` also matches a pod without the label (made before it existed)
MANAGED_GPU_SELECTOR = f"{MANAGED_SELECTOR},{LABEL_GPU}!=none"
KUBECONFIG_SECRET_PREFIX = "kubeconfig-"
CLEAN_ANNOTATION = "labkeeper.io/clean-requested"  # on a SharedCache: labctl asks the agents to clean it now


def namespace_for(username: str) -> str:
    """A lab member's own namespace."""
    return f"{NAMESPACE_PREFIX}{username}"


def username_of(namespace: str) -> str | None:
    """The lab member whose namespace this is; None for any other namespace."""
    return namespace.removeprefix(NAMESPACE_PREFIX) if namespace.startswith(NAMESPACE_PREFIX) else None


def kubeconfig_secret(username: str) -> str:
    """The Secret in the system namespace that holds her kubeconfig."""
    return f"{KUBECONFIG_SECRET_PREFIX}{username}"


def pod_name(workspace: str) -> str:
    return f"ws-{workspace}"


def hold_name(workspace: str) -> str:
    """A hold pod of an older labkeeper (holds are status records now): adopted and deleted."""
    return f"hold-{workspace}"


class InvalidName(ValueError):
    pass


def is_cache_env_name(name: str) -> bool:
    return name in CACHE_ENV_NAMES or re.fullmatch(CACHE_ENV_SUFFIX_PATTERN, name) is not None


def validate_cache_env_name(name: str) -> str:
    """Returns the name, or raises InvalidName naming what may be set instead."""
    if not is_cache_env_name(name):
        raise InvalidName(f"{name!r} does not point a tool at a cache or a model tree; allowed: {CACHE_ENV_RULE_TEXT}")
    return name


def validate_group(name: str) -> str:
    """An extra host group for a lab member: a valid group name that is neither privileged nor a system account's."""
    if name in REFUSED_GROUPS:
        raise InvalidName(f"group {name!r} is a privileged or system group on the host; labkeeper never grants it")
    if not isinstance(name, str) or len(name) > USERNAME_MAX or not re.fullmatch(USERNAME_PATTERN, name):
        raise InvalidName(f"group {name!r} is not valid: a lowercase letter first, then lowercase letters, digits "
                          f"or '-', not ending in '-', at most {USERNAME_MAX} characters")
    return name


def validate_username(name: str, *, existing_system_accounts: frozenset[str] = frozenset()) -> str:
    """Returns the name, or raises InvalidName saying exactly what is wrong and what is valid."""
    if not isinstance(name, str) or not name:
        raise InvalidName("username is empty; it must start with a lowercase letter")
    if len(name) > USERNAME_MAX:
        raise InvalidName(f"username {name!r} has {len(name)} characters; at most {USERNAME_MAX} are allowed")
    if not re.fullmatch(USERNAME_PATTERN, name):
        raise InvalidName(
            f"username {name!r} is not valid: use a lowercase letter first, then lowercase letters, digits "
            "or '-', not ending in '-'")
    if name in RESERVED_USERNAMES or name in existing_system_accounts:
        raise InvalidName(f"username {name!r} is reserved for the system; choose another")
    return name
