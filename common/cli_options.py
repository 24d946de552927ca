"""Click options shared by the CLIs, each with its ``ZCOMPUTE_*`` variable."""

from __future__ import annotations

import click

from common.config import ENV_PREFIX
from common.logs import LEVELS


def env(name: str) -> str:
    return ENV_PREFIX + name


log_level = click.option("--log-level", type=click.Choice(LEVELS), default="info", envvar=env("LOG_LEVEL"),
                         show_default=True, help="Log verbosity.")
log_json = click.option("--log-json/--log-console", default=None, envvar=env("LOG_JSON"),
                        help="JSON lines (default when not a terminal) or readable console lines.")
insecure = click.option("--insecure", is_flag=True, envvar=env("INSECURE"),
                        help="Turn off encryption and tokens (lab networks only).")
heartbeat_interval = click.option("--heartbeat-interval", type=click.FloatRange(0.01, 600), default=1.0,
                                  envvar=env("HEARTBEAT_INTERVAL"), show_default=True,
                                  help="Seconds between provider heartbeats.")



#: the codec's ``auto`` then compresses an array only when the wire time saved beats the time to compress
link_mbit = click.option("--link-mbit", type=click.FloatRange(0.1, 1e6), default=None, envvar=env("LINK_MBIT"),
                         help="Speed of the network to the peers in Mbit/s (e.g. 1000). With it, 'auto' compresses "
                              "an array only where that pays on such a link. Without it a head measures the link to "
                              "each provider not on its machine and tells it the figure; a provider told nothing "
                              "compresses when a sample shrinks by 30%.")
