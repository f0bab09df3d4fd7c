"""It must show 4: cleanup by age and by size frees what the policy says and nothing else; a tree past
80% of its limit raises the alert."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from hostlab import alice, lab, make_host

from labkeeper.agent import cleanup, disk
from labkeeper.agent.recovery import reconcile_host

pytestmark = pytest.mark.host
NOW = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


@pytest.fixture
def pip(host_root):
    host = make_host(host_root.parent)
    reconcile_host(host, lab(alice()))
    cache = host.data_root / "cache/pip"
    for name, days in (("old.whl", 100), ("older.whl", 200), ("mid.whl", 20), ("new.whl", 1)):
        (cache / "wheels").mkdir(exist_ok=True)
        path = cache / "wheels" / name
        path.write_bytes(b"x" * 8192)
        stamp = (NOW - dt.timedelta(days=days)).timestamp()
        os.utime(path, (stamp, stamp))
    yield host, cache
    host.close()


def names(cache):
    return sorted(p.name for p in (cache / "wheels").iterdir())


def test_max_age_removes_only_files_not_accessed_for_that_long(pip):
    host, cache = pip
    freed = cleanup.clean(host.data_fd, "cache/pip", NOW, dt.timedelta(days=90), None)
    assert names(cache) == ["mid.whl", "new.whl"]
    assert (freed.files, freed.bytes) == (2, 16384)
    assert freed.reason == "2 not accessed for 90d+"


def test_max_size_removes_least_recently_used_first_until_under_the_limit(pip):
    host, cache = pip
    freed = cleanup.clean(host.data_fd, "cache/pip", NOW, None, 2 * 8192)
    assert names(cache) == ["mid.whl", "new.whl"]
    assert freed.files == 2
    assert cleanup.clean(host.data_fd, "cache/pip", NOW, None, 2 * 8192).files == 0


def test_a_cache_past_80_percent_of_its_limit_raises_the_alert(pip):
    host, cache = pip
    scanner = disk.DiskScanner(host.data_fd)
    scanner.set_targets(["cache/pip"])
    scanner.scan_once()
    used = scanner.get("cache/pip")
    assert used >= 4 * 8192
    assert disk.alert_level(used, limit=used * 2) == "OK"
    (cache / "wheels/big.whl").write_bytes(b"y" * 8192 * 8)
    scanner.scan_once()
    assert disk.alert_level(scanner.get("cache/pip"), limit=int(used * 2)) in {"Warning", "Critical"}
    assert disk.alert_level(85, 100) == "Warning" and disk.alert_level(95, 100) == "Critical"
    fs = disk.filesystem_usage(host.data_fd)
    assert 0 < fs.ratio < 1
