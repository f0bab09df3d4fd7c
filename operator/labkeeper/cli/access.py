"""Getting into a workspace through the API server with the user's own kubeconfig: shell, logs,
port-forward, jupyter, code, ssh-proxy. Nothing opens a port on the host."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import typer
from kubernetes import client as k8s
from kubernetes.stream import portforward, stream
from kubernetes.stream.ws_client import ERROR_CHANNEL

from labkeeper.api.names import pod_name
from labkeeper.api.phases import RUNNING_PHASES
from labkeeper.cli import views
from labkeeper.cli.app import app, session
from labkeeper.cli.errors import EXIT_USAGE, LabctlError
from labkeeper.cli.output import console, err_console
from labkeeper.cli.session import Session
from labkeeper.cli.user import get_workspace

CONTAINER = "workspace"
JUPYTER_PORT = 8888
VSCODE_EXTENSION = "ms-vscode-remote.remote-containers"


def running_pod(s: Session, name: str) -> str:
    """The pod of a running workspace, or a clear reason why there is none."""
    ws = get_workspace(s, name)
    phase, status = views.phase_of(ws), views.status_of(ws)
    if phase not in RUNNING_PHASES:
        raise LabctlError(f"workspace {name} is {phase}" + (f" ({status.reason})" if status.reason else ""),
                          f"start it with: labctl start {name}")
    return status.pod_name or pod_name(name)


def core(s: Session) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(s.kube.api)


def exit_status(error_channel: str) -> tuple[int, str]:
    """An exec's exit code and, when the command could not report one, why: the error channel
    carries a Status whose ExitCode cause is the code; a failure without one (no such executable,
    a runtime error) counts as 1 with its message."""
    try:
        status = json.loads(error_channel) if error_channel.strip() else None
    except ValueError:
        status = None
    if not isinstance(status, dict):
        return 1, "the connection to the workspace closed before the command reported its exit status"
    if status.get("status") == "Success":
        return 0, ""
    for cause in (status.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            with contextlib.suppress(TypeError, ValueError):
                return int(cause.get("message")), ""
    return 1, status.get("message") or "the command failed without a message"


def _finished(client) -> tuple[int, str]:
    code, message = exit_status(client.read_channel(ERROR_CHANNEL) or "")
    client.close()
    return code, message


def exec_capture(s: Session, pod: str, command: list[str], timeout: float = 30) -> tuple[int, str]:
    """Run a command in the workspace and return its exit code and output."""
    client = stream(core(s).connect_get_namespaced_pod_exec, pod, s.namespace, container=CONTAINER,
                    command=command, stdin=False, stdout=True, stderr=True, tty=False, _preload_content=False)
    client.run_forever(timeout=timeout)
    out = client.read_stdout() or ""
    err = client.read_stderr() or ""
    code, message = _finished(client)
    return code, out + err + (message and f"{message}\n")


def _interactive(client, fd: int) -> None:
    import termios
    import tty

    saved = termios.tcgetattr(fd)

    def resize(*_):
        size = shutil.get_terminal_size()
        client.write_channel(4, json.dumps({"Width": size.columns, "Height": size.lines}))

    previous = signal.signal(signal.SIGWINCH, resize)
    try:
        tty.setraw(fd)
        resize()
        while client.is_open():
            client.update(timeout=0.05)
            for data in (client.read_stdout(timeout=0), client.read_stderr(timeout=0)):
                if data:
                    os.write(sys.stdout.fileno(), data.encode() if isinstance(data, str) else data)
            ready, _, _ = select.select([fd], [], [], 0)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                client.write_stdin(chunk.decode(errors="replace"))
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, previous)


@app.command(context_settings={"allow_extra_args": True})
def shell(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="workspace name"),
    command: list[str] = typer.Argument(None, help="a command to run instead of a login shell (after --)"),
) -> None:
    """Open a shell in a workspace (or run one command: labctl shell NAME -- nvidia-smi)."""
    s = session(ctx)
    pod = running_pod(s, name)
    interactive = not command and sys.stdin.isatty() and sys.stdout.isatty()
    argv = list(command) if command else ["/bin/sh", "-c", "exec \"${SHELL:-/bin/bash}\" -l 2>/dev/null || exec /bin/sh -l"]
    client = stream(core(s).connect_get_namespaced_pod_exec, pod, s.namespace, container=CONTAINER, command=argv,
                    stdin=interactive, stdout=True, stderr=True, tty=interactive, _preload_content=False)
    if interactive:
        _interactive(client, sys.stdin.fileno())
    else:
        while client.is_open():
            client.update(timeout=1)
            out, err = client.read_stdout(timeout=0), client.read_stderr(timeout=0)
            if out:
                sys.stdout.write(out)
                sys.stdout.flush()
            if err:
                sys.stderr.write(err)
                sys.stderr.flush()
    code, message = _finished(client)
    if message:
        raise LabctlError(f"{name}: {message}", exit_code=code)
    if code:
        raise typer.Exit(code)


@app.command()
def logs(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="workspace name"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new lines"),
    tail: int = typer.Option(None, "--tail", help="only the last N lines"),
    previous: bool = typer.Option(False, "--previous", "-p", help="the container's previous run"),
) -> None:
    """Print a workspace's output (its main process's stdout and stderr)."""
    s = session(ctx)
    pod = views.status_of(get_workspace(s, name)).pod_name or pod_name(name)
    kwargs = {"container": CONTAINER, "follow": follow, "previous": previous, "_preload_content": False}
    if tail is not None:
        kwargs["tail_lines"] = tail
    response = core(s).read_namespaced_pod_log(pod, s.namespace, **kwargs)
    try:
        for chunk in response.stream(1024):
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
    finally:
        response.release_conn()


def _pump(local: socket.socket, remote) -> None:
    sockets = [local, remote]
    try:
        while True:
            readable, _, _ = select.select(sockets, [], [], 30)
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                (remote if sock is local else local).sendall(data)
    except OSError:
        return
    finally:
        with contextlib.suppress(OSError):
            local.close()
        with contextlib.suppress(OSError):
            remote.close()


def parse_ports(spec: str) -> tuple[int, int]:
    """'8888' → (8888, 8888); '8888:9000' → remote 8888, local 9000; local 0 picks a free port."""
    remote_text, _, local_text = spec.partition(":")
    try:
        remote, local = int(remote_text), int(local_text) if local_text else int(remote_text)
    except ValueError as err:
        raise LabctlError(f"PORT {spec!r} must be PORT or PORT:LOCAL, e.g. 8888 or 8888:9000",
                          exit_code=EXIT_USAGE) from err
    if not (0 < remote < 65536 and 0 <= local < 65536):
        raise LabctlError(f"ports in {spec!r} must be between 1 and 65535", exit_code=EXIT_USAGE)
    return remote, local


class Forward:
    """A local listener on 127.0.0.1; each connection gets its own stream through the API server."""

    def __init__(self, s: Session, pod: str, remote_port: int, local_port: int) -> None:
        self.s, self.pod, self.remote_port = s, pod, remote_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.listener.bind(("127.0.0.1", local_port))
        except OSError as err:
            raise LabctlError(f"cannot listen on 127.0.0.1:{local_port}: {err.strerror}",
                              "pick another local port: PORT:LOCAL") from err
        self.listener.listen(16)
        self.local_port = self.listener.getsockname()[1]

    def serve_forever(self) -> None:
        while True:
            conn, _ = self.listener.accept()
            threading.Thread(target=self._connect, args=(conn,), daemon=True).start()

    def _connect(self, conn: socket.socket) -> None:
        try:
            pf = portforward(core(self.s).connect_get_namespaced_pod_portforward, self.pod, self.s.namespace,
                             ports=str(self.remote_port))
            remote = pf.socket(self.remote_port)
            remote.setblocking(True)
        except Exception as err:  # one failed connection is reported; the forward keeps serving others
            err_console().print(f"forward to {self.pod}:{self.remote_port} failed: {str(err)[:200]}", markup=False)
            conn.close()
            return
        _pump(conn, remote)


@app.command("port-forward")
def port_forward(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="workspace name"),
    ports: str = typer.Argument(..., help="PORT or PORT:LOCAL (the workspace's port, then yours)"),
) -> None:
    """Forward a local port on 127.0.0.1 to a port in the workspace, through the API server."""
    remote, local = parse_ports(ports)
    s = session(ctx)
    forward = Forward(s, running_pod(s, name), remote, local)
    console().print(f"forwarding 127.0.0.1:{forward.local_port} -> {name}:{remote} (Ctrl-C stops)")
    sys.stdout.flush()
    forward.serve_forever()


def serving_jupyter(s: Session, pod: str, port: int) -> str | None:
    """The token of the JupyterLab serving on `port` in the workspace, or None when none is."""
    _, out = exec_capture(s, pod, ["sh", "-c", "jupyter server list --json 2>/dev/null || true"])
    for line in out.splitlines():
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            server = json.loads(line)
            if int(server.get("port", 0)) == port:
                return server.get("token", "")
    return None


def find_or_start_jupyter(s: Session, pod: str, port: int, *, wait_seconds: float = 60.0,
                          poll_seconds: float = 0.5) -> tuple[str, bool]:
    """The token of a JupyterLab already serving on `port` in the workspace, or of one started now."""
    token = serving_jupyter(s, pod, port)
    if token is not None:
        return token, False
    code, out = exec_capture(s, pod, ["sh", "-c", "command -v jupyter"])
    if code != 0 or not out.strip():
        raise LabctlError("this workspace's image has no JupyterLab (`jupyter` is not on PATH)",
                          "use an image with JupyterLab, or `pip install --user jupyterlab` inside it")
    token = secrets.token_hex(16)
    start_cmd = (f"nohup jupyter lab --no-browser --ip=127.0.0.1 --port={port} --ServerApp.token={token} "
                 f"> \"$HOME/.labctl-jupyter.log\" 2>&1 &")
    exec_capture(s, pod, ["sh", "-c", start_cmd])
    # JupyterLab lists itself once it serves; a URL printed before that would answer with an error
    deadline = time.monotonic() + wait_seconds
    while True:
        listed = serving_jupyter(s, pod, port)
        if listed is not None:
            return listed, True
        if time.monotonic() >= deadline:
            raise LabctlError(f"JupyterLab did not start serving on port {port} within {wait_seconds:.0f}s",
                              "its output is in ~/.labctl-jupyter.log in the workspace "
                              "(labctl shell NAME -- cat .labctl-jupyter.log)")
        time.sleep(poll_seconds)


@app.command()
def jupyter(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="workspace name"),
    port: int = typer.Option(JUPYTER_PORT, "--port", help="JupyterLab's port inside the workspace"),
    local_port: int = typer.Option(0, "--local-port", help="local port (default: a free one)"),
) -> None:
    """Find or start JupyterLab in a workspace, forward it to this machine and print its URL."""
    s = session(ctx)
    pod = running_pod(s, name)
    token, started = find_or_start_jupyter(s, pod, port)
    forward = Forward(s, pod, port, local_port)
    url = f"http://127.0.0.1:{forward.local_port}/lab" + (f"?token={token}" if token else "")
    console().print(("started JupyterLab" if started else "found JupyterLab") + f" in {name}; open:")
    print(url, flush=True)
    forward.serve_forever()


def vscode_uri(context: str | None, pod: str, namespace: str, image: str, folder: str) -> str:
    parts = ([f"context={context}"] if context else []) + [f"podname={pod}", f"namespace={namespace}",
                                                           f"name={CONTAINER}", f"image={image}"]
    return "vscode-remote://k8s-container+" + "+".join(parts) + folder


@app.command()
def code(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="workspace name"),
    open_it: bool = typer.Option(False, "--open", help="launch VS Code now"),
) -> None:
    """Print (or --open) the VS Code command that attaches to a workspace through the Kubernetes API."""
    s = session(ctx)
    pod = running_pod(s, name)
    ws = s.workspace(name)
    image = (ws.spec.image if ws else "") or ""
    from kubernetes import config as k8s_config

    try:
        _, active = k8s_config.list_kube_config_contexts(config_file=str(s.kubeconfig_file))
        context = active.get("name")
    except Exception:  # the context only helps VS Code pick the right cluster; without it the current one is used
        context = None
    argv = ["code", "--folder-uri", vscode_uri(context, pod, s.namespace, image, f"/home/{s.username}")]
    console().print(f"needs VS Code with the Dev Containers extension ({VSCODE_EXTENSION}) and kubectl, "
                    f"with KUBECONFIG={s.kubeconfig_file}", markup=False)
    print(shlex.join(argv), flush=True)
    if open_it:
        if shutil.which("code") is None:
            raise LabctlError("`code` is not on PATH", "install VS Code's shell command (Command Palette: "
                              "Shell Command: Install 'code' command in PATH)")
        subprocess.Popen(argv, env={**os.environ, "KUBECONFIG": str(s.kubeconfig_file)})


@app.command("ssh-proxy")
def ssh_proxy(
    ctx: typer.Context,
    host: str = typer.Argument(..., help="WORKSPACE or WORKSPACE.lab (what ssh passes as %h)"),
    port: int = typer.Option(22, "--port", help="sshd's port inside the workspace"),
) -> None:
    """For ssh's ProxyCommand: carry one SSH connection to sshd in a workspace over the API server."""
    s = session(ctx)
    name = host.split(".", 1)[0]
    pf = portforward(core(s).connect_get_namespaced_pod_portforward, running_pod(s, name), s.namespace,
                     ports=str(port))
    remote = pf.socket(port)
    remote.setblocking(True)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    while True:
        readable, _, _ = select.select([stdin, remote], [], [], 60)
        if stdin in readable:
            data = os.read(stdin, 65536)
            if not data:
                break
            remote.sendall(data)
        if remote in readable:
            data = remote.recv(65536)
            if not data:
                break
            os.write(stdout, data)
