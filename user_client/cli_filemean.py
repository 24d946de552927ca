"""``user-client submit filemean``: the element-wise mean of many files (wired into ``submit`` by cli.py)."""

from __future__ import annotations

import sys

import click

from common import cli_options as opt
from common.errors import ZComputeError
from common.tasks.filemean import MAX_FANIN


@click.command("filemean", epilog="Example: user-client submit filemean --input 's3://bucket/run7/*.npy' --fanin 8 "
                                  "--wait --out mean.npy")
@click.option("--input", "inputs", multiple=True, required=True,
              help="A directory, a glob (quote it), a file, or a URL such as s3://bucket/run7/*.npy; repeatable. "
                   "Files are .npy or text with one number per line.")
@click.option("--fanin", type=click.IntRange(2, MAX_FANIN), default=8, show_default=True,
              help="Files (then partial sums) each task adds up.")
@click.option("--intermediate", metavar="URL", default=None,
              help="Prefix where providers keep partial sums (s3://bucket/tmp); default: the head's store.")
@click.option("--upload/--no-upload", default=None,
              help="Send the files' contents (default for local files), or let the providers read the "
                   "paths/URLs themselves (--no-upload: they must see the same files).")
@opt.priority
@click.option("--wait/--no-wait", default=False, help="Wait for the result, with a progress bar.")
@opt.out_file("Save the mean here (.npy); implies --wait.")
@click.pass_context
def filemean_command(ctx, inputs, fanin, intermediate, upload, priority, wait, out):
    """Element-wise mean across files, as a tree of partial sums on the providers."""
    from user_client.cli import ClientError, _client, _wait_and_save  # cli.py imports this module
    from user_client.filemean import submit_filemean

    with _client(ctx) as c:
        try:
            job = submit_filemean(c, list(inputs), fanin=fanin, intermediate=intermediate,
                                  upload="auto" if upload is None else upload, priority=priority)
        except ZComputeError as e:
            raise ClientError(str(e)) from None
        click.echo(f"submitted job {job.id}")
        if wait or out:
            _wait_and_save(job, out, sys.stderr.isatty())
