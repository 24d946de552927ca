"""``provider-macos``: the provider with macOS defaults (device: mps, falling back to CPU)."""

from common.provider.cli import make_cli

cli = make_cli("macOS", "mps")


def main() -> None:
    cli()
