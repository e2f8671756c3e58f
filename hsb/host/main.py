"""`hsbd`: the command line of a host daemon (only the CLI lives here)."""

from __future__ import annotations

import sys

import click

from hsb import logs
from hsb.cli import EXIT_CONFIG, die, exit_watchdog, load_or_exit, log_level_option
from hsb.host.config import HostConfig
from hsb.wire.auth import SecretFileError, load_secret


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--role", type=click.Choice(["active", "standby"]), required=False, help="Role to start in.")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Host TOML config.")
@click.option("--check-config", is_flag=True, help="Validate the config, print every error, exit 0 or 1.")
@log_level_option
def main(role: str | None, config_path: str, check_config: bool, log_level: str) -> None:
    """Run one host of the hot-standby pair (SPEC §5.1-§5.4)."""
    cfg = load_or_exit(config_path, HostConfig, check_config)
    if role is None:
        raise click.UsageError("--role active|standby is required")
    try:
        secret = load_secret(cfg.host.secret_file)
    except SecretFileError as exc:
        die(str(exc), EXIT_CONFIG)
    logs.setup(log_level, process=f"hsbd:{cfg.host.name}")
    from hsb import faults, loop

    faults.install()
    from hsb.host.service import ServiceError, load_service
    from hsb.takeover.errors import TakeoverError

    async def run() -> int:
        from hsb.host.server import HostServer

        try:
            service = load_service(cfg.host.service, cfg.host.name, dict(cfg.service_options))
        except ServiceError as exc:
            die(str(exc), EXIT_CONFIG)
        server = HostServer(cfg, role, secret, service, config_path)
        try:
            code = await server.serve()
        except TakeoverError as exc:
            await server.close()
            die(str(exc))
        except OSError as exc:
            await server.close()
            die(f"cannot start: {exc.strerror or exc} (is another hsbd using these ports?)")
        if code:
            click.echo(f"error: {server.exit_msg}", err=True)
        exit_watchdog(code)
        return code

    sys.exit(loop.run(run()))
