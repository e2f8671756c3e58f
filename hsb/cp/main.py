"""`hsbcpd`: the command line of the communications processor (only the CLI lives here)."""

from __future__ import annotations

import sys

import click

from hsb.cli import load_or_exit, log_level_option
from hsb.cp.config import CPConfig


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="CP TOML config.")
@click.option("--check-config", is_flag=True, help="Validate the config, print every error, exit 0 or 1.")
@log_level_option
def main(config_path: str, check_config: bool, log_level: str) -> None:
    """Run the communications processor (SPEC §5.5)."""
    load_or_exit(config_path, CPConfig, check_config)
    click.echo("hsbcpd: not implemented yet", err=True)
    sys.exit(2)
