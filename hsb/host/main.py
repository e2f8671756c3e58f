"""`hsbd`: the command line of a host daemon (only the CLI lives here)."""

from __future__ import annotations

import sys

import click

from hsb.cli import load_or_exit, log_level_option
from hsb.host.config import HostConfig


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--role", type=click.Choice(["active", "standby"]), required=False, help="Role to start in.")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Host TOML config.")
@click.option("--check-config", is_flag=True, help="Validate the config, print every error, exit 0 or 1.")
@log_level_option
def main(role: str | None, config_path: str, check_config: bool, log_level: str) -> None:
    """Run one host of the hot-standby pair (SPEC §5.1-§5.4)."""
    load_or_exit(config_path, HostConfig, check_config)
    if role is None:
        raise click.UsageError("--role active|standby is required")
    click.echo("hsbd: not implemented yet", err=True)
    sys.exit(2)
