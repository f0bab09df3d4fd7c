"""Printing: tables through Rich, json and yaml as plain text kubectl would accept."""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Sequence

import yaml
from rich.console import Console
from rich.table import Table


class Format(enum.StrEnum):
    table = "table"
    json = "json"
    yaml = "yaml"


# into a file or a pipe there is no screen to fit: rows stay whole, as kubectl prints them, whatever COLUMNS says
PIPE_WIDTH = 100_000


def console() -> Console:
    if sys.stdout.isatty():
        return Console(highlight=False)
    return Console(soft_wrap=True, highlight=False, width=PIPE_WIDTH)


def err_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, title: str | None = None) -> Table:
    out = Table(title=title, box=None, show_edge=False, pad_edge=False, header_style="bold", title_justify="left")
    for header in headers:
        out.add_column(header, overflow="fold" if header == "MESSAGE" else "ellipsis",
                       no_wrap=header != "MESSAGE")
    for row in rows:
        out.add_row(*[str(cell) for cell in row])
    return out


def as_list(items: list[dict]) -> dict:
    return {"apiVersion": "v1", "kind": "List", "items": items}


def dump(data: object, fmt: Format) -> str:
    if fmt == Format.json:
        return json.dumps(data, indent=2, sort_keys=False, default=str)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def emit(data: object, fmt: Format, headers: Sequence[str] = (), rows: Sequence[Sequence[str]] = (),
         empty: str = "nothing to show") -> None:
    if fmt == Format.table:
        if not rows:
            console().print(empty)
        else:
            console().print(table(headers, rows))
        return
    sys.stdout.write(dump(data, fmt).rstrip("\n") + "\n")
