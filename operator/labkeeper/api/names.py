"""Username rules, in one place: the CRD patterns, the policy, the importers, labctl and the agent all use these."""

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


class InvalidName(ValueError):
    pass


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
