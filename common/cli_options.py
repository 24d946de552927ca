"""Click options shared by the CLIs (each setting with its ``ZCOMPUTE_*`` variable) and the checks they share."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Iterator

import click

from common.config import ENV_PREFIX
from common.errors import ZComputeError
from common.logs import LEVELS
from common.protocol import PRIORITIES


def env(name: str) -> str:
    return ENV_PREFIX + name


class Number(click.FloatRange):
    """A ``FloatRange`` that also refuses nan (every comparison with nan is false, so a range lets it through)."""

    def convert(self, value, param, ctx) -> float:
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{value!r} is not a number", param, ctx)
        return number


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """An expected failure of a server command (refused, expired token, head unreachable, a data dir it cannot
    use) is one line on stderr and exit code 1, not a traceback."""
    try:
        yield
    except ZComputeError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"{e.strerror}: {e.filename}" if e.filename else str(e)) from None


def writable_file(ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
    """An ``--out`` file that can be written, checked before any work is done for it."""
    if value is None:
        return None
    if not value.strip():
        raise click.BadParameter("the file name is empty", ctx, param)
    path = Path(value).expanduser()
    if not path.parent.is_dir():
        raise click.BadParameter(f"{path}: the directory {path.parent} does not exist", ctx, param)
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise click.BadParameter(f"{path}: permission denied", ctx, param)
    return path


log_level = click.option("--log-level", type=click.Choice(LEVELS), default="info", envvar=env("LOG_LEVEL"),
                         show_default=True, help="Log verbosity.")
log_json = click.option("--log-json/--log-console", default=None, envvar=env("LOG_JSON"),
                        help="JSON lines (default when not a terminal) or readable console lines.")
insecure = click.option("--insecure", is_flag=True, envvar=env("INSECURE"),
                        help="Turn off encryption and tokens (lab networks only).")
heartbeat_interval = click.option("--heartbeat-interval", type=Number(0.01, 600), default=1.0,
                                  envvar=env("HEARTBEAT_INTERVAL"), show_default=True,
                                  help="Seconds between provider heartbeats.")
priority = click.option("--priority", type=click.IntRange(PRIORITIES.start, PRIORITIES.stop - 1), default=0,
                        show_default=True, help="Higher runs first.")



#: the codec's ``auto`` then compresses an array only when the wire time saved beats the time to compress
link_mbit = click.option("--link-mbit", type=Number(0.1, 1e6), default=None, envvar=env("LINK_MBIT"),
                         help="Speed of the network to the peers in Mbit/s (e.g. 1000). With it, 'auto' compresses "
                              "an array only where that pays on such a link. Without it a head measures the link to "
                              "each provider not on its machine and tells it the figure; a provider told nothing "
                              "compresses when a sample shrinks by 30%.")


def out_file(help: str, required: bool = False):
    """``--out FILE``: refused at once when it could not be written, before any job is submitted or fetched."""
    return click.option("--out", type=click.Path(dir_okay=False), callback=writable_file, required=required,
                        help=help)
