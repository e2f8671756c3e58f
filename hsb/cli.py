"""Small pieces shared by the four command-line entry points."""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from pydantic import BaseModel

from hsb import logs
from hsb.config import ConfigError, Partial, TLSLinks, load

M = TypeVar("M", bound=BaseModel)

# Exit statuses shared by the daemons (systemd units refer to them).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 78  # EX_CONFIG
EXIT_FENCED = 75  # distinct, and RestartPreventExitStatus in the unit
EXIT_NOT_ACTIVE = 76  # started as active while another host is active: start it as standby
EXIT_DATA = 65  # EX_DATAERR: the CP journal is damaged; starting again cannot help (RestartPreventExitStatus)
# EX_CANTCREAT: hsbcpd cannot make its listeners or open its journal here for a reason that lasts
# until someone acts (a port another process holds, an address not this machine's, a journal its
# user may not read or write): every start would fail the same way (RestartPreventExitStatus)
EXIT_CANNOT_START = 73
# The statuses a restart cannot change, each daemon's: its unit's RestartPreventExitStatus lists
# them (tests/test_operator.py). A usage error (click's 2: the unit's own command line, a drop-in's
# ExecStart) among them; hsbcpd's 75 is a superseded CP (hsb.cp.stopping.EXIT_SUPERSEDED)
NOT_RESTARTED = {
    "hsbd": (EXIT_USAGE, EXIT_FENCED, EXIT_NOT_ACTIVE, EXIT_CONFIG),
    "hsbcpd": (EXIT_USAGE, EXIT_DATA, EXIT_CANNOT_START, EXIT_FENCED, EXIT_CONFIG),
}


log_level_option = click.option(
    "--log-level",
    type=click.Choice(logs.LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    help="Lowest log level written to stderr.",
)


EXIT_GRACE = 5.0  # seconds the loop's teardown may take once a daemon has decided to exit


# the nonzero exit a process meant once it began to end for good (a superseded CP's 75,
# hsb.cp.supervise.mark_final): `ending_as_meant` exits with it whatever that ending then fails
# with, and so does a watchdog armed later, by such an error
MEANT_EXIT = 0


def exit_watchdog(code: int, seconds: float = EXIT_GRACE) -> None:
    """Make sure the process ends with `code` soon after it decided to: a fenced host must be
    gone, not stuck in teardown (a task that outlives cancellation, an executor thread in a
    blocked syscall). If the teardown takes longer than `seconds`, every thread's stack goes
    to stderr (to find the culprit) and the process exits at once, with MEANT_EXIT if one was
    set (a superseded CP exiting 1 would be started again and take the journal back)."""

    def expire() -> None:
        code_ = MEANT_EXIT or code
        sys.stderr.write(f"exit: teardown took longer than {seconds}s; exiting with {code_} now\n")
        faulthandler.dump_traceback(all_threads=True)
        sys.stderr.flush()
        os._exit(code_)

    t = threading.Timer(seconds, expire)
    t.daemon = True
    t.start()


def die(msg: str, code: int = EXIT_FAILED) -> NoReturn:
    """One line on stderr and exit `code`: a config problem (78, EX_CONFIG), one a restart cannot
    fix, is said `config error:` as --check-config says it, anything else `error:`."""
    click.echo(f"{'config error' if code == EXIT_CONFIG else 'error'}: {msg}", err=True)
    exit_watchdog(code)
    sys.exit(code)


def load_or_exit(
    path: str | Path,
    model: type[M],
    check_only: bool,
    warnings: Callable[[M], list[str]] | None = None,
    checks: Callable[[M], list[str]] | None = None,
    partial_checks: Callable[[Partial], list[str]] | None = None,
) -> M:
    """Load a config and run every check that needs no network: the schema (every error at
    once), the secret file, and the daemon's own `checks` (its service, say). The same code for
    `--check-config` and for the start, so the check passes only what the start accepts. Every
    problem is one line; a bad config exits 78 (EX_CONFIG) either way. When the schema failed,
    the checks of what is valid run all the same (the TLS files, `partial_checks`)."""
    errors: list[str] = []
    notes: list[str] = []  # warnings found here, shown by --check-config with the daemon's own
    cfg = None
    try:
        cfg = load(path, model)
    except ConfigError as exc:
        errors += exc.lines()
        errors += _raw_secret_problem(path, exc.lines())  # (every error at once: the schema's need not come first)
        if exc.partial is not None:
            errors += _partial_problems(exc.partial, partial_checks)
    if cfg is not None:
        secret = _secret_path(cfg)
        if secret is not None:
            from hsb.wire.auth import SecretFileError, load_secret

            try:
                load_secret(secret)
            except SecretFileError as exc:
                errors.append(str(exc))
        tls_cfg = getattr(cfg, "tls", None)
        if tls_cfg is not None:  # the same checks the start makes (hsb.wire.tls.check_files)
            from hsb.wire.tls import check_files

            tls_errors = check_files(tls_cfg.files())
            errors += tls_errors
            if not tls_errors:
                notes += _tls_name_warning(cfg, tls_cfg.cert_file)
        if checks is not None:
            errors += checks(cfg)
    for line in errors:
        click.echo(f"config error: {line}", err=True)
    if errors:
        sys.exit(EXIT_CONFIG)
    assert cfg is not None
    if check_only:
        for w in [*notes, *(warnings(cfg) if warnings is not None else [])]:
            click.echo(f"config warning: {w}", err=True)
        click.echo(f"{path}: config OK")
        sys.exit(EXIT_OK)
    return cfg


def _partial_problems(part: Partial, checks: Callable[[Partial], list[str]] | None) -> list[str]:
    """The checks of a loaded config on what of it is valid, when another part failed its schema:
    the TLS files (of a `[tls]` valid itself) and the daemon's own `checks`."""
    from hsb.wire.tls import check_files

    tls_cfg = part.section("tls")
    errors = check_files(tls_cfg.files()) if isinstance(tls_cfg, TLSLinks) else []
    return errors + (checks(part) if checks is not None else [])


def _tls_name_warning(cfg: BaseModel, cert_file: str) -> list[str]:
    """The daemon's certificate should name the daemon: the other side of every link checks the
    certificate against the name this daemon gives (docs/tls.md), and refuses it otherwise."""
    from hsb.wire.tls import file_names, name_problem

    sec = _daemon_section(cfg)
    try:
        names = file_names(cert_file)
    except (OSError, ValueError):
        return []  # unreadable: check_files said so
    wrong = name_problem(cert_file, names, None if sec is None else str(sec.name))
    return [f"tls.cert_file: {wrong}"] if wrong else []


def _daemon_section(cfg: BaseModel) -> Any:
    """The config's own section: `[cp]` of hsbcpd, `[host]` of hsbd (None for other configs)."""
    for section in ("cp", "host"):
        sec = getattr(cfg, section, None)
        if sec is not None:
            return sec
    return None


def _raw_secret_problem(path: str | Path, said: list[str]) -> list[str]:
    """The secret file's problem when the rest of the config failed its schema (the check of the
    loaded config never runs then): read from the TOML as it is, its section's `secret_file`."""
    import tomllib

    from hsb.wire.auth import SecretFileError, load_secret

    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except (OSError, ValueError, RecursionError):
        return []  # (said already: the file, its syntax, its depth)
    for section in ("cp", "host"):
        value = data.get(section, {}).get("secret_file") if isinstance(data.get(section), dict) else None
        if isinstance(value, str) and value and not any(f"{section}.secret_file" in line for line in said):
            secret = Path(value) if Path(value).is_absolute() else p.parent / value
            try:
                load_secret(str(secret))
            except SecretFileError as exc:
                return [str(exc)]
            except OSError:
                return []
    return []


def _secret_path(cfg: BaseModel) -> str | None:
    sec = _daemon_section(cfg)
    return None if sec is None else str(sec.secret_file)


def add_version_everywhere(group: click.Group, prog: str) -> None:
    """`--version` on the program and on every one of its commands (`hsbctl status --version`)."""
    from hsb import version_line

    def show(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value and not ctx.resilient_parsing:
            click.echo(version_line(prog))
            ctx.exit(0)

    def walk(cmd: click.Command) -> None:
        if not any(isinstance(p, click.Option) and "--version" in p.opts for p in cmd.params):
            cmd.params.append(
                click.Option(["--version"], is_flag=True, expose_value=False, is_eager=True, callback=show, help="Show the version and exit.")
            )
        if isinstance(cmd, click.Group):
            for sub in cmd.commands.values():
                walk(sub)

    walk(group)
