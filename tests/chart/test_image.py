"""`make image` builds one image that runs both components, the operator as a non-root user."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
from chartlib import REPO_ROOT

pytestmark = pytest.mark.slow

STORAGE = ["--storage-driver", os.environ.get("BUILDAH_STORAGE_DRIVER", "vfs")]


def buildah(*args: str, timeout: float = 60) -> str:
    result = subprocess.run(["buildah", *STORAGE, *args], capture_output=True, text=True, timeout=timeout,
                            check=False)
    assert result.returncode == 0, f"buildah {' '.join(args)}:\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    if shutil.which("buildah") is None:
        pytest.skip("buildah is not installed (apt-get install buildah); no Docker engine runs here")
    if os.geteuid() != 0:
        pytest.skip("buildah with chroot isolation and vfs storage runs as root here")
    name = "localhost/labkeeper/labkeeper:test"
    result = subprocess.run(["bash", str(REPO_ROOT / "hack" / "image.sh")], capture_output=True, text=True,
                            timeout=900, check=False, env={**os.environ, "IMAGE": name})
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().splitlines()[-1] == name
    yield name
    buildah("rmi", "--force", name)


def run_in(image: str, *command: str, user: str | None = None) -> str:
    container = buildah("from", image).strip()
    try:
        return buildah("run", "--isolation", "chroot", *(["--user", user] if user else []), container, "--",
                       *command)
    finally:
        buildah("rm", container)


def test_the_image_runs_labkeeper_as_uid_65532_by_default(image):
    config = json.loads(buildah("inspect", "--type", "image", image))["OCIv1"]["config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["labkeeper"]
    assert run_in(image, "id", "-u").strip() == "65532"
    assert "labkeeper {operator|agent}" in run_in(image, "labkeeper", "--help")


def test_the_image_has_the_operator_code_and_the_agents_host_tools(image):
    out = run_in(image, "python", "-c", "import kopf, labkeeper.controller.main; print('ok')")
    assert out.strip() == "ok"
    for tool in ("setfacl", "getfacl", "useradd", "groupadd"):
        assert run_in(image, "sh", "-c", f"command -v {tool}").strip(), tool
