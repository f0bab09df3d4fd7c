"""`labctl report` and `labctl admin report`: who held which GPUs, how much of it sat idle, who waited how long.

The figures are api/accounting.py's over the users' GPUUser.status.accounting buckets (whole UTC days from the
first day of the window) plus what their Workspaces' meters say since the last fold, so a report is current to the
second. The operator's Prometheus metrics are computed by the same function."""

from __future__ import annotations

import csv
import datetime as dt
import enum
import io
import json
import sys

import typer
from kubernetes.client.exceptions import ApiException
from rich.cells import cell_len
from rich.console import Console
from rich.text import Text

from labkeeper.api import accounting as api_accounting
from labkeeper.api import admission as api_admission
from labkeeper.api.policy import POLICY_CONFIGMAP, POLICY_KEY, LabPolicy, PolicyError, load_policy
from labkeeper.api.units import format_time, parse_duration
from labkeeper.cli.app import admin_app, app, session
from labkeeper.cli.errors import EXIT_USAGE, LabctlError
from labkeeper.cli.output import console, table
from labkeeper.cli.session import SYSTEM_NAMESPACE, Session

HOURS = 3600.0


class ReportFormat(enum.StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


ReportOutput = typer.Option(ReportFormat.table, "--output", "-o", help="table, json or csv")
SinceOption = typer.Option("7d", "--since", help="how far back: a duration such as 24h, 7d, 30d (whole UTC days)")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def lab_policy(s: Session) -> LabPolicy:
    """The policy in force for half-life and shares; the built-in one where it cannot be read (a user may not read
    the system namespace)."""
    try:
        cm = s.kube.get("ConfigMap", POLICY_CONFIGMAP, SYSTEM_NAMESPACE)
        return load_policy((cm.get("data") or {}).get(POLICY_KEY, "") if cm else "")
    except (ApiException, PolicyError):
        return LabPolicy()


def window(since: str) -> dt.timedelta:
    try:
        span = parse_duration(since)
    except ValueError as err:
        raise LabctlError(f"--since {since!r} is not a duration: {err}", "e.g. --since 24h, 7d or 30d",
                          exit_code=EXIT_USAGE) from err
    if span.total_seconds() <= 0 or span > dt.timedelta(days=api_accounting.RETENTION_DAYS):
        raise LabctlError(f"--since {since} is outside 1s..{api_accounting.RETENTION_DAYS}d",
                          f"the operator keeps {api_accounting.RETENTION_DAYS} days of buckets", exit_code=EXIT_USAGE)
    return span


def lab_report(users: list[dict], workspaces: list[dict], policy: LabPolicy, at: dt.datetime,
               span: dt.timedelta, nodes: list[dict] | None = None) -> dict:
    """The report as data: per user, then lab totals. GPU figures in GPU-equivalent-hours."""
    shares = {u["metadata"]["name"]: policy.share((u.get("spec") or {}).get("tier")) for u in users}
    start = at - span
    reports = api_accounting.report(users, workspaces, at, start, policy.fair_share.half_life, shares)
    total_held = sum(r.held for r in reports)
    rows = []
    for r in reports:
        p50, p95 = api_accounting.percentile(r.waits, 50), api_accounting.percentile(r.waits, 95)
        rows.append({
            "user": r.user, "tier": r.tier,
            "heldGpuHours": round(r.held / HOURS, 6), "activeGpuHours": round(r.active / HOURS, 6),
            "idleGpuHours": round(r.idle / HOURS, 6), "heldAfterStopGpuHours": round(r.held_after_stop / HOURS, 6),
            "shareOfLab": round(r.held / total_held, 4) if total_held else 0.0,
            "waitingHours": round(r.waiting / HOURS, 6), "waits": len(r.waits),
            "waitP50Seconds": round(p50) if p50 is not None else None,
            "waitP95Seconds": round(p95) if p95 is not None else None,
            "idleStops": r.stops.get("Idle", 0), "runtimeStops": r.stops.get("MaxRuntime", 0),
            "otherStops": sum(n for k, n in r.stops.items() if k not in ("Idle", "MaxRuntime")),
            "decayedGpuHours": round(r.decayed_gpu_hours, 3), "relativeUsage": round(r.relative_usage, 3),
            "workspaces": {name: {k: (round(v / HOURS, 6) if isinstance(v, float) else v) for k, v in figures.items()}
                           for name, figures in sorted(r.workspaces.items())},
        })
    idle = sum(r.idle for r in reports)
    waits = [w for r in reports for w in r.waits]
    totals = {
        "heldGpuHours": round(total_held / HOURS, 6),
        "activeGpuHours": round(sum(r.active for r in reports) / HOURS, 6),
        "idleGpuHours": round(idle / HOURS, 6),
        "heldAfterStopGpuHours": round(sum(r.held_after_stop for r in reports) / HOURS, 6),
        "idleShare": round(idle / total_held, 4) if total_held else 0.0,
        "utilisation": None,
        "waitP50Seconds": _round(api_accounting.percentile(waits, 50)),
        "waitP95Seconds": _round(api_accounting.percentile(waits, 95)),
        "idleStops": sum(r["idleStops"] for r in rows), "runtimeStops": sum(r["runtimeStops"] for r in rows),
    }
    if nodes is not None:
        # the nodes as they are now, over the whole window: a node added or removed meanwhile skews it
        capacity, _closed = api_admission.capacity_of(nodes)
        offered = api_accounting.capacity_equivalents(capacity, policy.gpu_weights) * span.total_seconds()
        totals["capacityGpuHours"] = round(offered / HOURS, 6)
        totals["utilisation"] = round(total_held / offered, 4) if offered else None
    return {"since": format_time(start), "until": format_time(at), "users": rows, "lab": totals}


def _round(value: float | None) -> int | None:
    return round(value) if value is not None else None


COLUMNS = [("USER", "user"), ("TIER", "tier"), ("HELD GPU-H", "heldGpuHours"), ("ACTIVE", "activeGpuHours"),
           ("IDLE", "idleGpuHours"), ("AFTER STOP", "heldAfterStopGpuHours"), ("SHARE", "shareOfLab"),
           ("WAIT P50", "waitP50Seconds"), ("WAIT P95", "waitP95Seconds"), ("IDLE STOPS", "idleStops"),
           ("RUNTIME STOPS", "runtimeStops")]


def _cell(key: str, value) -> str:
    if value is None:
        return "-"
    if key in ("shareOfLab", "idleShare"):
        return f"{value * 100:.1f}%"
    if key.endswith("Seconds"):
        return _seconds(value)
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _seconds(value: float) -> str:
    value = int(value)
    if value < 60:
        return f"{value}s"
    if value < 3600:
        return f"{value // 60}m{value % 60:02d}s"
    return f"{value // 3600}h{value % 3600 // 60:02d}m"


def print_report(data: dict, fmt: ReportFormat) -> None:
    if fmt == ReportFormat.json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    if fmt == ReportFormat.csv:
        out = io.StringIO()
        fields = [k for _, k in COLUMNS] + ["waitingHours", "waits", "otherStops", "decayedGpuHours", "relativeUsage"]
        writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in data["users"]:
            writer.writerow(row)
        if data["lab"] is not None:
            writer.writerow({"user": "(lab)", **{k: v for k, v in data["lab"].items() if k in fields}})
        sys.stdout.write(out.getvalue())
        return
    lab = data["lab"]
    rows = [[_cell(k, row.get(k)) for _, k in COLUMNS] for row in data["users"]]
    rows.append(["(lab)", "", *(_cell(k, lab.get(k)) for _, k in COLUMNS[2:6]), "100.0%" if lab["heldGpuHours"] else "-",
                 _cell("waitP50Seconds", lab["waitP50Seconds"]), _cell("waitP95Seconds", lab["waitP95Seconds"]),
                 str(lab["idleStops"]), str(lab["runtimeStops"])])
    print_table(console(), [h for h, _ in COLUMNS], rows,
                title=f"GPU-equivalent-hours from {data['since']} to {data['until']}; idle share of the lab "
                      f"{lab['idleShare'] * 100:.1f}%" + (f"; slice utilisation {lab['utilisation'] * 100:.1f}% of "
                                                            f"{lab['capacityGpuHours']:.2f}"
                                                            if lab.get("utilisation") is not None else ""))


def print_table(out: Console, headers: list[str], rows: list[list[str]], title: str) -> None:
    """output.table as Rich prints it where it fits (columns as wide as their widest cell, two spaces apart, the
    title above), written as whole lines: Rich lays a table out cell by cell, and a department's report has a row
    per user, which took it seconds. A table wider than the terminal is Rich's to shrink."""
    widths = [max(cell_len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]
    width = sum(widths) + 2 * (len(widths) - 1)
    if width > out.width:
        out.print(table(headers, rows, title=title))
        return

    def line(cells: list[str]) -> str:
        return "  ".join(cell + " " * (w - cell_len(cell)) for cell, w in zip(cells, widths, strict=True))

    out.print(out.render_str(title, style="table.title", highlight=False), width=width, justify="left")
    out.print(Text(line(headers), style="bold"))
    out.print(Text("\n".join(line(row) for row in rows)))


@admin_app.command("report")
def admin_report(ctx: typer.Context, since: str = SinceOption, output: ReportFormat = ReportOutput) -> None:
    """Per user: GPU-equivalent-hours held, active, idle and held after stop, share of the lab, waiting time
    p50/p95, idle and runtime stops; lab totals and the idle share."""
    s = session(ctx)
    span = window(since)
    # from the API server's watch cache: a report a moment behind is still the report, and at a department's size
    # the reads are much of its time
    users, workspaces = s.kube.list("GPUUser", cached=True), s.kube.list("Workspace", cached=True)
    policy, nodes = lab_policy(s), s.kube.list("Node", cached=True)
    data = lab_report(users, workspaces, policy, now(), span, nodes)
    print_report(data, output)


@app.command("report")
def user_report(ctx: typer.Context, since: str = SinceOption, output: ReportFormat = ReportOutput) -> None:
    """Your own GPU use: held, active, idle and after stop, per workspace; your waits and stops; your fair-share
    usage (decayed GPU-hours), which orders the queue within your tier."""
    s = session(ctx)
    span = window(since)
    user = s.kube.get("GPUUser", s.username)
    if user is None:
        raise LabctlError(f"there is no GPUUser {s.username}", "ask the lab admin to add you (labctl admin user add)")
    data = lab_report([user], s.kube.list("Workspace", s.namespace), lab_policy(s), now(), span)
    data["lab"] = None  # her own report; the lab's totals are the admin's
    if output != ReportFormat.table:
        print_report(data, output)
        return
    [row] = data["users"]
    out = console()
    out.print(f"{row['user']} ({row['tier']}), {data['since']} to {data['until']}: {row['heldGpuHours']:.2f} "
              f"GPU-equivalent-hours held: {row['activeGpuHours']:.2f} active, {row['idleGpuHours']:.2f} idle, "
              f"{row['heldAfterStopGpuHours']:.2f} after stop; fair-share usage {row['decayedGpuHours']:.2f} decayed "
              f"GPU-hours ({row['relativeUsage']:g} of your tier's share)")
    ws_rows = [[name, f"{f['active']:.2f}", f"{f['idle']:.2f}", f"{f['heldAfterStop']:.2f}", _seconds(f["waiting"] * HOURS),
                ", ".join(f"{k} {v}" for k, v in sorted(f["stops"].items())) or "-"]
               for name, f in row["workspaces"].items()]
    if ws_rows:
        out.print(table(["WORKSPACE", "ACTIVE GPU-H", "IDLE", "AFTER STOP", "WAITED", "STOPS"], ws_rows))
    waits = (f"waited {row['waits']} time(s): p50 {_cell('waitP50Seconds', row['waitP50Seconds'])}, "
             f"p95 {_cell('waitP95Seconds', row['waitP95Seconds'])}") if row["waits"] else "no waits"
    out.print(f"{waits}; stops: {row['idleStops']} idle, {row['runtimeStops']} runtime, {row['otherStops']} other")
