"""``provider-macos``: the provider with macOS defaults (device: mps, falling back to CPU), and its launchd agent."""

from __future__ import annotations

import sys

import click

from common import configfile
from common.provider.cli import make_cli, parse_join, resolve_join
from provider_macos import service
from provider_macos.keepawake import keep_awake

cli = make_cli("macOS", "mps", on_start=keep_awake)
PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True}


@cli.command("install-service", context_settings=PASS_THROUGH,
             epilog="Example: provider-macos install-service --join @~/mac-mini.join --slots 2")
@click.option("--dry-run", is_flag=True, help="Print the agent's plist and launchctl commands; change nothing.")
@click.argument("start_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def install_service(ctx: click.Context, dry_run: bool, start_args: tuple[str, ...]) -> None:
    """Start the provider at login (launchd agent), restart it if it dies, log to ~/Library/Logs/zcompute.

    START_ARGS are options of `start` (--join, --data-dir, --slots, ...): the join is saved in the
    data dir; the other options are written into the agent.
    """
    plan = configfile.service_start(ctx, list(start_args))
    agent = service.LaunchAgent([sys.executable, "-m", "provider_macos", *plan.group_args, "start", *plan.start_args])
    if dry_run:
        click.echo(f"# {agent.plist_path}")
        click.echo(agent.plist().decode())
        for argv in service.install_commands(agent):
            click.echo(" ".join(argv))
        return
    params = plan.context.params
    resolve_join(parse_join(params["join_text"], params["insecure"]), plan.data_dir, params["insecure"])
    try:
        service.install(agent)
    except (OSError, RuntimeError) as e:
        raise click.ClickException(f"cannot install the launchd agent: {e}") from None
    click.echo(f"installed {agent.plist_path} (running now, and at every login)")
    click.echo(f"logs: {agent.log_path}    restart: launchctl kickstart -k {service.domain()}/{agent.label}")


@cli.command("uninstall-service", epilog="Example: provider-macos uninstall-service")
def uninstall_service() -> None:
    """Stop the launchd agent (the provider drains first) and remove it; logs and data dir stay."""
    agent = service.LaunchAgent([])
    try:
        existed = service.uninstall(agent)
    except OSError as e:
        raise click.ClickException(f"cannot remove the launchd agent: {e}") from None
    click.echo(f"removed {agent.plist_path}" if existed else f"no agent installed ({agent.plist_path} is absent)")


def main() -> None:
    cli()
