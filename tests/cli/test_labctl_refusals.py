"""What labctl refuses before the API or the operator would have to, in their words, and what it prints
when it gives up: against the real API server and operator, with the kubeconfig the operator issued."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from test_user_day import IMAGE_ARGS, add_member, get

from labkeeper.testing.processes import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def student(crds, operator, labctl, unique, tmp_path):
    name = f"stu-{unique}"
    return name, add_member(crds, labctl, name, "student", tmp_path)


def status_of(crds, name: str, namespace: str) -> dict:
    return (get(crds, "ws", name, "-n", namespace) or {}).get("status") or {}


def test_up_beyond_the_tier_is_refused_before_anything_is_applied_in_the_operators_words(crds, student, labctl):
    name, kubeconfig = student
    namespace = f"lab-{name}"
    big = labctl("up", "big", "--image", "busybox", "--cpu", "64", "--memory", "1Gi", "--timeout", "30",
                 kubeconfig=kubeconfig)
    assert big.returncode == 1, big.stdout + big.stderr
    said = "workspace big cannot start: NotEntitled: spec.cpu 64 exceeds the tier student limit of 32"
    assert big.stderr.splitlines()[0] == f"error: {said}"
    assert get(crds, "ws", "big", "-n", namespace) is None, "labctl applied it anyway"

    # the same spec through kubectl: the operator says exactly what labctl said
    crds.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "labkeeper.io/v1alpha1", "kind": "Workspace", "metadata": {"name": "big", "namespace": namespace},
        "spec": {"image": "busybox", "cpu": "64", "memory": "1Gi"}}))
    wait_for(lambda: status_of(crds, "big", namespace).get("reason") == "NotEntitled", timeout=30,
             what="the operator's NotEntitled")
    status = status_of(crds, "big", namespace)
    assert f"workspace big cannot start: NotEntitled: {status['message']}" == said


def test_keepalive_beyond_the_cap_is_refused_naming_it_and_the_status_shows_what_was_granted(crds, student, labctl):
    name, kubeconfig = student
    namespace = f"lab-{name}"
    up = labctl("up", "nb", *IMAGE_ARGS, "--timeout", "90", kubeconfig=kubeconfig)
    assert up.returncode == 0, up.stdout + up.stderr

    greedy = labctl("keepalive", "nb", "100h", kubeconfig=kubeconfig)
    assert greedy.returncode == 2, greedy.stdout + greedy.stderr
    assert "keep-alive 100h for nb is beyond the lab policy's cap of 24h (keepAliveMax)" in greedy.stderr
    assert "keepAliveUntil" not in get(crds, "ws", "nb", "-n", namespace)["spec"]
    kept = labctl("keepalive", "nb", "2h", kubeconfig=kubeconfig)
    assert kept.returncode == 0 and "kept alive until" in kept.stdout and "may cap" not in kept.stdout
    wait_for(lambda: status_of(crds, "nb", namespace).get("keepAliveUntil"), timeout=30, what="keep-alive in status")

    # kubectl can still ask for more: the operator grants the cap from when it saw the request, and says so
    asked_at = dt.datetime.now(dt.UTC).replace(microsecond=0)
    far = (asked_at + dt.timedelta(hours=100)).strftime("%Y-%m-%dT%H:%M:%SZ")
    crds.kubectl("patch", "ws", "nb", "-n", namespace, "--type=merge", "-p",
                 json.dumps({"spec": {"keepAliveUntil": far}}))

    def capped():
        status = status_of(crds, "nb", namespace)
        cond = next((c for c in status.get("conditions") or [] if c["type"] == "KeepAliveCapped"), {})
        return cond.get("status") == "True" and (status, cond)

    status, cond = wait_for(capped, timeout=30, what="KeepAliveCapped")
    granted = dt.datetime.fromisoformat(status["keepAliveUntil"].replace("Z", "+00:00"))
    assert dt.timedelta(hours=23, minutes=59) <= granted - asked_at <= dt.timedelta(hours=24, minutes=1)
    assert f"spec.keepAliveUntil {far} is beyond the policy cap of 24h00m (keepAliveMax)" in cond["message"]
    ls = labctl("ls", kubeconfig=kubeconfig)
    row = next(line for line in ls.stdout.splitlines() if line.startswith("nb "))
    assert "kept 23h" in row or "kept 1d00h" in row, row  # what was granted, never "kept 4d04h"


def test_a_timeout_while_waiting_for_a_device_says_so_and_a_workspace_count_refusal_says_what_to_stop(
        crds, student, labctl):
    _name, kubeconfig = student
    # no node has a 7g.80gb slice: it waits, and the hint says that, not "is the operator running?"
    slow = labctl("up", "huge", "--gpu", "7g.80gb", *IMAGE_ARGS, "--timeout", "8", kubeconfig=kubeconfig)
    assert slow.returncode == 1, slow.stdout + slow.stderr
    assert "timed out" in slow.stderr and "waiting for a device" in slow.stderr, slow.stderr
    assert "is the operator running" not in slow.stderr
    labctl("down", "huge", "--yes", kubeconfig=kubeconfig)

    for ws in ("one", "two", "three"):
        assert labctl("up", ws, *IMAGE_ARGS, "--timeout", "90", kubeconfig=kubeconfig).returncode == 0
    fourth = labctl("up", "four", *IMAGE_ARGS, "--timeout", "60", kubeconfig=kubeconfig)
    assert fourth.returncode == 1, fourth.stdout + fourth.stderr
    assert "QuotaExceeded" in fourth.stderr and "as many workspaces as your tier allows" in fourth.stderr
    assert "free GPUs" not in fourth.stderr


def test_ls_all_into_a_pipe_keeps_each_message_whole(crds, student, labctl):
    name, _kubeconfig = student
    namespace = f"lab-{name}"
    crds.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "labkeeper.io/v1alpha1", "kind": "Workspace", "metadata": {"name": "wide", "namespace": namespace},
        "spec": {"image": "busybox", "cpu": "64", "memory": "1Gi"}}))
    message = wait_for(lambda: status_of(crds, "wide", namespace).get("reason") == "NotEntitled"
                       and status_of(crds, "wide", namespace)["message"], timeout=30, what="NotEntitled")
    # an 80-column terminal's COLUMNS, but stdout is a pipe: rows stay whole, as kubectl prints them
    listed = labctl("ls", "-A", kubeconfig=crds.kubeconfig, columns="80")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.split()[:2] == [name, "wide"])
    assert row.rstrip().endswith(f"NotEntitled: {message}"), listed.stdout


def test_cleaning_a_shared_cache_is_an_admin_command(crds, student, labctl, unique):
    _name, kubeconfig = student
    cache = f"pip-{unique}"
    crds.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "labkeeper.io/v1alpha1", "kind": "SharedCache", "metadata": {"name": cache},
        "spec": {"type": "pip", "path": f"cache/{cache}"}}))
    try:
        assert labctl("cache", "clean", cache, kubeconfig=crds.kubeconfig).returncode == 2  # not a user command
        member = labctl("admin", "cache", "clean", cache, kubeconfig=kubeconfig)
        assert member.returncode == 1 and "Forbidden" in member.stderr
        admin = labctl("admin", "cache", "clean", cache, kubeconfig=crds.kubeconfig)
        assert admin.returncode == 0, admin.stderr
        annotations = get(crds, "sharedcache", cache)["metadata"]["annotations"]
        assert "labkeeper.io/clean-requested" in annotations
    finally:
        crds.kubectl("delete", "sharedcache", cache, "--wait=false")


def test_admin_user_add_refuses_a_tier_the_policy_does_not_have(crds, operator, labctl, unique):
    refused = labctl("admin", "user", "add", f"gil-{unique}", "--tier", "gold", kubeconfig=crds.kubeconfig)
    assert refused.returncode == 2
    assert "--tier 'gold' is not a tier of the lab policy; valid: faculty, researcher, student" in refused.stderr
    assert get(crds, "gu", f"gil-{unique}") is None


def test_labctl_and_the_api_share_one_username_rule(crds, operator, labctl, unique):
    # labctl used to take `bob-` and stop at 31 characters while the API took 32
    trailing = labctl("admin", "user", "add", f"bo{unique}-", "--tier", "student", kubeconfig=crds.kubeconfig)
    assert trailing.returncode == 2 and "not ending in '-'" in trailing.stderr
    longest = f"u{unique}".ljust(32, "x")
    added = labctl("admin", "user", "add", longest, "--tier", "student", kubeconfig=crds.kubeconfig)
    try:
        assert added.returncode == 0, added.stderr
        assert get(crds, "gu", longest)["metadata"]["name"] == longest
        too_long = labctl("admin", "user", "add", longest + "x", "--tier", "student", kubeconfig=crds.kubeconfig)
        assert too_long.returncode == 2 and "33 characters; at most 32" in too_long.stderr
        sudoer = labctl("admin", "user", "add", f"su{unique}", "--tier", "student", "--group", "sudo",
                        kubeconfig=crds.kubeconfig)
        assert sudoer.returncode == 2 and "group 'sudo' is a privileged or system group" in sudoer.stderr
    finally:
        crds.kubectl("delete", "gu", longest, "--wait=false", check=False)
