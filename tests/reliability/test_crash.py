"""SIGKILL the operator and the agent at random moments while an admin onboards people in bulk, users
churn their workspaces and people are offboarded; once the killing stops the lab converges with no
uid given twice, no second pod or hold for a workspace, no orphan, and every file in every home intact.

The moments come from a fixed seed printed in the output, so a failing round can be replayed."""

from __future__ import annotations

import random
import time

import pytest
from chaos_support import (
    checksums,
    lab_with_agent,
    orphan_problems,
    provisioned,
    rounds,
    uid_problems,
    write_thesis,
)

from labkeeper.testing.lab import Lab, example_policy, gpuuser, workspace
from labkeeper.testing.processes import AgentProcess, wait_for

pytestmark = pytest.mark.integration

SEED = 20261123
NODE = "crash-node"
ROUNDS = rounds(full=20, reduced=5)
KEEPERS = ("ada", "grace", "linus")  # never offboarded: their homes are checked byte for byte


def crash_policy() -> dict:
    policy = example_policy()
    policy.update({"gpuHoldAfterStop": "3s", "stoppedRetention": "0s"})
    for tier in policy["tiers"].values():
        tier["maxWorkspaces"] = 10
    return policy


@pytest.fixture(scope="module")
def crash_lab(tmp_path_factory):
    with lab_with_agent(tmp_path_factory.mktemp("crash"), NODE, crash_policy()) as pair:
        yield pair


def kill_somewhere(lab: Lab, agent: AgentProcess, rng: random.Random) -> str:
    """Wait a random moment into the work just started, then SIGKILL one or both processes and restart them."""
    time.sleep(rng.uniform(0.0, 2.5))
    victims = rng.choice(["operator", "agent", "both"])
    if victims in ("operator", "both"):
        lab.operator.kill()
    if victims in ("agent", "both"):
        agent.kill()
    time.sleep(rng.uniform(0.0, 1.0))
    if victims in ("operator", "both"):
        lab.operator.start()
    if victims in ("agent", "both"):
        agent.start()
    return victims


def test_sigkill_during_onboarding_churn_and_offboarding_converges_with_nothing_lost_or_doubled(crash_lab):
    lab, agent = crash_lab
    rng = random.Random(SEED)
    print(f"\ncrash chaos: seed {SEED}, {ROUNDS} rounds")
    lab.add_users(*(gpuuser(name) for name in KEEPERS))
    wait_for(lambda: all(provisioned(lab, n, NODE) for n in KEEPERS), timeout=60, what="keepers' homes")
    for i, name in enumerate(KEEPERS):
        write_thesis(agent.data / "users" / name, i)
    before = {name: checksums(agent.data / "users" / name) for name in KEEPERS}
    assert all(len(files) >= 2 for files in before.values()), before

    alive: list[str] = []  # churn users created and not yet offboarded
    offboarded: list[str] = []
    for round_ in range(ROUNDS):
        action = rng.choice(["onboard", "churn", "offboard"]) if alive else "onboard"
        if action == "onboard":
            batch = [f"u{round_}x{j}" for j in range(rng.randint(3, 6))]
            lab.apply(*(gpuuser(n) for n in batch))
            alive += batch
        elif action == "churn":
            owner = rng.choice(KEEPERS)
            docs = []
            for j in range(3):
                name = f"w{j}"
                state = rng.choice(["Running", "Running", "Stopped", "delete"])
                if state == "delete":
                    lab.kubectl("delete", "workspace", name, "-n", f"lab-{owner}", "--wait=false",
                                "--ignore-not-found")
                else:
                    docs.append(workspace(name, owner, state=state))
            if docs:
                lab.apply(*docs)
        else:
            leaving = rng.sample(alive, k=min(len(alive), rng.randint(1, 3)))
            lab.kubectl("delete", "gpuuser", *leaving, "--wait=false")
            alive = [n for n in alive if n not in leaving]
            offboarded += leaving
        victims = kill_somewhere(lab, agent, rng)
        print(f"round {round_}: {action}, killed {victims}")

    # convergence: every remaining user Ready and provisioned, the offboarded gone with their namespaces
    everyone = [*KEEPERS, *alive]
    wait_for(lambda: all(lab.status("gpuuser", n).get("phase") == "Ready" for n in everyone), timeout=180,
             what="every remaining user Ready")
    wait_for(lambda: all(provisioned(lab, n, NODE) for n in everyone), timeout=120, what="every home provisioned")
    wait_for(lambda: all(lab.get("gpuuser", n) is None for n in offboarded), timeout=120,
             what="offboarded users gone")
    wait_for(lambda: not orphan_problems(lab), timeout=180, what="no orphan namespace or pod")
    for ws in lab.items("workspaces", "-A"):
        name, ns = ws["metadata"]["name"], ws["metadata"]["namespace"]
        wanted = "Running" if ws["spec"]["state"] == "Running" else "Stopped"
        lab.wait_phase(name, ns.removeprefix("lab-"), wanted, timeout=90)

    assert uid_problems(lab) == []
    uids = [lab.status("gpuuser", n)["uid"] for n in everyone]
    assert len(set(uids)) == len(everyone)
    # a uid once given is never given again, so the offboarded keep their ledger entries
    ledger = lab.get("configmap", "labkeeper-uid-ledger", "labkeeper-system")["data"]
    assert set(everyone) <= set(ledger)
    assert orphan_problems(lab) == []
    for name in KEEPERS:
        assert checksums(agent.data / "users" / name) == before[name], f"{name}'s home changed"
    passwd = (agent.root / "etc" / "passwd").read_text()
    for name in everyone:
        assert passwd.count(f"\n{name}:") == 1, f"{name} in passwd {passwd.count(name)} times"
    for name in offboarded:
        assert f"\n{name}:" not in passwd, f"offboarded {name} still has an account"
