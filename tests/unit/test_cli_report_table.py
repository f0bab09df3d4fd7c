"""`labctl admin report`'s table is written as whole lines rather than laid out by Rich cell by cell (a department's
report has a row per user): it must read exactly as Rich's table, into a pipe and on a terminal it fits, and a
terminal too narrow for it still gets Rich's shrunken table."""

from __future__ import annotations

import io
import random

import pytest
from rich.console import Console

from labkeeper.cli.output import PIPE_WIDTH, table
from labkeeper.cli.report import COLUMNS, print_table

HEADERS = [h for h, _ in COLUMNS]
TITLE = ("GPU-equivalent-hours from 2026-11-30T00:00:00Z to 2026-12-07T03:00:00Z; idle share of the lab 23.4%; "
         "slice utilisation 41.2% of 72240.00")


def rows(count: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        out.append([f"s{i:04d}" + "x" * rng.randrange(8), rng.choice(["student", "researcher", "faculty"]),
                    *(f"{rng.uniform(0, 10 ** rng.randrange(1, 5)):.2f}" for _ in range(4)),
                    f"{rng.uniform(0, 5):.1f}%", rng.choice(["-", "45s", "12m03s", "3h07m"]),
                    rng.choice(["-", "9m59s", "27h00m"]), str(rng.randrange(40)), str(rng.randrange(3))])
    out.append(["(lab)", "", "123.45", "100.00", "20.45", "3.00", "100.0%", "4m00s", "2h10m", "123", "9"])
    return out


def printed(write, *, width: int, terminal: bool) -> str:
    buffer = io.StringIO()
    out = Console(file=buffer, width=width, force_terminal=terminal, color_system=None, highlight=False,
                  soft_wrap=not terminal)
    write(out)
    return buffer.getvalue()


@pytest.mark.parametrize(("width", "terminal"), [(PIPE_WIDTH, False), (200, True), (130, True), (80, True)])
@pytest.mark.parametrize(("count", "seed"), [(1, 1), (30, 2), (400, 3)])
def test_the_report_table_reads_as_richs(width, terminal, count, seed):
    body = rows(count, seed)
    by_rich = printed(lambda out: out.print(table(HEADERS, body, title=TITLE)), width=width, terminal=terminal)
    by_lines = printed(lambda out: print_table(out, HEADERS, body, TITLE), width=width, terminal=terminal)
    assert by_lines == by_rich
    assert len(by_lines.splitlines()) >= count + 2
