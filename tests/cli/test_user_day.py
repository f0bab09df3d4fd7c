"""A lab member's whole day through labctl, against the real API server and operator, with the
kubeconfig the operator issued her; and what she cannot do to anyone else's workspaces."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
import yaml

from labkeeper.testing.processes import SYSTEM_NAMESPACE, wait_for

pytestmark = pytest.mark.integration

IMAGE_ARGS = ("--image", "busybox", "--cpu", "100m", "--memory", "256Mi")


def get(cluster, *args) -> dict | None:
    result = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def add_member(cluster, labctl, name: str, tier: str, tmp_path) -> str:
    """The admin adds her with labctl; returns the kubeconfig the operator wrote for her."""
    result = labctl("admin", "user", "add", name, "--tier", tier, kubeconfig=cluster.kubeconfig)
    assert result.returncode == 0, result.stderr
    wait_for(lambda: ((get(cluster, "gu", name) or {}).get("status") or {}).get("phase") == "Ready",
             timeout=90, what=f"GPUUser {name} Ready")
    secret = get(cluster, "secret", f"kubeconfig-{name}", "-n", SYSTEM_NAMESPACE)
    path = tmp_path / f"{name}.kubeconfig"
    path.write_bytes(base64.b64decode(secret["data"]["config"]))
    return str(path)


@pytest.fixture
def members(crds, operator, labctl, unique, tmp_path):
    ada, ben = f"ada-{unique}", f"ben-{unique}"
    return {"ada": (ada, add_member(crds, labctl, ada, "faculty", tmp_path)),
            "ben": (ben, add_member(crds, labctl, ben, "faculty", tmp_path))}


def test_ada_goes_through_her_day_up_ls_status_keepalive_stop_start_down(crds, members, labctl):
    ada, kubeconfig = members["ada"]
    namespace = f"lab-{ada}"

    up = labctl("up", "train", "--gpu", "1g.10gb", *IMAGE_ARGS, "--timeout", "90", kubeconfig=kubeconfig)
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"workspace train created in {namespace} (1g.10gb)" in up.stdout
    assert "enter it with: labctl shell train" in up.stdout
    ws = get(crds, "ws", "train", "-n", namespace)
    assert ws["status"]["phase"] == "Running"
    pod = get(crds, "pod", ws["status"]["podName"], "-n", namespace)
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/mig-1g.10gb"] == "1"

    ls = labctl("ls", kubeconfig=kubeconfig)
    assert ls.returncode == 0
    row = next(line.split() for line in ls.stdout.splitlines() if line.startswith("train"))
    assert row[1:3] == ["Running", "1g.10gb"] and row[3] == pod["spec"]["nodeName"]
    listed = json.loads(labctl("ls", "-o", "json", kubeconfig=kubeconfig).stdout)
    assert [w["metadata"]["name"] for w in listed["items"]] == ["train"]

    status = labctl("status", kubeconfig=kubeconfig)
    assert status.returncode == 0, status.stderr
    assert f"{ada}: tier faculty, Active, Ready" in status.stdout
    usage = {u["what"]: u for u in yaml.safe_load(labctl("status", "-o", "yaml", kubeconfig=kubeconfig).stdout)["usage"]}
    assert usage["running workspaces"]["used"] == "1"
    assert usage["GPU equivalents"]["limit"] != "-"

    before = dt.datetime.now(dt.UTC)
    keep = labctl("keepalive", "train", "2h", kubeconfig=kubeconfig)
    assert keep.returncode == 0 and "kept alive until" in keep.stdout
    until = dt.datetime.fromisoformat(get(crds, "ws", "train", "-n", namespace)["spec"]["keepAliveUntil"])
    assert dt.timedelta(hours=1, minutes=59) < until - before < dt.timedelta(hours=2, minutes=1)

    stop = labctl("stop", "train", "--timeout", "90", kubeconfig=kubeconfig)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert get(crds, "ws", "train", "-n", namespace)["status"]["phase"] == "Stopped"
    wait_for(lambda: get(crds, "pod", "ws-train", "-n", namespace) is None, timeout=60, what="pod ws-train gone")

    start = labctl("start", "train", "--timeout", "90", kubeconfig=kubeconfig)
    assert start.returncode == 0, start.stdout + start.stderr
    assert get(crds, "ws", "train", "-n", namespace)["status"]["phase"] == "Running"

    refused = labctl("down", "train", kubeconfig=kubeconfig, input="")
    assert refused.returncode == 2 and "--yes" in refused.stderr
    assert get(crds, "ws", "train", "-n", namespace) is not None
    down = labctl("down", "train", "--yes", kubeconfig=kubeconfig)
    assert down.returncode == 0 and "workspace train deleted" in down.stdout
    wait_for(lambda: get(crds, "ws", "train", "-n", namespace) is None, timeout=60, what="workspace deleted")


def test_ada_cannot_see_stop_or_enter_bens_workspace(crds, members, labctl):
    (ada, ada_config), (ben, ben_config) = members["ada"], members["ben"]
    up = labctl("up", "secret-work", *IMAGE_ARGS, "--timeout", "90", kubeconfig=ben_config)
    assert up.returncode == 0, up.stdout + up.stderr

    for args in (("ls",), ("stop", "secret-work"), ("shell", "secret-work", "--", "id"), ("logs", "secret-work"),
                 ("down", "secret-work", "--yes")):
        result = labctl("--user", ben, *args, kubeconfig=ada_config)
        assert result.returncode == 1, (args, result.stdout)
        assert result.stderr.startswith("error: Forbidden: "), (args, result.stderr)
        assert f'User "{ada}" cannot' in result.stderr and f'"lab-{ben}"' in result.stderr
        assert "Traceback" not in result.stderr
    assert get(crds, "ws", "secret-work", "-n", f"lab-{ben}")["spec"]["state"] == "Running"
    assert "secret-work" not in labctl("ls", kubeconfig=ada_config).stdout


def test_admin_user_add_shows_in_kubectl_and_its_dry_run_applies_cleanly(crds, labctl, unique, tmp_path):
    name = f"cleo-{unique}"
    key = tmp_path / "cleo.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBcleo cleo@laptop\n")
    dry = labctl("admin", "user", "add", name, "--tier", "researcher", "--ssh-key", str(key), "--group", "vision",
                 "--dry-run", "-o", "yaml", kubeconfig=crds.kubeconfig)
    assert dry.returncode == 0, dry.stderr
    assert crds.kubectl("get", "gu", name, check=False).returncode != 0  # a dry run writes nothing
    applied = crds.kubectl("apply", "-f", "-", input=dry.stdout, check=False)
    assert applied.returncode == 0, applied.stderr
    user = get(crds, "gu", name)
    assert user["spec"]["sshKeys"] == ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBcleo cleo@laptop"]
    assert user["spec"]["groups"] == ["vision"]

    other = f"dara-{unique}"
    added = labctl("admin", "user", "add", other, "--tier", "student", kubeconfig=crds.kubeconfig)
    assert added.returncode == 0, added.stderr
    names = crds.kubectl("get", "gu", "-o", "name").stdout.split()
    assert f"gpuuser.labkeeper.io/{other}" in names
    again = labctl("admin", "user", "add", other, "--tier", "student", kubeconfig=crds.kubeconfig)
    assert again.returncode == 1 and f"GPUUser {other} already exists" in again.stderr

    listed = labctl("admin", "user", "ls", kubeconfig=crds.kubeconfig)
    assert any(line.split()[:2] == [other, "student"] for line in listed.stdout.splitlines())
    suspended = labctl("admin", "user", "suspend", other, kubeconfig=crds.kubeconfig)
    assert suspended.returncode == 0
    assert get(crds, "gu", other)["spec"]["state"] == "Suspended"
    offboard = labctl("admin", "user", "offboard", other, "--archive", kubeconfig=crds.kubeconfig)
    assert offboard.returncode == 0
    assert {k: get(crds, "gu", other)["spec"][k] for k in ("state", "dataPolicy")} == {
        "state": "Offboarded", "dataPolicy": "Archive"}
