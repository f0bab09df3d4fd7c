"""What a lab member runs every day: up, ls, status, stop, start, down, keepalive, disk."""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Callable

import typer

from labkeeper.api.resources import GPUUserStatus, ModelStore, SharedCache, Workspace, read_object, wire
from labkeeper.api.units import format_duration
from labkeeper.cli import views
from labkeeper.cli.app import AllUsersOption, OutputOption, app, session
from labkeeper.cli.errors import EXIT_USAGE, LabctlError
from labkeeper.cli.output import Format, as_list, console, emit, table
from labkeeper.cli.session import Session

DEFAULT_IMAGE = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def usage_error(message: str) -> LabctlError:
    return LabctlError(message, exit_code=EXIT_USAGE)


def get_workspace(s: Session, name: str) -> Workspace:
    ws = s.workspace(name)
    if ws is None:
        raise LabctlError(f"workspace {name} not found in {s.namespace}", "`labctl ls` lists your workspaces")
    return ws


def wait_for(s: Session, name: str, want: str, timeout: float, *, clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep) -> views.Verdict:
    """Poll the Workspace until it reaches `want` or fails; a live line on a terminal, one line per change otherwise."""
    deadline = clock() + timeout
    last_line = ""
    live = sys.stdout.isatty()
    out = console()
    status_ctx = out.status("", spinner="dots") if live else None
    try:
        if status_ctx:
            status_ctx.__enter__()
        while True:
            verdict = views.wait_verdict(s.workspace(name), want)
            if verdict.line != last_line:
                if status_ctx:
                    status_ctx.update(verdict.line)
                elif not verdict.done:
                    out.print(verdict.line)
                last_line = verdict.line
            if verdict.done:
                return verdict
            if clock() >= deadline:
                return views.Verdict(True, False, f"timed out after {timeout:.0f}s waiting for {name} to be {want}; "
                                     f"last seen: {verdict.line.split(': ', 1)[-1]}", verdict.phase, verdict.reason,
                                     verdict.current)
            sleep(0.5)
    finally:
        if status_ctx:
            status_ctx.__exit__(None, None, None)


def finish_wait(verdict: views.Verdict, name: str, want: str) -> None:
    if not verdict.ok:
        raise LabctlError(verdict.line, views.wait_hint(verdict, name))
    console().print(verdict.line)
    if want == "Running":
        console().print(views.enter_hint(name))


@app.command()
def up(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="workspace name (lowercase letters, digits, '-')"),
    gpu: str = typer.Option(None, "--gpu", help="MIG profile (1g.10gb, 2g.20gb, 3g.40gb, 7g.80gb ...), full or none"),
    gpu_count: int = typer.Option(None, "--gpu-count", min=1, help="how many of that profile"),
    image: str = typer.Option(None, "--image", help=f"container image (new workspaces: {DEFAULT_IMAGE})"),
    cpu: str = typer.Option(None, "--cpu", help="CPU cores, e.g. 4"),
    memory: str = typer.Option(None, "--memory", help="memory, e.g. 16Gi"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="wait until it runs"),
    timeout: float = typer.Option(300, "--timeout", help="seconds to wait"),
) -> None:
    """Create a workspace, or start it if it exists; wait until it runs and say how to enter it."""
    s = session(ctx)
    try:  # validated before any network call, so a typo is a usage error (exit 2)
        body = views.workspace_manifest(name, "", image=image or DEFAULT_IMAGE, gpu=gpu or "none",
                                        gpu_count=gpu_count or 1, cpu=cpu, memory=memory)
    except ValueError as err:
        raise usage_error(str(err)) from err
    existing = s.workspace(name)
    changes: dict = {"state": "Running"}
    if existing is not None:
        if gpu:
            changes["gpu"] = {"profile": gpu, "count": gpu_count or 1}
        for key, value in (("image", image), ("cpu", cpu), ("memory", memory)):
            if value:
                changes[key] = value
    refuse_beyond_entitlement(s, name, body["spec"] if existing is None else {**wire(existing.spec), **changes})
    if existing is None:
        body["metadata"]["namespace"] = s.namespace
        s.kube.create(body)
        console().print(f"workspace {name} created in {s.namespace}"
                        f" ({views.gpu_label(body['spec']) if gpu not in (None, 'none') else 'no GPU'})")
    else:
        s.kube.patch("Workspace", name, {"spec": changes}, s.namespace)
        console().print(f"workspace {name} exists; starting it")
    if wait:
        finish_wait(wait_for(s, name, "Running", timeout), name, "Running")


def refuse_beyond_entitlement(s: Session, name: str, spec: dict) -> None:
    """Refuse what the operator would leave waiting as NotEntitled forever, in its words, before applying it."""
    try:
        user = s.gpu_user()
    except Exception:  # an admin's --user, or a user without her own GPUUser yet: the operator still decides
        return
    problem = views.entitlement_problem(user, spec) if user else None
    if problem:
        raise LabctlError(views.cannot_start(name, "NotEntitled", problem),
                          "`labctl status` shows your limits; ask the lab admin if you need more")


@app.command("ls")
def list_workspaces(
    ctx: typer.Context,
    all_users: bool = AllUsersOption,
    output: Format = OutputOption,
) -> None:
    """List your workspaces: phase, GPU, node, runtime, idle countdown."""
    s = session(ctx)
    items = s.workspace_bodies(all_users)
    headers, rows = views.workspace_rows(views.workspaces_of(items), now(), with_user=all_users)
    emit(as_list(items), output, headers, rows,
         empty="no workspaces yet; create one with: labctl up NAME --gpu 1g.10gb")


@app.command()
def status(ctx: typer.Context, output: Format = OutputOption) -> None:
    """Your limits and what you use of them; idle and runtime countdowns; warnings."""
    s = session(ctx)
    user = s.gpu_user()
    if user is None:
        raise LabctlError(f"there is no GPUUser {s.username}", "ask the lab admin to add you (labctl admin user add)")
    workspaces = views.workspaces_of(s.workspace_bodies())
    quota = next((q for q in s.kube.list("ResourceQuota", s.namespace) if q["metadata"]["name"] == "labkeeper-limits"),
                 None)
    summary = views.usage_summary(user, workspaces, quota)
    t = now()
    headers, rows = views.countdown_rows(workspaces, t)
    queue_headers, queue_rows = views.queue_rows(workspaces, t)
    if output != Format.table:
        data = {**{k: v for k, v in summary.items() if k != "lines"},
                "usage": [{"what": w, "used": u, "limit": lim} for w, u, lim in summary["lines"]],
                "workspaces": [dict(zip([h.lower() for h in headers], r, strict=True)) for r in rows],
                "queue": [dict(zip([h.lower() for h in queue_headers], r, strict=True)) for r in queue_rows]}
        emit(data, output)
        return
    out = console()
    out.print(f"{summary['user']}: tier {summary['tier']}, {summary['state']}, {summary['phase'] or 'Pending'}"
              f"  (idle timeout {summary['idleTimeout'] or '-'}, max runtime {summary['maxRuntime'] or '-'}, "
              f"keep-alive at most {summary['keepAliveMax'] or '-'})")
    out.print(table(["", "USED", "LIMIT"], [list(line) for line in summary["lines"]]))
    if rows:
        out.print()
        out.print(table(headers, rows))
        if queue_rows:
            out.print()
            out.print(table(queue_headers, queue_rows, title="waiting for a device (usage: decayed GPU-hours per "
                                                               "tier share; lower goes first within a tier)"))
    else:
        out.print("\nno workspaces; create one with: labctl up NAME --gpu 1g.10gb")


def _state_command(command: str, state: str, wait_seconds: float, help_text: str) -> None:
    """`labctl stop` and `labctl start`: set spec.state, then wait until the workspace stands there."""

    def set_state(
        ctx: typer.Context,
        name: str = typer.Argument(..., help="workspace name"),
        wait: bool = typer.Option(True, "--wait/--no-wait"),
        timeout: float = typer.Option(wait_seconds, "--timeout", help="seconds to wait"),
    ) -> None:
        s = session(ctx)
        get_workspace(s, name)
        s.kube.patch("Workspace", name, {"spec": {"state": state}}, s.namespace)
        console().print(f"workspace {name}: {'stopping' if state == 'Stopped' else 'starting'}")
        if wait:
            finish_wait(wait_for(s, name, state, timeout), name, state)

    app.command(command, help=help_text)(set_state)


_state_command("stop", "Stopped", 180, "Stop a workspace (its home stays; its GPU is held for a quick restart for a while).")
_state_command("start", "Running", 300, "Start a stopped workspace again.")


@app.command()
def down(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="workspace name"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask"),
) -> None:
    """Delete a workspace (your home directory is kept)."""
    s = session(ctx)
    get_workspace(s, name)
    if not yes:
        if not sys.stdin.isatty():
            raise usage_error(f"deleting {name} needs confirmation: pass --yes")
        typer.confirm(f"delete workspace {name}? (your home directory stays)", abort=True)
    s.kube.delete("Workspace", name, s.namespace)
    console().print(f"workspace {name} deleted")


@app.command()
def keepalive(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="workspace name"),
    duration: str = typer.Argument(..., help="how long to keep it from being stopped as idle, e.g. 2h, 90m, 1d"),
) -> None:
    """Keep a workspace from being stopped as idle for a while (capped by the lab policy)."""
    s = session(ctx)
    try:
        delta = views.parse_duration(duration)
    except ValueError as err:
        raise usage_error(str(err)) from err
    get_workspace(s, name)
    user = s.gpu_user()
    cap = views.keep_alive_cap(user) if user else None
    if cap is not None and delta > cap:
        raise usage_error(f"keep-alive {format_duration(delta)} for {name} is beyond the lab policy's cap of "
                          f"{format_duration(cap)} (keepAliveMax); ask for at most {format_duration(cap)}")
    until = views.rfc3339(now() + delta)
    s.kube.patch("Workspace", name, {"spec": {"keepAliveUntil": until}}, s.namespace)
    console().print(f"workspace {name} is kept alive until {until} ({views.human_duration(delta)})"
                    + ("" if cap is not None else "; the lab policy may cap this (`labctl ls` shows what it granted)"))


@app.command()
def disk(ctx: typer.Context, output: Format = OutputOption) -> None:
    """Your home's size on each node, and the shared caches and model stores you can see."""
    s = session(ctx)
    user = s.gpu_user()
    if user is None:
        raise LabctlError(f"there is no GPUUser {s.username}")
    status = user.status or GPUUserStatus()
    rows = [[f"home {status.home or '/home/' + s.username}", n.node, views.human_bytes(n.home_bytes)]
            for n in status.nodes if n.home_bytes is not None]
    shared: list[SharedCache | ModelStore] = []
    for model in (SharedCache, ModelStore):
        try:
            shared += [read_object(model, o)[0] for o in s.kube.list(model.__name__)]
        except Exception:  # members may not be allowed to list shared trees; home usage is still worth showing
            continue
    rows += [[f"{o.kind} {o.name}", o.spec.path, views.human_bytes(o.status.size_bytes if o.status else None)]
             for o in shared]
    data = {"user": s.username, "home": status.home, "nodes": [wire(n) for n in status.nodes],
            "usage": wire(status.usage) if status.usage else {},
            "shared": [{"kind": o.kind, "name": o.name, "sizeBytes": o.status.size_bytes if o.status else None}
                       for o in shared]}
    emit(data, output, ["WHAT", "WHERE", "SIZE"], rows, empty="no disk usage reported yet (the node agent measures it)")
