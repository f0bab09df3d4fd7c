"""labctl as people run it: the installed console script, in a subprocess, with a given kubeconfig."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

LABCTL = Path(sys.executable).parent / "labctl"


def run_labctl(*args: str, kubeconfig: Path | str, input: str | None = None, timeout: float = 120,
               home: Path | None = None, columns: str = "200") -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "COLUMNS": columns, "NO_COLOR": "1"}
    if home is not None:
        env["HOME"] = str(home)
    return subprocess.run([str(LABCTL), *args], input=input, capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)


@pytest.fixture(scope="session")
def labctl():
    """`labctl(*args, kubeconfig=...)` runs the installed console script and returns the finished process."""
    assert LABCTL.exists(), f"{LABCTL} is missing: pip install -e . installs the labctl console script"
    return run_labctl


@pytest.fixture(scope="session")
def labctl_bin() -> Path:
    return LABCTL
