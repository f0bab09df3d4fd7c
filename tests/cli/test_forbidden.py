"""A lab member who reaches outside her namespace gets a plain Forbidden, never a traceback.
Needs only the API server: RBAC refuses before any labkeeper object is looked up."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_alice_reaching_into_bobs_namespace_reads_forbidden(cluster, labctl):
    alice = cluster.user_kubeconfig("alice")
    for args in (("ls",), ("stop", "train"), ("shell", "train"), ("logs", "train"), ("keepalive", "train", "1h")):
        result = labctl("--user", "bob", *args, kubeconfig=alice)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        lines = result.stderr.splitlines()
        assert lines[0].startswith("error: Forbidden: "), (args, result.stderr)
        assert 'User "alice" cannot' in lines[0] and 'in the namespace "lab-bob"' in lines[0]
        assert len(lines) == 2 and lines[1].startswith("hint: ")
        # the hint names alice's own namespace, never the one she reached for
        assert lines[1].endswith("your own namespace (lab-alice), not lab-bob"), (args, lines[1])


def test_an_unreachable_api_server_is_one_line_not_a_traceback(cluster, labctl, tmp_path):
    config = cluster.user_kubeconfig("alice").read_text().replace(cluster.server, "https://127.0.0.1:1")
    broken = tmp_path / "broken.kubeconfig"
    broken.write_text(config)
    result = labctl("ls", kubeconfig=broken)
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot reach the API server at https://127.0.0.1:1: ")
    assert "Traceback" not in result.stderr
