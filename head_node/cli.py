"""``head-node``: run the coordinator."""

from __future__ import annotations

import signal
from pathlib import Path

import click

from common import cli_options as opt
from common.codec import Limits
from common.config import DEFAULT_DATA_DIR, DEFAULT_PORT_BASE, HeadConfig, Timing
from common.errors import TransportError
from common.lifecycle import watch_parent
from common.logs import get_logger, setup_logging


@click.group(help="zcompute head node: takes jobs from clients and shards them across providers.")
def cli() -> None:
    pass


@cli.command(epilog="Example: head-node start --data-dir ~/.zcompute --port-base 5555")
@click.option("--data-dir", type=click.Path(path_type=Path), default=DEFAULT_DATA_DIR, envvar=opt.env("DATA_DIR"),
              show_default=True, help="Where jobs, their arrays and keys are kept.")
@click.option("--bind", "bind_host", default="0.0.0.0", envvar=opt.env("BIND"), show_default=True,
              help="Interface to listen on.")
@click.option("--port-base", type=click.IntRange(1, 65530), default=DEFAULT_PORT_BASE, envvar=opt.env("PORT_BASE"),
              show_default=True, help="First of five ports: registration, heartbeat, tasks, results, client API.")
@opt.heartbeat_interval
@click.option("--liveness", type=click.IntRange(1, 100), default=3, envvar=opt.env("LIVENESS"), show_default=True,
              help="Missed heartbeats before a provider gets no new work.")
@click.option("--dead-after", type=click.FloatRange(0.05, 3600), default=10.0, envvar=opt.env("DEAD_AFTER"),
              show_default=True, help="Seconds of silence before a provider's shards are reassigned.")
@click.option("--ack-timeout", type=click.FloatRange(0.01, 600), default=2.0, envvar=opt.env("ACK_TIMEOUT"),
              show_default=True, help="Re-publish an assignment not accepted within this many seconds.")
@click.option("--max-attempts", type=click.IntRange(1, 100), default=3, envvar=opt.env("MAX_ATTEMPTS"),
              show_default=True, help="Failures of one shard that fail its job.")
@click.option("--speculate/--no-speculate", default=True, envvar=opt.env("SPECULATE"), show_default=True,
              help="Copy straggling shards to idle providers; the first result wins.")
@click.option("--speculate-after", type=click.FloatRange(0, 1), default=0.75, envvar=opt.env("SPECULATE_AFTER"),
              show_default=True, help="Fraction of a job's shards done before stragglers are copied.")
@click.option("--straggler-factor", type=click.FloatRange(1, 1000), default=1.2,
              envvar=opt.env("STRAGGLER_FACTOR"), show_default=True,
              help="A shard running this many times the job's mean shard time is a straggler.")
@click.option("--max-queued-jobs", type=click.IntRange(1, 10**6), default=100, envvar=opt.env("MAX_QUEUED_JOBS"),
              show_default=True, help="Unfinished jobs one client may have before submit says 'queue full'.")
@click.option("--max-message-mb", type=click.IntRange(1, 1 << 20), default=2048, envvar=opt.env("MAX_MESSAGE_MB"),
              show_default=True, help="Largest message accepted on any socket, in MiB.")
@click.option("--compression", type=click.Choice(["auto", "raw", "zstd"]), default="auto",
              envvar=opt.env("COMPRESSION"), show_default=True, help="Array compression on the wire.")
@opt.insecure
@opt.log_level
@opt.log_json
def start(data_dir, bind_host, port_base, heartbeat_interval, liveness, dead_after, ack_timeout, max_attempts,
          speculate, speculate_after, straggler_factor, max_queued_jobs, max_message_mb, compression, insecure, log_level, log_json):
    """Serve until stopped (Ctrl-C or SIGTERM closes cleanly)."""
    from head_node.server import HeadNode

    setup_logging(log_level, log_json)
    config = HeadConfig(
        data_dir=data_dir.expanduser(), bind_host=bind_host, port_base=port_base, insecure=insecure,
        timing=Timing(heartbeat_interval=heartbeat_interval, liveness=liveness, dead_after=dead_after,
                      ack_timeout=ack_timeout),
        limits=Limits(max_message_bytes=max_message_mb * 1024 * 1024), max_attempts=max_attempts,
        speculate=speculate, speculate_after=speculate_after, straggler_factor=straggler_factor,
        max_queued_jobs_per_client=max_queued_jobs, compression=compression,
    )
    head = HeadNode(config)
    try:
        head.bind()
    except TransportError as e:
        raise click.ClickException(str(e)) from None
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: head.stop())
    watch_parent(head.stop)
    get_logger("head").info("head.start", data_dir=str(config.data_dir), insecure=insecure)
    head.serve_forever()


def main() -> None:
    cli()
