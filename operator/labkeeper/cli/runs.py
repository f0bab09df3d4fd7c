"""Batch runs: `labctl run` queues a command for a GPU, shows its place, streams its output and exits with its
exit code; `labctl runs` lists them. A run is a Workspace with spec.mode Batch, so kubectl does the same."""

from __future__ import annotations

import contextlib
import shlex
import sys
import threading
import time

import typer
from kubernetes.client.exceptions import ApiException

from labkeeper.api.names import pod_name
from labkeeper.api.phases import RUNNING_PHASES
from labkeeper.api.resources import Workspace
from labkeeper.cli import views
from labkeeper.cli.access import CONTAINER, core
from labkeeper.cli.app import AllUsersOption, OutputOption, app, session
from labkeeper.cli.errors import LabctlError
from labkeeper.cli.output import Format, as_list, console, emit, err_console
from labkeeper.cli.session import Session
from labkeeper.cli.user import DEFAULT_IMAGE, now, refuse_beyond_entitlement, usage_error

STARTED = (*RUNNING_PHASES, *views.ENDED)
POLL_SECONDS = 0.5
# after the run ended, the log stream gets this long to deliver its last lines
DRAIN_SECONDS = 3.0


@app.command(context_settings={"allow_extra_args": True})
def run(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="run name (lowercase letters, digits, '-')"),
    command: list[str] = typer.Argument(None, help="the command to run, after --: -- python train.py --lr 3e-4"),
    gpu: str = typer.Option("none", "--gpu", help="MIG profile (1g.10gb, 2g.20gb, 3g.40gb, 7g.80gb ...), full or none"),
    gpu_count: int = typer.Option(1, "--gpu-count", min=1, help="how many of that profile"),
    image: str = typer.Option(DEFAULT_IMAGE, "--image", help="container image"),
    cpu: str = typer.Option(None, "--cpu", help="CPU cores, e.g. 4"),
    memory: str = typer.Option(None, "--memory", help="memory, e.g. 16Gi"),
    detach: bool = typer.Option(False, "--detach", "-d", help="queue it and return at once"),
) -> None:
    """Queue a command for a GPU: show its place while it waits, stream its output, exit with its exit code.

    Ctrl-C detaches (the run goes on); `labctl logs NAME` shows its output, also after it ended."""
    s = session(ctx)
    try:
        body = views.workspace_manifest(name, s.namespace, image=image, gpu=gpu, gpu_count=gpu_count, cpu=cpu,
                                        memory=memory, command=list(command or []), batch=True)
    except ValueError as err:
        raise usage_error(str(err)) from err
    existing = s.workspace(name)
    if existing is not None:
        what = "run" if views.is_run(existing) else "workspace"
        raise LabctlError(f"a {what} named {name} exists in {s.namespace} ({views.phase_of(existing)})",
                          f"pick another name; `labctl logs {name} -f` follows it, `labctl down {name}` deletes it")
    refuse_beyond_entitlement(s, name, body["spec"])
    s.kube.create(body)
    console().print(f"run {name} queued in {s.namespace} ({views.gpu_label(body['spec']) if gpu != 'none' else 'no GPU'}):"
                    f" {shlex.join(body['spec']['command'])}", markup=False)
    if detach:
        console().print(f"follow it with: labctl logs {name} -f    (list: labctl runs)", markup=False)
        return
    try:
        ws = wait_until_started(s, name)
        ws = follow(s, name, ws)
    except KeyboardInterrupt:
        err_console().print(f"detached; run {name} goes on (labctl logs {name} -f, labctl runs, "
                            f"labctl stop {name} cancels it)", markup=False)
        raise typer.Exit(130) from None
    line = views.run_end_line(ws)
    code = views.run_exit_code(ws)
    err_console().print(line, markup=False)
    if code:
        raise typer.Exit(code)


def get_run(s: Session, name: str) -> Workspace:
    ws = s.workspace(name)
    if ws is None:
        raise LabctlError(f"run {name} was deleted from {s.namespace} before it ended")
    return ws


def wait_until_started(s: Session, name: str) -> Workspace:
    """Polls the run until its pod has started (or it ended without one), printing each change of its place."""
    last = ""
    while True:
        ws = get_run(s, name)
        if views.status_is_current(ws) and views.phase_of(ws) in STARTED:
            return ws
        line = views.run_wait_line(ws, now()) if views.status_is_current(ws) else f"{name}: queued"
        if line != last:
            err_console().print(line, markup=False)
            last = line
        time.sleep(POLL_SECONDS)


def follow(s: Session, name: str, ws: Workspace) -> Workspace:
    """Streams the pod's log through the API server (as `labctl logs -f`) until the run has ended."""
    pod = views.status_of(ws).pod_name or pod_name(name)
    try:
        response = core(s).read_namespaced_pod_log(pod, s.namespace, container=CONTAINER, follow=True,
                                                   _preload_content=False)
    except ApiException as err:
        if err.status != 404 and not (err.status == 400 and views.phase_of(ws) in views.ENDED):
            raise
        # a run stopped before its command ended has no pod (and so no log) left
        while views.phase_of(ws) not in views.ENDED:
            time.sleep(POLL_SECONDS)
            ws = get_run(s, name)
        return ws
    streamed = threading.Event()

    def pump() -> None:
        try:
            for chunk in response.stream(1024):
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
        except Exception:  # the connection closed under it: the run's status still says how it ended
            pass
        finally:
            streamed.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        while views.phase_of(ws) not in views.ENDED:
            time.sleep(POLL_SECONDS)
            ws = get_run(s, name)
        # the kubelet ends the stream when the container exits; the status may come first
        streamed.wait(DRAIN_SECONDS)
    finally:
        # a followed log that has not ended (the container's end may not have reached it) is cut, not drained
        with contextlib.suppress(Exception):
            response.shutdown()
        with contextlib.suppress(Exception):
            response.close()
    return ws


@app.command("runs")
def list_runs(
    ctx: typer.Context,
    all_users: bool = AllUsersOption,
    output: Format = OutputOption,
) -> None:
    """List your batch runs: phase, exit code, GPU, age, and why each stands where it does."""
    s = session(ctx)
    bodies = s.workspace_bodies(all_users)
    runs = [(body, ws) for body, ws in zip(bodies, views.workspaces_of(bodies), strict=True) if views.is_run(ws)]
    headers, rows = views.run_rows([ws for _, ws in runs], now(), with_user=all_users)
    emit(as_list([body for body, _ in runs]), output, headers, rows,
         empty="no runs yet; queue one with: labctl run NAME --gpu 1g.10gb -- python train.py")
