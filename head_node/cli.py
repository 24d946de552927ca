"""``head-node``: run the coordinator."""

from __future__ import annotations

import datetime
import math
import signal
import time
from pathlib import Path

import click

from common import cli_options as opt
from common import configfile
from common.codec import Limits
from common.config import DEFAULT_DATA_DIR, DEFAULT_PORT_BASE, HeadAddress, HeadConfig, Timing
from common.errors import ConfigError
from common.security import ROLES
from head_node.keystore import KeyStore, default_advertise
from head_node.loopwatch import settle_gc
from common.lifecycle import watch_parent
from common.logs import get_logger, setup_logging

MAX_TTL_DAYS = 3650  # longer is a typo, and 99999999d put the expiry past year 9999


@click.group(help="zcompute head node: takes jobs from clients and shards them across providers.")
@configfile.option("head")
def cli() -> None:
    pass


@cli.command(epilog="Example: head-node start --data-dir ~/.zcompute --port-base 5555")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DATA_DIR,
              envvar=opt.env("DATA_DIR"), show_default=True, help="Where jobs, their arrays and keys are kept.")
@click.option("--bind", "bind_host", default="0.0.0.0", envvar=opt.env("BIND"), show_default=True,
              help="Interface to listen on.")
@click.option("--port-base", type=click.IntRange(1, 65530), default=DEFAULT_PORT_BASE, envvar=opt.env("PORT_BASE"),
              show_default=True, help="First of five ports: registration, heartbeat, tasks, results, client API.")
@opt.heartbeat_interval
@click.option("--liveness", type=click.IntRange(1, 100), default=3, envvar=opt.env("LIVENESS"), show_default=True,
              help="Missed heartbeats before a provider gets no new work.")
@click.option("--dead-after", type=opt.Number(0.05, 3600), default=10.0, envvar=opt.env("DEAD_AFTER"),
              show_default=True, help="Seconds of silence before a provider's shards are reassigned.")
@click.option("--ack-timeout", type=opt.Number(0.01, 600), default=2.0, envvar=opt.env("ACK_TIMEOUT"),
              show_default=True, help="Re-publish an assignment not accepted within this many seconds.")
@click.option("--max-attempts", type=click.IntRange(1, 100), default=3, envvar=opt.env("MAX_ATTEMPTS"),
              show_default=True, help="Failures of one shard that fail its job.")
@click.option("--prefetch", type=click.IntRange(0, 16), default=0, envvar=opt.env("PREFETCH"), show_default=True,
              help="Shards a provider may hold beyond its slots, so the next input arrives during compute "
                   "(a straggler then holds more work: keep 0 unless providers are alike).")
@click.option("--speculate/--no-speculate", default=True, envvar=opt.env("SPECULATE"), show_default=True,
              help="Copy straggling shards to idle providers; the first result wins.")
@click.option("--speculate-after", type=opt.Number(0, 1), default=0.75, envvar=opt.env("SPECULATE_AFTER"),
              show_default=True, help="Fraction of a job's shards done before stragglers are copied.")
@click.option("--straggler-factor", type=opt.Number(1, 1000), default=1.2,
              envvar=opt.env("STRAGGLER_FACTOR"), show_default=True,
              help="A shard running this many times the job's mean shard time is a straggler.")
@click.option("--max-queued-jobs", type=click.IntRange(1, 10**6), default=100, envvar=opt.env("MAX_QUEUED_JOBS"),
              show_default=True, help="Unfinished jobs one client may have before submit says 'queue full'.")
@click.option("--max-message-mb", type=click.IntRange(1, 1 << 20), default=2048, envvar=opt.env("MAX_MESSAGE_MB"),
              show_default=True, help="Largest message accepted on any socket, in MiB.")
@click.option("--compression", type=click.Choice(["auto", "raw", "zstd"]), default="auto",
              envvar=opt.env("COMPRESSION"), show_default=True, help="Array compression on the wire.")
@click.option("--allow-any-key", is_flag=True, envvar=opt.env("ALLOW_ANY_KEY"),
              help="Admit any CURVE key (every message still needs a valid token).")
@click.option("--advertise", default="", envvar=opt.env("ADVERTISE"),
              help="Address written into join strings, tcp://HOST[:BASE] (default: this host's name).")
@click.option("--http-port", type=click.IntRange(0, 65535), default=8080, envvar=opt.env("HTTP_PORT"),
              show_default=True, help="Dashboard, /metrics and /api/state (0 turns the HTTP server off).")
@click.option("--http-host", default="127.0.0.1", envvar=opt.env("HTTP_HOST"), show_default=True,
              help="Interface for the HTTP server; other than localhost it asks for an admin or viewer token.")
@click.option("--local-data/--no-local-data", default=True, envvar=opt.env("LOCAL_DATA"), show_default=True,
              help="Let providers and clients on this machine read and write job arrays in the data directory "
                   "in place, instead of sending them over the socket.")
@click.option("--keep-finished", default="7d", envvar=opt.env("KEEP_FINISHED"), show_default=True,
              help="How long a finished job (its arrays and events) is kept before it is deleted: seconds, "
                   "or 90m, 12h, 30d; 0 keeps jobs until a client deletes them.")
@click.option("--allow-model", "allow_models", multiple=True, metavar="MODULE:FACTORY", envvar=opt.env("ALLOW_MODELS"),
              help="A package.module:factory model that clients may train (repeatable; the variable takes several "
                   "separated by spaces). The head calls it to build the model, so only these and the factories "
                   "installed packages declare as 'zcompute.models' entry points are taken.")
@opt.link_mbit
@opt.insecure
@opt.log_level
@opt.log_json
def start(data_dir, bind_host, port_base, heartbeat_interval, liveness, dead_after, ack_timeout, max_attempts,
          prefetch, speculate, speculate_after, straggler_factor, max_queued_jobs, max_message_mb, compression, allow_any_key,
          advertise, http_port, http_host, local_data, keep_finished, allow_models, link_mbit, insecure, log_level,
          log_json):
    """Serve until stopped (Ctrl-C or SIGTERM closes cleanly)."""
    from head_node.server import HeadNode

    setup_logging(log_level, log_json)
    if dead_after < 2 * heartbeat_interval:
        raise click.BadParameter(
            f"{dead_after:g} s is less than twice --heartbeat-interval ({heartbeat_interval:g} s): a provider would "
            "be declared dead between two of its heartbeats", param_hint="--dead-after")
    config = HeadConfig(
        data_dir=data_dir.expanduser(), bind_host=bind_host, port_base=port_base, insecure=insecure,
        timing=Timing(heartbeat_interval=heartbeat_interval, liveness=liveness, dead_after=dead_after,
                      ack_timeout=ack_timeout),
        limits=Limits(max_message_bytes=max_message_mb * 1024 * 1024), max_attempts=max_attempts,
        prefetch=prefetch, speculate=speculate, speculate_after=speculate_after, straggler_factor=straggler_factor,
        max_queued_jobs_per_client=max_queued_jobs, compression=compression, allow_any_key=allow_any_key,
        advertise=advertise, http_port=http_port, http_host=http_host, link_mbit=link_mbit, local_data=local_data,
        keep_finished=_duration(keep_finished, "--keep-finished"), allow_models=tuple(allow_models),
    )
    with opt.one_line_errors():
        head = HeadNode(config)
        head.bind()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: head.stop())
    watch_parent(head.stop)
    get_logger("head").info("head.start", data_dir=str(config.data_dir), insecure=insecure)
    settle_gc()
    head.serve_forever()


data_dir_option = click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
                               default=DEFAULT_DATA_DIR, envvar=opt.env("DATA_DIR"), show_default=True,
                               help="The head's data dir.")


def _store(data_dir: Path) -> KeyStore:
    store = KeyStore(data_dir.expanduser())
    try:
        store.require_init()
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    return store


@cli.command(epilog="Example: head-node init --data-dir ~/.zcompute --advertise tcp://10.0.0.5:5555")
@data_dir_option
@click.option("--advertise", default="", help="Address peers will use, tcp://HOST[:BASE] (default: host name).")
@click.option("--port-base", type=click.IntRange(1, 65530), default=DEFAULT_PORT_BASE, show_default=True)
def init(data_dir, advertise, port_base):
    """Create the head's CURVE keys, token-signing secret and admin token (once; safe to re-run)."""
    store = KeyStore(data_dir.expanduser())
    address = default_advertise(HeadConfig(data_dir=store.data_dir, port_base=port_base, advertise=advertise))
    if store.init(address) is None:
        click.echo(f"{store.data_dir} is already initialized (head address {store.address})")
        return
    click.echo(f"initialized {store.data_dir}: keys in keys/, peers in peers.json (all secrets 0600)")
    click.echo(f"head address in join strings: {address} (change with --advertise)")
    click.echo(f"admin join string: {store.data_dir / 'admin.join'}  (user-client --join @{store.data_dir / 'admin.join'})")


def _duration(text: str, hint: str, most_days: float = math.inf) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        value = float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise click.BadParameter(f"{text!r} is not a duration like 3600, 90m, 12h or 30d", param_hint=hint)
    if value > most_days * 86400:
        raise click.BadParameter(f"{text!r} is more than {most_days / 365:g} years ({most_days:g}d)",
                                 param_hint=hint)
    return value


def _date(timestamp: float) -> str:
    try:
        return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")
    except (ValueError, OverflowError, OSError):  # past year 9999: made before --ttl had a bound
        return "never"


@cli.command(epilog="Example: head-node invite --role provider --name mac-mini --ttl 30d")
@data_dir_option
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the peer may do.")
@click.option("--name", required=True, help="The peer's name (jobs are owned by it; revoke by it).")
@click.option("--ttl", default="365d", show_default=True,
              help=f"Token lifetime: seconds, or 90m, 12h, 30d; at most {MAX_TTL_DAYS}d.")
@click.option("--advertise", default="", help="Head address for this join string (default: the one from init).")
def invite(data_dir, role, name, ttl, advertise):
    """Print one join string for a new peer: head address and key, the peer's key pair and token."""
    seconds = _duration(ttl, "--ttl", MAX_TTL_DAYS)
    store = _store(data_dir)
    try:
        join = store.invite(role, name, seconds, HeadAddress.parse(advertise) if advertise else None)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    click.echo(join.encode())
    click.echo(f"# {role} {name!r} may join {join.head}; give it: "
               f"{'provider start' if role == 'provider' else 'user-client'} --join <the line above>", err=True)


@cli.command(epilog="Example: head-node revoke mac-mini")
@data_dir_option
@click.argument("name_or_token_id")
def revoke(data_dir, name_or_token_id):
    """Revoke every token of a peer (by name) or one token (by id); the running head refuses it at once."""
    revoked = _store(data_dir).revoke(name_or_token_id)
    if not revoked:
        raise click.ClickException(f"no live token named or numbered {name_or_token_id!r}")
    for peer in revoked:
        click.echo(f"revoked {peer['role']} {peer['name']!r} (token {peer['jti']})")


@cli.command(epilog="Example: head-node peers")
@data_dir_option
def peers(data_dir):
    """List who holds a token: name, role, token id, expiry, revoked."""
    rows = _store(data_dir).read_peers()
    click.echo(f"{'NAME':<20} {'ROLE':<9} {'TOKEN ID':<33} {'EXPIRES':<17} STATE")
    for jti, p in sorted(rows.items(), key=lambda kv: kv[1]["issued"]):
        expires = _date(p["exp"])
        state = "revoked" if p["revoked"] else ("expired" if p["exp"] < time.time() else "active")
        click.echo(f"{p['name']:<20} {p['role']:<9} {jti:<33} {expires:<17} {state}")


cli.add_command(configfile.config_group("head"))


def main() -> None:
    cli()
