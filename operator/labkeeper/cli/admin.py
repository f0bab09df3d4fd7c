"""Admin commands: lab members, the policy, imports from the predecessors, board and doctor."""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

import typer
import yaml

from labkeeper.api.names import CLEAN_ANNOTATION
from labkeeper.api.policy import POLICY_CONFIGMAP, POLICY_KEY, PolicyError, load_policy
from labkeeper.api.resources import GPUUserStatus, wire
from labkeeper.cli import board as board_view
from labkeeper.cli import doctor as doctor_checks
from labkeeper.cli import views
from labkeeper.cli.app import OutputOption, admin_app, cache_app, import_app, policy_app, session, user_app
from labkeeper.cli.errors import EXIT_USAGE, LabctlError
from labkeeper.cli.output import Format, as_list, console, dump, emit, table
from labkeeper.cli.session import SYSTEM_NAMESPACE, Session, namespace_for
from labkeeper.kube.client import is_conflict


def usage_error(message: str) -> LabctlError:
    return LabctlError(message, exit_code=EXIT_USAGE)


def get_user_body(s: Session, name: str) -> dict:
    """The GPUUser as the API sent it (what -o json/yaml prints); views.user_of parses it for the tables."""
    user = s.kube.get("GPUUser", name)
    if user is None:
        raise LabctlError(f"GPUUser {name} not found", "`labctl admin user ls` lists the lab's members")
    return user


def confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise usage_error(f"{question} needs confirmation: pass --yes")
    typer.confirm(question, abort=True)


# ---- users ---------------------------------------------------------------------------------------
@user_app.command("add")
def user_add(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Linux username (also the namespace lab-NAME)"),
    tier: str = typer.Option(..., "--tier", "-t", help="student, researcher, faculty or a tier of the policy"),
    ssh_key: list[Path] = typer.Option([], "--ssh-key", help="file with OpenSSH public keys (repeatable)"),
    group: list[str] = typer.Option([], "--group", "-g", help="extra Linux group (repeatable)"),
    display_name: str = typer.Option(None, "--display-name", help="the person's name"),
    shell: str = typer.Option(None, "--shell", help="login shell, e.g. /bin/bash"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the GPUUser instead of applying it"),
    output: Format = OutputOption,
) -> None:
    """Add a lab member: writes a GPUUser; the operator and agent do the rest."""
    keys: list[str] = []
    for path in ssh_key:
        try:
            keys += views.ssh_keys_from_text(path.expanduser().read_text(), str(path))
        except OSError as err:
            raise usage_error(f"--ssh-key {path}: {err.strerror}") from err
        except ValueError as err:
            raise usage_error(str(err)) from err
    try:
        body = views.gpuuser_manifest(name, tier=tier, display_name=display_name, groups=group, ssh_keys=keys,
                                      shell=shell)
    except ValueError as err:
        raise usage_error(str(err)) from err
    if dry_run:
        sys.stdout.write(dump(body, Format.json if output == Format.json else Format.yaml))
        return
    s = session(ctx)
    tiers = policy_tiers(s)
    if tiers is not None and tier not in tiers:
        raise usage_error(f"--tier {tier!r} is not a tier of the lab policy; valid: {', '.join(sorted(tiers))}")
    try:
        created = s.kube.create(body)
    except Exception as err:
        if is_conflict(err):
            raise LabctlError(f"GPUUser {name} already exists",
                              f"`labctl admin user show {name}`; change it with `kubectl edit gu {name}`") from err
        raise
    if output != Format.table:
        emit(created, output)
        return
    console().print(f"GPUUser {name} added (tier {tier}); the operator creates {namespace_for(name)} and her "
                    f"kubeconfig. Follow with: labctl admin user show {name}")


@user_app.command("ls")
def user_ls(ctx: typer.Context, output: Format = OutputOption) -> None:
    """List the lab's members with their tier, state and usage."""
    items = session(ctx).kube.list("GPUUser")
    headers, rows = views.user_rows(views.user_of(body) for body in items)
    emit(as_list(items), output, headers, rows, empty="no users yet; add one with: labctl admin user add NAME --tier student")


@user_app.command("show")
def user_show(ctx: typer.Context, name: str = typer.Argument(...), output: Format = OutputOption) -> None:
    """One member in detail: limits and where they come from, nodes, conditions, workspaces."""
    s = session(ctx)
    body = get_user_body(s, name)
    if output != Format.table:
        emit(body, output)
        return
    user = views.user_of(body)
    spec, status = user.spec, user.status or GPUUserStatus()
    out = console()
    out.print(f"[bold]{name}[/bold] ({spec.display_name or name}): tier {spec.tier}, "
              f"state {spec.state}, phase {status.phase or 'Pending'}")
    out.print(f"uid {status.uid or '-'}  namespace {status.namespace or '-'}  home {status.home or '-'}"
              f"  groups {', '.join(spec.groups) or '-'}  ssh keys {len(spec.ssh_keys)}")
    headers, rows = views.limits_rows(user)
    if rows:
        out.print(table(headers, rows))
    if status.nodes:
        out.print(table(["NODE", "STATE", "HOME", "MESSAGE"],
                        [[n.node, n.state or "-", views.human_bytes(n.home_bytes), n.message] for n in status.nodes]))
    if status.conditions:
        out.print(table(["CONDITION", "STATUS", "REASON", "MESSAGE"],
                        [[c.type, c.status, c.reason, c.message] for c in status.conditions]))
    workspaces = views.workspaces_of(s.kube.list("Workspace", namespace_for(name)))
    if workspaces:
        headers, rows = views.workspace_rows(workspaces, views.dt.datetime.now(views.dt.UTC))
        out.print(table(headers, rows))


def _set_user_state(ctx: typer.Context, name: str, spec: dict, said: str) -> None:
    s = session(ctx)
    get_user_body(s, name)
    s.kube.patch("GPUUser", name, {"spec": spec})
    console().print(f"GPUUser {name}: {said}")


@user_app.command("suspend")
def user_suspend(ctx: typer.Context, name: str = typer.Argument(...)) -> None:
    """Suspend a member: her workspaces stop and her access is withdrawn; her data stays."""
    _set_user_state(ctx, name, {"state": "Suspended"}, "suspended (workspaces stop, access withdrawn, data kept)")


@user_app.command("resume")
def user_resume(ctx: typer.Context, name: str = typer.Argument(...)) -> None:
    """Give a suspended member her access back."""
    _set_user_state(ctx, name, {"state": "Active"}, "active again")


@user_app.command("offboard")
def user_offboard(
    ctx: typer.Context,
    name: str = typer.Argument(...),
    keep: bool = typer.Option(False, "--keep", help="leave her home where it is"),
    archive: bool = typer.Option(False, "--archive", help="move her home to <dataRoot>/archive/"),
    delete: bool = typer.Option(False, "--delete", help="delete her home (asks unless --yes)"),
    yes: bool = typer.Option(False, "--yes", "-y"),
) -> None:
    """Offboard a member: access removed for good; her home kept, archived or deleted."""
    chosen = [p for p, on in (("Keep", keep), ("Archive", archive), ("Delete", delete)) if on]
    if len(chosen) != 1:
        raise usage_error("choose exactly one of --keep, --archive, --delete")
    if chosen[0] == "Delete":
        confirm(f"offboard {name} and DELETE her home directory?", yes)
    _set_user_state(ctx, name, {"state": "Offboarded", "dataPolicy": chosen[0]},
                    f"offboarded; data policy {chosen[0]}")


# ---- policy --------------------------------------------------------------------------------------
def read_policy_text(s: Session) -> str:
    cm = s.kube.get("ConfigMap", POLICY_CONFIGMAP, SYSTEM_NAMESPACE)
    if cm is None:
        raise LabctlError(f"ConfigMap {SYSTEM_NAMESPACE}/{POLICY_CONFIGMAP} not found",
                          "the chart installs it from values.policy; the operator uses built-in defaults meanwhile")
    return (cm.get("data") or {}).get(POLICY_KEY, "")


def policy_tiers(s: Session) -> set[str] | None:
    """The tiers of the policy in force (the built-in ones without a ConfigMap); None when it cannot be read."""
    cm = s.kube.get("ConfigMap", POLICY_CONFIGMAP, SYSTEM_NAMESPACE)
    try:
        return set(load_policy((cm.get("data") or {}).get(POLICY_KEY, "") if cm else "").tiers)
    except PolicyError:  # a broken ConfigMap is the operator's to report; it keeps the last good policy
        return None


@policy_app.command("show")
def policy_show(ctx: typer.Context, output: Format = OutputOption) -> None:
    """Print the lab policy in force (tiers, weights, durations)."""
    text = read_policy_text(session(ctx))
    data = yaml.safe_load(text) or {}
    if output != Format.table:
        emit(data, output)
        return
    tiers = data.get("tiers") or {}
    if tiers:
        fields = sorted({k for t in tiers.values() for k in (t or {}) if not isinstance((t or {})[k], dict | list)})
        console().print(table(["TIER", *[f.upper() for f in fields]],
                              [[name, *[str((t or {}).get(f, "-")) for f in fields]] for name, t in tiers.items()]))
    rest = {k: v for k, v in data.items() if k != "tiers"}
    if rest:
        sys.stdout.write(yaml.safe_dump(rest, sort_keys=False))


@policy_app.command("explain")
def policy_explain(ctx: typer.Context, name: str = typer.Argument(...), output: Format = OutputOption) -> None:
    """Each of a user's limits, its value and where it came from (default, tier or override)."""
    s = session(ctx)
    user = views.user_of(get_user_body(s, name))
    headers, rows = views.limits_rows(user)
    if not rows:
        raise LabctlError(f"GPUUser {name} has no effective limits in its status yet",
                          "is the operator running? `labctl admin doctor`")
    limits = user.status.effective_limits if user.status else {}
    data = {"user": name, "tier": user.spec.tier,
            "effectiveLimits": {field: wire(entry) for field, entry in limits.items()},
            "overrides": wire(user.spec.limits)}
    if output != Format.table:
        emit(data, output)
        return
    console().print(f"{name}: tier {data['tier']}; a limit comes from the policy defaults, the tier, "
                    "or an override in the GPUUser's spec.limits")
    console().print(table(headers, rows))


# ---- imports -------------------------------------------------------------------------------------
def _importer(kind: str):
    try:
        from labkeeper.api import importers
    except ImportError as err:
        raise LabctlError(f"this labkeeper has no {kind} importer yet (labkeeper.api.importers)") from err
    return importers


def _diff(before: dict | None, after: dict, label: str) -> list[str]:
    old = yaml.safe_dump(before, sort_keys=True).splitlines() if before is not None else []
    new = yaml.safe_dump(after, sort_keys=True).splitlines()
    return list(difflib.unified_diff(old, new, f"{label} (cluster)" if before is not None else "/dev/null",
                                     f"{label} (import)", lineterm="", n=2))


def _show_and_apply(s: Session, objects: list[dict], dry_run: bool, yes: bool) -> None:
    out = console()
    changes: list[dict] = []
    for obj in objects:
        kind, meta = obj["kind"], obj["metadata"]
        current = s.kube.get(kind, meta["name"], meta.get("namespace"))
        if obj["kind"] == "ConfigMap":
            before, after = (current or {}).get("data") if current else None, obj.get("data")
        else:
            before, after = (current or {}).get("spec") if current else None, obj.get("spec")
        lines = _diff(before, after, f"{kind}/{meta['name']}")
        if lines:
            changes.append(obj)
            for line in lines:
                style = "green" if line.startswith("+") else "red" if line.startswith("-") else None
                out.print(line, style=style, markup=False, highlight=False)
    if not changes:
        out.print("nothing to change: the cluster already matches the file")
        return
    out.print(f"{len(changes)} object(s) would change")
    if dry_run:
        return
    confirm(f"apply {len(changes)} change(s)?", yes)
    for obj in changes:
        s.kube.apply(obj)
    out.print(f"applied {len(changes)} object(s)")


@import_app.command("aicadatakeeper")
def import_aicadatakeeper(
    ctx: typer.Context,
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="AICADataKeeper's users.txt"),
    tier: str = typer.Option("student", "--tier", help="tier for the imported users"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the diff only"),
    yes: bool = typer.Option(False, "--yes", "-y"),
) -> None:
    """Import AICADataKeeper's users.txt registry as GPUUsers (prints a diff first)."""
    importers = _importer("AICADataKeeper")
    users = importers.import_aicadatakeeper(file.read_text(), tier=tier)
    objects = [u if isinstance(u, dict) else u.manifest() for u in users]
    _show_and_apply(session(ctx), objects, dry_run, yes)


@import_app.command("ds01")
def import_ds01(
    ctx: typer.Context,
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="DS01's resource-limits.yaml"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the diff only"),
    yes: bool = typer.Option(False, "--yes", "-y"),
) -> None:
    """Import DS01's resource-limits.yaml into the lab policy (prints a diff first)."""
    importers = _importer("DS01")
    policy = importers.import_ds01(file.read_text())
    text = policy if isinstance(policy, str) else yaml.safe_dump(policy.model_dump(by_alias=True, mode="json",
                                                                                   exclude_none=True), sort_keys=False)
    cm = {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": POLICY_CONFIGMAP, "namespace": SYSTEM_NAMESPACE}, "data": {POLICY_KEY: text}}
    _show_and_apply(session(ctx), [cm], dry_run, yes)


# ---- board and doctor ----------------------------------------------------------------------------
@admin_app.command("board")
def board(
    ctx: typer.Context,
    once: bool = typer.Option(False, "--once", help="print one frame and exit"),
    interval: float = typer.Option(2.0, "--interval", help="seconds between refreshes"),
) -> None:
    """Live dashboard: every GPU and MIG slice with its user and workspace, idle times, holds, queue, alerts."""
    board_view.run(session(ctx), once=once, interval=interval)


@admin_app.command("doctor")
def doctor(
    ctx: typer.Context,
    data_root: Path = typer.Option(None, "--data-root", help="check ACL support here (on the server itself)"),
    output: Format = OutputOption,
) -> None:
    """Check the lab end to end; each failed check says how to fix it."""
    checks = doctor_checks.run_checks(session(ctx), data_root)
    if output != Format.table:
        emit([c.as_dict() for c in checks], output)
    else:
        for line in doctor_checks.render(checks):
            console().print(line, markup=False, highlight=False)
    if any(c.state == "fail" for c in checks):
        raise typer.Exit(1)


# ---- shared caches -------------------------------------------------------------------------------
@cache_app.command("clean")
def cache_clean(ctx: typer.Context, name: str = typer.Argument(..., help="SharedCache name, e.g. pip")) -> None:
    """Ask the node agents to clean a shared cache now, by its own cleanup policy (admins: it is cluster-wide)."""
    s = session(ctx)
    if s.kube.get("SharedCache", name) is None:
        raise LabctlError(f"SharedCache {name} not found", "`kubectl get sharedcaches` lists the lab's caches")
    stamp = views.rfc3339(views.dt.datetime.now(views.dt.UTC))
    s.kube.patch("SharedCache", name, {"metadata": {"annotations": {CLEAN_ANNOTATION: stamp}}})
    console().print(f"cleanup of cache {name} requested at {stamp}; the node agents report what they freed "
                    f"in `kubectl get sharedcache {name} -o yaml` (status.lastCleanup)")
