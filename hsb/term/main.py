"""`hsbterm`: the terminal simulator's command line."""

from __future__ import annotations

import sys

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Simulated terminals: interactive, or a load generator that checks for loss."""


@main.command()
def connect() -> None:
    """Interactive terminal (not implemented yet)."""
    click.echo("hsbterm connect: not implemented yet", err=True)
    sys.exit(2)


@main.command()
def load() -> None:
    """Load generator (not implemented yet)."""
    click.echo("hsbterm load: not implemented yet", err=True)
    sys.exit(2)
