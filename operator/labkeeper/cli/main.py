"""`labctl`: exit 0 when it worked, 1 when it failed, 2 when it was asked wrongly; no tracebacks."""

from __future__ import annotations

import sys

from kubernetes.client.exceptions import ApiException

from labkeeper.cli import access, admin, report, runs, user  # noqa: F401  (importing registers the commands)
from labkeeper.cli.app import CURRENT, app, hoist_global_options
from labkeeper.cli.errors import LabctlError, from_api, from_exception
from labkeeper.cli.output import err_console


def _report(error: LabctlError) -> int:
    out = err_console()
    for line in error.lines():
        out.print(line, markup=False)
    return error.exit_code


def _namespaces() -> dict[str, str | None]:
    """Where the command acted and the caller's own namespace, for a Forbidden hint."""
    found: dict[str, str | None] = {"namespace": None, "own_namespace": None}
    for key, attr in (("namespace", "namespace"), ("own_namespace", "own_namespace")):
        try:
            found[key] = getattr(CURRENT[-1], attr) if CURRENT else None
        except Exception:  # naming a namespace is a courtesy in an error message, never a second failure
            found[key] = None
    return found


def run(argv: list[str] | None = None) -> int:
    args = hoist_global_options(list(sys.argv[1:] if argv is None else argv))
    CURRENT.clear()
    try:
        app(args=args, prog_name="labctl")
    except SystemExit as done:  # click's own exits: 0 after --help, 2 for usage errors
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except LabctlError as err:
        return _report(err)
    except ApiException as err:
        return _report(from_api(err, **_namespaces()))
    except KeyboardInterrupt:
        err_console().print("interrupted")
        return 130
    except Exception as err:
        readable = from_exception(err, CURRENT[-1].server if CURRENT else "")
        if readable is None:
            raise
        return _report(readable)
    return 0


def main() -> None:
    sys.exit(run())
