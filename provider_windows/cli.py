"""``provider-windows``: the provider with Windows defaults (device: cuda, falling back to CPU), and its
scheduled task."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from common import configfile
from common.provider.cli import make_cli, parse_join, resolve_join
from provider_windows import console, service

cli = make_cli("Windows", "cuda", on_start=console.install)
PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True}


@cli.command("install-service", context_settings=PASS_THROUGH,
             epilog="Example: provider-windows install-service --join @%USERPROFILE%\\gpu-box.join --slots 2")
@click.option("--dry-run", is_flag=True, help="Print the task's XML and schtasks commands; change nothing.")
@click.argument("start_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def install_service(ctx: click.Context, dry_run: bool, start_args: tuple[str, ...]) -> None:
    """Start the provider at logon (a scheduled task), start it again if it stops, log to
    %LOCALAPPDATA%\\zcompute.

    START_ARGS are options of `start` (--join, --data-dir, --slots, ...): the join is saved in the
    data dir; the other options are written into the task.
    """
    plan = configfile.service_start(ctx, list(start_args))
    task = service.ScheduledTask(service.windowless(sys.executable), plan.group_args, plan.start_args)
    if dry_run:
        click.echo(f"<!-- {task.xml_path} -->")
        click.echo(task.xml())
        for argv in service.install_commands(task):
            click.echo(" ".join(argv))
        return
    params = plan.context.params
    resolve_join(parse_join(params["join_text"], params["insecure"]), plan.data_dir, params["insecure"])
    try:
        service.install(task)
    except (OSError, RuntimeError) as e:
        raise click.ClickException(f"cannot register the scheduled task: {e}") from None
    click.echo(f"registered task {task.name!r} (running now, and at every logon); logs: {task.log_path}")


@cli.command("uninstall-service", epilog="Example: provider-windows uninstall-service")
def uninstall_service() -> None:
    """End the provider's scheduled task and delete it; logs and data dir stay."""
    task = service.ScheduledTask(sys.executable, [], [])
    try:
        existed = service.uninstall(task)
    except OSError as e:
        raise click.ClickException(f"cannot delete the scheduled task: {e}") from None
    click.echo(f"deleted task {task.name!r}" if existed else f"no task {task.name!r} was registered")


@cli.command("service-run", hidden=True, context_settings=PASS_THROUGH)
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), required=True)
@click.argument("start_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def service_run(ctx: click.Context, log_file: Path, start_args: tuple[str, ...]) -> None:
    """What the scheduled task runs: `start START_ARGS`, its output in LOG_FILE (pythonw has no console)."""
    service.redirect_output(log_file)
    sub = configfile.effective(ctx, list(start_args))
    with sub:
        sub.command.invoke(sub)


def main() -> None:
    cli()
