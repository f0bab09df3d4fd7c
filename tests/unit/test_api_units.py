"""Durations and quantities are parsed once, into timedelta, cores and bytes."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labkeeper.api import format_duration, parse_cpu, parse_duration, parse_memory


@pytest.mark.parametrize(("text", "seconds"), [
    ("30m", 1800), ("24h", 86400), ("1h30m", 5400), ("90s", 90), ("2d", 172800), ("500ms", 0.5), ("0s", 0),
])
def test_durations(text, seconds):
    assert parse_duration(text) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["30", "30 minutes", "-5m", "1w", "", "h", "1.h"])
def test_malformed_durations_say_what_is_valid(text):
    with pytest.raises(ValueError, match=r"e\.g\. 90s, 30m, 1h30m, 24h"):
        parse_duration(text)


@given(st.integers(min_value=0, max_value=10**7))
def test_a_formatted_duration_parses_back(seconds):
    delta = dt.timedelta(seconds=seconds)
    assert parse_duration(format_duration(delta)) == delta


@pytest.mark.parametrize(("text", "cores"), [("500m", 0.5), ("4", 4.0), (2, 2.0), ("1.5", 1.5), ("100m", 0.1)])
def test_cpu_in_cores(text, cores):
    assert parse_cpu(text) == pytest.approx(cores)


@pytest.mark.parametrize(("text", "size"), [("16Gi", 16 * 2**30), ("512Mi", 512 * 2**20), ("1G", 10**9),
                                            ("2Ti", 2 * 2**40), ("1024", 1024)])
def test_memory_in_bytes(text, size):
    assert parse_memory(text) == size


@pytest.mark.parametrize("text", ["-1", "16GB", "lots", "1.2.3", "", "Gi"])
def test_non_quantities_are_refused(text):
    with pytest.raises(ValueError, match="not a Kubernetes quantity"):
        parse_memory(text)
