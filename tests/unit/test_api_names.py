"""One username rule for the CRD, the policy, the importers and the host."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from labkeeper.api.names import (
    CACHE_ENV_NAMES,
    ENV_NAME_PATTERN,
    REFUSED_GROUPS,
    RESERVED_USERNAMES,
    USERNAME_PATTERN,
    InvalidName,
    validate_cache_env_name,
    validate_group,
    validate_username,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["alice", "bob-2", "a", "x" * 32, "ml-lab-007"])
def test_ordinary_lab_names_are_accepted(name):
    assert validate_username(name) == name


@pytest.mark.parametrize(("name", "says"), [
    ("Alice", "lowercase letter first"),
    ("1alice", "lowercase letter first"),
    ("alice_b", "lowercase letter first"),
    ("alice-", "not ending in '-'"),
    ("x" * 33, "33 characters; at most 32"),
    ("", "empty"),
    ("root", "reserved"),
    ("nobody", "reserved"),
    ("www-data", "reserved"),
])
def test_bad_names_are_refused_saying_why(name, says):
    with pytest.raises(InvalidName, match=re.escape(says)):
        validate_username(name)


def test_an_account_that_exists_on_this_host_is_refused_too():
    with pytest.raises(InvalidName, match="reserved"):
        validate_username("postgres", existing_system_accounts=frozenset({"postgres"}))


def test_the_crd_refuses_exactly_the_reserved_names():
    crd = yaml.safe_load((REPO_ROOT / "crds" / "gpuusers.labkeeper.io.yaml").read_text())
    rules = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]
    reserved = next(r["rule"] for r in rules if "reserved" in r["message"])
    assert set(re.findall(r"'([^']+)'", reserved)) == RESERVED_USERNAMES


@given(st.from_regex(USERNAME_PATTERN, fullmatch=True))
def test_every_valid_username_is_also_a_dns_label_for_the_namespace(name):
    if name in RESERVED_USERNAMES:
        return
    validate_username(name)
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", f"lab-{name}") and len(f"lab-{name}") <= 63


# ---- the environment a shared tree may set, and the groups a member may get --------------------------------
@pytest.mark.parametrize("name", ["PIP_CACHE_DIR", "CONDA_PKGS_DIRS", "UV_CACHE_DIR", "npm_config_cache",
                                  "YARN_CACHE_FOLDER", "HF_HUB_CACHE", "TORCH_HOME", "FLUX_MODELS", "LAB_DATA_CACHE"])
def test_names_that_point_tools_at_caches_and_models_may_be_set(name):
    assert validate_cache_env_name(name) == name


@pytest.mark.parametrize("name", ["LD_PRELOAD", "LD_LIBRARY_PATH", "PATH", "PYTHONPATH", "BASH_ENV", "PROMPT_COMMAND",
                                  "HF_HOME", "HOME", "lower_cache"])
def test_anything_else_is_refused_naming_what_is_allowed(name):
    with pytest.raises(InvalidName, match=re.escape(f"{name!r} does not point a tool at a cache")) as err:
        validate_cache_env_name(name)
    assert "PIP_CACHE_DIR" in str(err.value) and "_CACHE_DIR" in str(err.value)


@pytest.mark.parametrize("group", ["root", "sudo", "wheel", "adm", "disk", "docker", "lxd", "shadow", "daemon"])
def test_privileged_and_system_groups_are_refused(group):
    with pytest.raises(InvalidName, match="privileged or system group"):
        validate_group(group)


def test_ordinary_groups_pass_and_the_crd_refuses_exactly_the_same_groups():
    assert validate_group("ml-lab") == "ml-lab" and validate_group("video") == "video"
    crd = yaml.safe_load((REPO_ROOT / "crds" / "gpuusers.labkeeper.io.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rule = spec["properties"]["groups"]["items"]["x-kubernetes-validations"][0]["rule"]
    assert set(re.findall(r"'([^']+)'", rule)) == REFUSED_GROUPS
    assert spec["properties"]["groups"]["items"]["pattern"] == USERNAME_PATTERN  # the name rule stays beside it


def test_the_crd_allows_exactly_the_cache_names():
    for kind in ("sharedcaches", "modelstores"):
        crd = yaml.safe_load((REPO_ROOT / "crds" / f"{kind}.labkeeper.io.yaml").read_text())
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        name = spec["properties"]["env"]["items"]["properties"]["name"]
        listed = name["x-kubernetes-validations"][0]["rule"].split(" || ")[0]
        assert set(re.findall(r"'([^']+)'", listed)) == CACHE_ENV_NAMES
        assert name["pattern"] == ENV_NAME_PATTERN
