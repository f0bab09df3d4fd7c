"""It must show 1: alice, bob, caches and a model store on a fresh host root, checked with getfacl and
with real processes running as the users."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest
from hostlab import LAB_GID, alice, as_user, bob, entries, getfacl, lab, make_host

from labkeeper.agent.recovery import reconcile_host

pytestmark = pytest.mark.host


@pytest.fixture
def host(host_root):
    h = make_host(host_root.parent)
    yield h
    h.close()


@pytest.fixture
def traversable(host_root):
    """pytest's temp dirs are 0700 root; the users' processes must reach the data root through them."""
    for parent in host_root.parents:
        if parent == parent.parent or str(parent) == "/tmp":
            break
        parent.chmod(0o711)


def test_alice_and_bob_get_accounts_homes_keys_and_profile(host):
    result = reconcile_host(host, lab(alice(), bob()))
    assert result.report.failed == []
    root, data = host.host_root, host.data_root
    passwd, shadow, group = entries(root / "etc/passwd"), entries(root / "etc/shadow"), entries(root / "etc/group")
    assert passwd["alice"][2:4] == ["20001", "20001"] and passwd["alice"][5:] == ["/home/alice", "/bin/bash"]
    assert shadow["alice"][1] == "*", "no password can log in; SSH keys can"
    assert group["lab-users"][2:] == [str(LAB_GID), "alice,bob"]
    assert group["alice"][2] == "20001"

    home = data / "users/alice"
    st = home.lstat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (20001, 20001, 0o750)
    assert os.readlink(root / "home/alice") == "/data/users/alice"
    bashrc = (home / ".bashrc").read_text()
    assert "umask 002" in bashrc and 'HF_HOME="$HOME/.cache/huggingface"' in bashrc
    assert "HF_HUB_CACHE=/data/models/huggingface/hub" in bashrc
    assert "pkgs_dirs:\n  - /data/cache/conda/pkgs" in (home / ".condarc").read_text()
    keys = home / ".ssh/authorized_keys"
    assert stat.S_IMODE((home / ".ssh").lstat().st_mode) == 0o700
    assert (keys.lstat().st_uid, stat.S_IMODE(keys.lstat().st_mode)) == (20001, 0o600)
    assert alice().ssh_keys[0] in keys.read_text()

    profile = (root / "etc/profile.d/labkeeper.sh").read_text()
    assert "export PIP_CACHE_DIR=/data/cache/pip" in profile
    assert "export CONDA_PKGS_DIRS=/data/cache/conda/pkgs" in profile
    assert f'*" {LAB_GID} "*) umask 002' in profile
    syntax = subprocess.run(["sh", "-n", str(root / "etc/profile.d/labkeeper.sh")], capture_output=True)
    assert syntax.returncode == 0
    # an interactive login prints the agent's notices; a script sourcing the profile stays quiet
    notices = home / ".labkeeper" / "notices"
    notices.mkdir(parents=True)
    (notices / "train").write_text("labkeeper: workspace train in lab-alice will be stopped soon\n")
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    login = subprocess.run(["sh", "-i", "-c", f". {root / 'etc/profile.d/labkeeper.sh'}"], capture_output=True,
                           text=True, env=env, stdin=subprocess.DEVNULL)
    assert "workspace train in lab-alice will be stopped soon" in login.stdout, (login.stdout, login.stderr)
    script = subprocess.run(["sh", "-c", f". {root / 'etc/profile.d/labkeeper.sh'}"], capture_output=True, text=True,
                            env=env)
    assert script.returncode == 0 and script.stdout == "", script.stdout


def test_shared_trees_carry_setgid_and_numeric_acls(host):
    reconcile_host(host, lab(alice(), bob()))
    pip = host.data_root / "cache/pip"
    st = pip.lstat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, LAB_GID, 0o2775)
    assert {f"group:{LAB_GID}:rwx", f"default:group:{LAB_GID}:rwx", "default:mask::rwx"} <= getfacl(pip)
    store = getfacl(host.data_root / "models/huggingface")
    assert {"user:20001:rwx", "default:user:20001:rwx", f"group:{LAB_GID}:r-x", "group::r-x"} <= store
    assert f"group:{LAB_GID}:rwx" not in store


def test_a_file_one_member_puts_in_a_cache_is_writable_by_another(host, traversable):
    reconcile_host(host, lab(alice(), bob()))
    wheel = host.data_root / "cache/pip/wheel.whl"

    def alice_downloads():
        with open(wheel, "w") as f:  # alice's own umask 022 does not matter: the default ACL decides
            f.write("v1")

    def bob_updates():
        with open(wheel, "a") as f:
            f.write("+bob")
        return "ok"

    as_user(20001, [20001, LAB_GID], alice_downloads)
    assert wheel.stat().st_gid == LAB_GID, "setgid directory hands the lab group down"
    assert as_user(20002, [20002, LAB_GID], bob_updates) == "'ok'"
    assert wheel.read_text() == "v1+bob"


def test_model_store_readers_read_and_only_writers_write(host, traversable):
    reconcile_host(host, lab(alice(), bob()))
    store = host.data_root / "models/huggingface"
    assert as_user(20001, [20001, LAB_GID], lambda: (store / "model.bin").write_text("weights")) == "7"
    assert as_user(20002, [20002, LAB_GID], lambda: (store / "model.bin").read_text()) == "'weights'"
    assert as_user(20002, [20002, LAB_GID], lambda: (store / "bob.bin").write_text("x")).startswith("error:Permission")
    assert as_user(20002, [20002, LAB_GID], lambda: (store / "model.bin").write_text("overwritten")).startswith("error:Permission")


def test_second_pass_changes_nothing_and_a_changed_key_is_synced(host):
    reconcile_host(host, lab(alice(), bob()))
    assert reconcile_host(host, lab(alice(), bob())).report.done == []
    new_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINewNewNewNewNewNewNewNewNewNewNewNewNew00 alice@new"
    done = reconcile_host(host, lab(alice(ssh_keys=(new_key,)), bob())).report.done
    assert done == ["home alice: authorized_keys (1 keys)"]
    text = (host.data_root / "users/alice/.ssh/authorized_keys").read_text()
    assert new_key in text and alice().ssh_keys[0] not in text


def test_skeleton_is_written_once_and_never_over_a_users_edits(host):
    reconcile_host(host, lab(alice()))
    bashrc = host.data_root / "users/alice/.bashrc"
    bashrc.write_text("# mine\n")
    (host.data_root / "users/alice/.condarc").unlink()
    reconcile_host(host, lab(alice()))
    assert bashrc.read_text() == "# mine\n"
    assert not (host.data_root / "users/alice/.condarc").exists(), "a deleted skeleton file stays deleted"


def test_kubeconfig_is_written_private_when_the_operator_provides_one(host):
    reconcile_host(host, lab(alice(kubeconfig=b"apiVersion: v1\nkind: Config\n")))
    config = host.data_root / "users/alice/.kube/config"
    st = config.lstat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode), config.read_bytes()) == (20001, 0o600, b"apiVersion: v1\nkind: Config\n")


def test_an_account_that_labkeeper_did_not_make_is_never_taken_over(host):
    passwd = host.host_root / "etc/passwd"
    passwd.write_text(passwd.read_text() + "alice:x:1000:1000:Alice the admin:/home/alice:/bin/zsh\n")
    result = reconcile_host(host, lab(alice(), bob()))
    assert "not managed by labkeeper" in result.report.problems["alice"][0]
    assert result.provisioned == {"bob"}
    assert entries(passwd)["alice"] == ["alice", "x", "1000", "1000", "Alice the admin", "/home/alice", "/bin/zsh"]
    assert not (host.data_root / "users/alice").exists()
    assert "alice" not in entries(host.host_root / "etc/group")["lab-users"][3]


def test_a_uid_held_by_a_host_account_is_reported(host):
    passwd = host.host_root / "etc/passwd"
    passwd.write_text(passwd.read_text() + "carol:x:20001:100::/home/carol:/bin/sh\n")
    result = reconcile_host(host, lab(alice()))
    assert result.report.problems["alice"] == ["uid 20001 already belongs to account 'carol' on this host"]


def test_useradd_beside_the_agent_sees_consistent_files(host):
    reconcile_host(host, lab(alice()))
    subprocess.run(["useradd", "--prefix", str(host.host_root), "-u", "3000", "-U", "-M", "carol"], check=True)
    reconcile_host(host, lab(alice(), bob()))
    passwd = entries(host.host_root / "etc/passwd")
    assert {"alice", "bob", "carol"} <= set(passwd)
    assert not list((host.host_root / "etc").glob("[a-z]*.lock")), "every per-file lock was released"
