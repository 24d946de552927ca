"""``provider-windows``: the provider with Windows defaults (device: cuda, falling back to CPU)."""

from common.provider.cli import make_cli

cli = make_cli("Windows", "cuda")


def main() -> None:
    cli()
