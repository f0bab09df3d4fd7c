"""One username rule for the CRD, the policy, the importers and the host."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from labkeeper.api.names import RESERVED_USERNAMES, USERNAME_PATTERN, InvalidName, validate_username

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
