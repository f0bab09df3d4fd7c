"""The Typer apps and the options every command shares; commands live in user.py and admin.py."""

from __future__ import annotations

import typer

from labkeeper.cli.output import Format
from labkeeper.cli.session import Session

HELP = """labctl: your workspaces on the lab's GPU server.

A workspace is a container with your home, the lab's shared caches and model stores, and
the GPU slice you ask for. Everything labctl does is plain Kubernetes underneath
(kubectl get ws, kubectl get gu), with your own kubeconfig (~/.kube/config).

Start with:  labctl up NAME --gpu 1g.10gb   then   labctl shell NAME"""

app = typer.Typer(help=HELP, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]}, rich_markup_mode=None)
admin_app = typer.Typer(help="Lab administration: users, policy, imports, the live board and health checks.",
                        no_args_is_help=True)
user_app = typer.Typer(help="Lab members (GPUUser objects): add, list, show, suspend, resume, offboard.",
                       no_args_is_help=True)
policy_app = typer.Typer(help="The lab policy (ConfigMap labkeeper-policy): show it, explain a user's limits.",
                         no_args_is_help=True)
import_app = typer.Typer(help="Bring users and limits over from the predecessor tools.", no_args_is_help=True)
cache_app = typer.Typer(help="Shared package caches (SharedCache objects): clean one now.", no_args_is_help=True)

app.add_typer(admin_app, name="admin")
admin_app.add_typer(user_app, name="user")
admin_app.add_typer(cache_app, name="cache")
admin_app.add_typer(policy_app, name="policy")
admin_app.add_typer(import_app, name="import")

# the session of the command being run, so the error handler can name the namespace and server
CURRENT: list[Session] = []
GLOBAL_OPTIONS = {"--kubeconfig", "--user", "-u"}

OutputOption = typer.Option(Format.table, "--output", "-o", help="table, json or yaml", case_sensitive=False)
AllUsersOption = typer.Option(False, "--all", "-A", help="every user's, not only yours (admins)")


@app.callback()
def root(
    ctx: typer.Context,
    kubeconfig: str = typer.Option(None, "--kubeconfig", metavar="FILE",
                                   help="kubeconfig to use (default: $KUBECONFIG, then ~/.kube/config)"),
    user: str = typer.Option(None, "--user", "-u", metavar="NAME",
                             help="act on this lab user's namespace (lab-NAME); admins only"),
) -> None:
    ctx.obj = Session(kubeconfig=kubeconfig, user=user)
    CURRENT[:] = [ctx.obj]


def hoist_global_options(args: list[str]) -> list[str]:
    """Accept --kubeconfig and --user anywhere on the line, as kubectl does."""
    front, rest, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i:]
            break
        if arg in GLOBAL_OPTIONS and i + 1 < len(args):
            front += args[i:i + 2]
            i += 2
            continue
        if arg.split("=", 1)[0] in GLOBAL_OPTIONS and "=" in arg:
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


def session(ctx: typer.Context) -> Session:
    root_ctx = ctx.find_root()
    if not isinstance(root_ctx.obj, Session):
        root_ctx.obj = Session()
    return root_ctx.obj
