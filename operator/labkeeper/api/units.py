"""Durations and Kubernetes quantities, parsed once at the edge."""

from __future__ import annotations

import datetime as dt
import re
from decimal import Decimal, InvalidOperation

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}

QUANTITY_PATTERN = r"^([0-9]+(\.[0-9]+)?|\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
_QUANTITY = re.compile(QUANTITY_PATTERN)
_SUFFIX = {
    "": Decimal(1), "m": Decimal("0.001"),
    "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9, "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60,
}


def parse_duration(text: str) -> dt.timedelta:
    """`30m`, `1h30m`, `24h`, `2d`, `500ms` → timedelta; anything else is a ValueError that says what is valid."""
    value = str(text).strip()
    if not re.fullmatch(DURATION_PATTERN, value):
        raise ValueError(f"{text!r} is not a duration; use a number with a unit, e.g. 90s, 30m, 1h30m, 24h, 2d")
    seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(value))
    return dt.timedelta(seconds=seconds)


def format_duration(delta: dt.timedelta) -> str:
    """The shortest Go-style spelling (h, m or s), which CEL's duration() also reads: 72h, 30m, 90s."""
    seconds = int(delta.total_seconds())
    if seconds and seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds and seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def parse_quantity(text: str | int | float) -> Decimal:
    value = str(text).strip()
    match = _QUANTITY.fullmatch(value)
    if not match:
        raise ValueError(f"{text!r} is not a Kubernetes quantity; e.g. 500m, 4, 16Gi, 512Mi")
    suffix = match.group(3) or ""
    try:
        return Decimal(value[: len(value) - len(suffix)] if suffix else value) * _SUFFIX[suffix]
    except InvalidOperation as err:
        raise ValueError(f"{text!r} is not a Kubernetes quantity") from err


def parse_cpu(text: str | int | float) -> float:
    """CPU in cores: `500m` → 0.5."""
    return float(parse_quantity(text))


def parse_memory(text: str | int | float) -> int:
    """Memory in bytes: `16Gi` → 17179869184."""
    return int(parse_quantity(text))


def format_time(t: dt.datetime | None) -> str | None:
    """A status timestamp: RFC 3339 in UTC, whole seconds."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t else None


def parse_time(text: str | None) -> dt.datetime | None:
    """Any RFC 3339 time (fractions and offsets too) as an aware datetime; naive means UTC."""
    if not text:
        return None
    parsed = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def human_duration(delta: dt.timedelta) -> str:
    """For messages people read: 45s, 27m, 2h05m."""
    seconds = max(0, int(delta.total_seconds()))
    if seconds >= 3600:
        return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def format_size(size: int | None) -> str | None:
    """Bytes as a short binary quantity for `kubectl get` columns: 512, 3.4Ki, 12Mi, 1.5Gi."""
    if size is None:
        return None
    value = float(size)
    for unit in ("", "Ki", "Mi", "Gi", "Ti", "Pi"):
        if abs(value) < 1024 or unit == "Pi":
            return f"{int(value)}" if not unit else (f"{value:.1f}".removesuffix(".0") + unit)
        value /= 1024
    return None
