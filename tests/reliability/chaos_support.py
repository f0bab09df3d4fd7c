"""What the reliability scenarios share: round counts, the agent as a killable process, checksums of
homes, and the invariants a converged lab must satisfy."""

from __future__ import annotations

import contextlib
import hashlib
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from labkeeper.testing.cluster import NodeSpec
from labkeeper.testing.lab import Lab
from labkeeper.testing.processes import SYSTEM_NAMESPACE, AgentProcess

FULL = os.environ.get("LABKEEPER_RELIABILITY_FULL") == "1"


def rounds(full: int, reduced: int) -> int:
    return full if FULL else reduced


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the agent provisions accounts under a temporary host root as root")


def node_agent(lab: Lab, root: Path, node: str) -> AgentProcess:
    """`labkeeper agent` for one fake node, provisioning every GPUUser under a temporary host root."""
    return AgentProcess(lab.cluster.kubeconfig, root, node, "--sampler", "none", "--resync", "5")


@contextlib.contextmanager
def lab_with_agent(workdir: Path, node: str, policy: dict) -> Iterator[tuple[Lab, AgentProcess]]:
    """A lab on one H100 node with that node's agent running; on the way out the agent is killed and both
    logs are printed (pytest shows them with a failure)."""
    needs_root()
    with Lab((NodeSpec(node, "h100-balanced"),), policy, workdir / "lab") as lab:
        agent = node_agent(lab, workdir / "host", node).start()
        try:
            yield lab, agent
        finally:
            agent.kill()
            print(lab.log_tail())
            print(agent.log_tail())


def provisioned(lab: Lab, name: str, node: str) -> bool:
    nodes = lab.status("gpuuser", name).get("nodes") or []
    return any(n["node"] == node and n.get("state") == "Provisioned" for n in nodes)


def checksums(root: Path) -> dict[str, str]:
    """sha256 of every regular file under root, by relative path; links are not followed."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def write_thesis(home: Path, seed: int) -> None:
    """Files a user cares about: text, a binary blob and a nested directory."""
    (home / "thesis").mkdir(exist_ok=True)
    (home / "thesis" / "chapter1.tex").write_text(f"chapter one, draft {seed}\n" * 50)
    (home / "weights.bin").write_bytes(hashlib.sha256(str(seed).encode()).digest() * 4096)


def operator_alive_without_traceback(lab: Lab) -> None:
    assert lab.operator and lab.operator.proc and lab.operator.proc.poll() is None, \
        f"operator exited: {lab.log_tail()}"
    log = (lab.operator.logdir / f"operator-{lab.operator.starts}.log").read_text(errors="replace")
    assert "Traceback" not in log, log[log.index("Traceback") - 2000:][:6000]


def operator_writes(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("labkeeper_operator_api_writes_total"))


# ---- invariants of a converged lab --------------------------------------------------------------------
def uid_problems(lab: Lab) -> list[str]:
    problems = []
    users = lab.items("gpuusers")
    by_uid: dict[int, list[str]] = {}
    for user in users:
        uid = (user.get("status") or {}).get("uid")
        if uid is not None:
            by_uid.setdefault(uid, []).append(user["metadata"]["name"])
    problems += [f"uid {uid} held by {names}" for uid, names in by_uid.items() if len(names) > 1]
    ledger = lab.get("configmap", "labkeeper-uid-ledger", SYSTEM_NAMESPACE) or {}
    entries = ledger.get("data") or {}
    seen: dict[str, str] = {}
    for name, uid in entries.items():
        if uid in seen:
            problems.append(f"ledger gives uid {uid} to {seen[uid]} and {name}")
        seen[uid] = name
    for user in users:
        name, uid = user["metadata"]["name"], (user.get("status") or {}).get("uid")
        if uid is not None and name in entries and int(entries[name]) != uid:
            problems.append(f"{name}: status uid {uid}, ledger {entries[name]}")
    return problems


def orphan_problems(lab: Lab) -> list[str]:
    problems = []
    workspaces = {(w["metadata"]["namespace"], w["metadata"]["name"]): w for w in lab.items("workspaces", "-A")}
    uids = {w["metadata"]["uid"] for w in workspaces.values()}
    per_workspace: dict[tuple[str, str, str], list[str]] = {}
    for pod in lab.items("pods", "-A", "-l", "app.kubernetes.io/managed-by=labkeeper"):
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            continue
        owners = [o["uid"] for o in meta.get("ownerReferences") or [] if o["kind"] == "Workspace"]
        if not owners or not set(owners) & uids:
            problems.append(f"pod {meta['namespace']}/{meta['name']} has no live Workspace owner")
        key = (meta["namespace"], meta["labels"].get("labkeeper.io/workspace", "?"), meta["labels"].get("labkeeper.io/role", "?"))
        per_workspace.setdefault(key, []).append(meta["name"])
    problems += [f"{ns}/{ws} has {len(names)} {role} pods: {names}"
                 for (ns, ws, role), names in per_workspace.items() if len(names) > 1]
    users = {u["metadata"]["name"] for u in lab.items("gpuusers")}
    for ns in lab.items("namespaces"):
        name = ns["metadata"]["name"]
        if name.startswith("lab-") and name[4:] not in users:
            problems.append(f"namespace {name} has no GPUUser")
    return problems
