"""A workspace that asks for toolchains gets exactly those, read-only, at the path profile.d puts on PATH."""

from __future__ import annotations

from labkeeper.api.policy import load_policy
from labkeeper.render.pod import PodInputs, workspace_pod
from labkeeper.render.toolchains import toolchain_mounts

POLICY = load_policy("""
toolchains:
  - {name: miniforge, version: "24.11.0-0", file: /opt/installers/Miniforge3.sh, kind: installer-script}
  - {name: uv, version: "0.5.11", pypi: "uv==0.5.11", kind: wheel}
""")


def test_alice_asks_for_uv_and_gets_only_uv_read_only_and_an_unknown_name_is_reported():
    mounts, unknown = toolchain_mounts(POLICY.toolchains, "/srv/lab/", ["uv", "nodejs"])
    assert unknown == ["nodejs"]
    pod = workspace_pod(PodInputs(workspace="thesis", namespace="lab-alice", owner={}, username="alice", uid=20001,
                                  gid=20001, supplemental_gids=[2000], home_host_path="/srv/lab/users/alice",
                                  image="python:3.12", toolchains=mounts))
    volumes = [v for v in pod["spec"]["volumes"] if v["name"].startswith("tool-")]
    assert volumes == [{"name": "tool-uv", "hostPath": {"path": "/srv/lab/apps/uv-0.5.11", "type": "Directory"}}]
    container = pod["spec"]["containers"][0]
    assert {"name": "tool-uv", "mountPath": "/srv/lab/apps/uv-0.5.11", "readOnly": True} in container["volumeMounts"]


def test_a_workspace_that_names_no_toolchain_mounts_none():
    assert toolchain_mounts(POLICY.toolchains, "/srv/lab", []) == ([], [])
