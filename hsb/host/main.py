"""`hsbd`: the command line of a host daemon (only the CLI lives here)."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from hsb import __version__, logs, version_line
from hsb.cli import EXIT_CONFIG, die, exit_watchdog, load_or_exit, log_level_option
from hsb.config import Partial, one_line, resolve_under
from hsb.host.config import HostConfig, raw_size_keys, service_paths
from hsb.host.hooks import stop_time_warning as stop_time_warning_line
from hsb.ops import runmark
from hsb.ops.listen import ListenError, listen_problems, listen_warnings
from hsb.wire.auth import load_secret

LISTEN_KEYS = ("peer_listen", "admin_listen", "http_listen")  # of [host]


def start_error(exc: OSError) -> str:
    """The one-line error for a system call that failed at start: a port's (in use, or not this
    machine's address), a named file's, or else most likely the takeover file's storage (a read
    or sync on the open file names none). A listener's own error (hsb.ops.listen.ListenError)
    names its config key and the fix for its kind."""
    if isinstance(exc, ListenError):
        return str(exc)
    if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
        return f"cannot start: {exc.strerror or exc} (is another hsbd using these ports, or is the address not this machine's?)"
    if exc.filename is not None:
        return f"cannot start: {exc.filename}: {exc.strerror or exc} (check that file, its permissions and the storage it is on)"
    return f"cannot start: {exc.strerror or exc} (check the takeover file's storage, and the listen addresses in the config)"


class HostChecks:
    """The loader's `checks` and `warnings` of one config: what both need (the service's look at
    its options, the takeover file's and the CP generation file's) is looked at once per config,
    not again for the warnings (a hung mount costs the check one deadline, not two)."""

    def __init__(self, check_only: bool) -> None:
        self.check_only = check_only  # --check-config: a service whose build changes the disk is looked at instead
        self._seen: dict[str, tuple[HostConfig, list[str], list[str]]] = {}

    def _once(self, what: str, cfg: HostConfig, look: Callable[[], tuple[list[str], list[str]]]) -> tuple[list[str], list[str]]:
        seen = self._seen.get(what)
        if seen is None or seen[0] is not cfg:
            seen = self._seen[what] = (cfg, *look())
        return seen[1], seen[2]

    def _service_look(self, cfg: HostConfig) -> tuple[list[str], list[str]]:
        opts = dict(cfg.service_options)
        return self._once("service", cfg, lambda: service_look(cfg.host.service, cfg.host.name, opts, self.check_only))

    def _geometry_look(self, cfg: HostConfig) -> tuple[list[str], list[str]]:
        return self._once("takeover_file", cfg, lambda: takeover_geometry(cfg))

    def _generation_look(self, cfg: HostConfig) -> tuple[list[str], list[str]]:
        t = cfg.takeover
        return self._once("cp_generation", cfg, lambda: generation_look(t.path, cfg.host.name, t.storage_timeout))

    def checks(self, cfg: HostConfig) -> list[str]:
        """The service is importable and constructible with [service_options] (then closed again);
        with --check-config, the takeover file, the listen addresses and the CP generation file."""
        out = list(self._service_look(cfg)[0])
        if self.check_only:
            out += takeover_writable(cfg) + self._geometry_look(cfg)[0] + listen_addresses(cfg) + self._generation_look(cfg)[0]
        return out

    def warnings(self, cfg: HostConfig) -> list[str]:
        """--check-config's warnings: no takeover file yet or its header torn (the start takes it),
        the listen addresses', a service looked at instead of built (the journal's: the start makes
        its file), a CP generation file not read within the deadline, a hook_timeout that lets a
        stop outlast the unit's."""
        return (
            takeover_missing(cfg)
            + self._geometry_look(cfg)[1]
            + listen_warnings(_listens(cfg))
            + self._service_look(cfg)[1]
            + self._generation_look(cfg)[1]
            + stop_time_warning(cfg)
        )


def service_problems(spec: str, name: str, options: dict[str, Any], check_only: bool = False) -> list[str]:
    """The service is importable and constructible with `options` (then closed again);
    `check_only` (--check-config): one whose build changes the disk is looked at instead."""
    return service_look(spec, name, options, check_only)[0]


def service_look(spec: str, name: str, options: dict[str, Any], check_only: bool = False) -> tuple[list[str], list[str]]:
    """`service_problems`, and the warnings of a service looked at instead of built."""
    import asyncio

    from hsb.service.api import ServiceError, load_service, look_at_options

    try:
        said = look_at_options(spec, name, options) if check_only else None
        if said is not None:
            return [one_line(e) for e in said[0]], [one_line(w) for w in said[1]]
        service = load_service(spec, name, options)
    except ServiceError as exc:
        return [one_line(f"host.service: {exc}")], []
    except Exception as exc:  # the factory itself failed: a config problem as far as the operator can tell
        return [one_line(f"host.service: {spec!r} could not be built with [service_options]: {type(exc).__name__}: {exc}")], []
    try:
        asyncio.run(service.close())
    except Exception:  # closing a service just built for the check is best effort
        pass
    return [], []


def partial_checks(part: Partial, check_config: bool) -> list[str]:
    """`HostChecks.checks` (`service_problems`, and with `check_config` `takeover_writable`,
    `takeover_geometry`, `listen_addresses` and `generation_look`) when another part of the
    config failed its schema: on the raw values of the keys each needs, each check when its keys
    are valid (every error at once)."""
    host, options, out = part.values("host"), part.data.get("service_options", {}), []
    if "service" in host and "name" in host and isinstance(options, dict) and not part.failed_under("service_options"):
        out += service_problems(host["service"], host["name"], service_paths(host["service"], options, part.base), check_config)
    if not check_config:
        return out
    takeover = part.values("takeover")
    path = resolve_under(takeover["path"], part.base) if "path" in takeover else None
    if path is not None:
        out += _writable_problem(path) + _partial_geometry(part)
    out += listen_problems([(f"host.{k}", host[k]) for k in LISTEN_KEYS if k in host])
    if path is not None and "name" in host and "storage_timeout" in takeover:
        out += generation_look(path, host["name"], takeover["storage_timeout"])[0]
    return out


def takeover_geometry(cfg: HostConfig) -> tuple[list[str], list[str]]:
    """--check-config: the takeover file, if it is there, passes the start's file checks (its
    magic, version, size, header, and the config's records and record_size); else the line the
    start gives (read-only, within storage_timeout). And a warning for a torn header the start
    takes (hsb.host.takeover_size.geometry_look)."""
    from hsb.host.takeover_size import geometry_look
    from hsb.takeover.pair import pair_tag
    from hsb.wire.auth import SecretFileError, load_secret

    t = cfg.takeover
    try:  # (a secret file that cannot be read: its own error says it)
        tag: int | None = pair_tag(load_secret(str(cfg.host.secret_file)))
    except SecretFileError:
        tag = None
    return geometry_look(t.records, len(cfg.terminal_table), t.record_size, t.path, t.storage_timeout, tag)


def _partial_geometry(part: Partial) -> list[str]:
    """`takeover_geometry` on the valid keys of a config that failed its schema elsewhere."""
    from hsb.host.takeover_size import geometry_look

    size = raw_size_keys(part)[1]
    return [] if size is None else geometry_look(*size)[0]


def takeover_missing(cfg: HostConfig) -> list[str]:
    """--check-config's warning: no takeover file at the path yet (the start stops with exit 1 until
    one is made: `hsbctl file create`; on NFS, a mount not there yet)."""
    from hsb.takeover.errors import FileMissing
    from hsb.takeover.fileio import stat_regular

    try:
        stat_regular(cfg.takeover.path, cfg.takeover.records, cfg.takeover.record_size)
    except FileMissing as exc:
        return [f"takeover.path: {exc} before this host starts"]
    except Exception:  # noqa: BLE001 - (anything else: the errors above said it)
        pass
    return []


def stop_time_warning(cfg: HostConfig) -> list[str]:
    """--check-config's warning of a hook_timeout that lets a stop outlast the unit's
    (hsb.host.hooks.stop_time_warning; the start logs the same line)."""
    said = stop_time_warning_line(cfg.host.on_role_change, cfg.host.hook_timeout)
    return [] if said is None else [said]


def takeover_writable(cfg: HostConfig) -> list[str]:
    """--check-config: the takeover file, if it is there, is a regular file this host can write. (The
    start asks the same in its size check, under storage_timeout: this one has no deadline, and
    a hung mount must not hang a start before it.)"""
    return _writable_problem(cfg.takeover.path)


def _writable_problem(path: str) -> list[str]:
    from hsb.takeover.errors import NotRegularFile, NotWritable, TakeoverError
    from hsb.takeover.fileio import stat_regular
    from hsb.takeover.store import writable

    try:
        stat_regular(path)  # (missing: a warning, takeover_missing; the start waits on neither)
        writable(path)
    except (NotWritable, NotRegularFile) as exc:
        return [f"takeover.path: {exc}"]
    except TakeoverError:
        pass
    except OSError:
        pass  # the start says what else is wrong with it (a hung mount included)
    return []


def generation_look(takeover_path: str, name: str, timeout: float) -> tuple[list[str], list[str]]:
    """--check-config: this host's CP generation file, if it is there, is one the start takes
    (hsb.host.cpgen), read within `timeout` as the start reads it: (its line, []), or, past the
    deadline, ([], a warning; a thread stuck on a hung mount is left behind)."""
    from hsb.host.cpgen import GenerationFileError, generation_path, read_generation
    from hsb.worker import within

    path = generation_path(takeover_path, name)

    def look() -> list[str]:
        try:
            read_generation(path, name)
        except GenerationFileError as exc:
            return [str(exc)]
        except OSError:
            pass  # the storage's: the start says it (the takeover file's checks say it too)
        return []

    done, said = within(timeout, look, "cp-generation-look")
    if done and said is not None:
        return said, []
    return [], [
        f"the CP generation file {path} was not read within storage_timeout ({timeout:g} s): does its storage hang?"
        " the start reads it within the same deadline, and stops if it still does not answer"
    ]


def _listens(cfg: HostConfig) -> list[tuple[str, str]]:
    return [(f"host.{k}", getattr(cfg.host, k)) for k in LISTEN_KEYS]


def listen_addresses(cfg: HostConfig) -> list[str]:
    """--check-config: a listen address on a name that does not resolve (no start could bind it)."""
    return listen_problems(_listens(cfg))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--role", type=click.Choice(["active", "standby"]), required=False, help="Role to start in.")
@click.option(
    "--no-rejoin",
    is_flag=True,
    help="Started with --role active while another host is the active: exit 76 (start_refused) instead of rejoining as the standby.",
)
# (readable=False: a config this user may not read is a config error, 78 with the fix, hsb.config.load; not usage, 2)
@click.option("--config", "config_path", required=True, type=click.Path(readable=False), help="Host TOML config.")
@click.option(
    "--check-config",
    is_flag=True,
    help="Check the config as the start would (schema, secret, takeover size, service), print every error, exit 0 or 78.",
)
@log_level_option
@click.version_option(__version__, prog_name="hsbd", message=version_line("%(prog)s"))
def main(role: str | None, no_rejoin: bool, config_path: str, check_config: bool, log_level: str) -> None:
    """Run one host of the hot-standby pair (docs/design.md)."""
    looks = HostChecks(check_config)
    cfg = load_or_exit(
        config_path,
        HostConfig,
        check_config,
        warnings=looks.warnings,
        checks=looks.checks,
        partial_checks=lambda part: partial_checks(part, check_config),
    )
    if role is None:
        raise click.UsageError("--role active|standby is required")
    secret = load_secret(cfg.host.secret_file)
    logs.setup(log_level, process=f"hsbd:{cfg.host.name}", cache=True)
    from hsb import faults, loop
    from hsb.host.cpgen import GenerationFileError

    faults.install()
    from hsb.service.api import ServiceError, load_service
    from hsb.takeover.errors import (
        BadMagic,
        FileTruncated,
        HeaderCorrupt,
        NotRegularFile,
        NotWritable,
        RecordCountMismatch,
        RecordSizeMismatch,
        TakeoverError,
        UnsupportedVersion,
    )
    from hsb.wire.tls import TLSError

    async def run() -> int:
        from hsb.host.server import HostServer

        try:
            service = load_service(cfg.host.service, cfg.host.name, dict(cfg.service_options))
        except ServiceError as exc:  # checked already; a service can still fail the second time
            die(str(exc), EXIT_CONFIG)
        try:
            server = HostServer(cfg, role, secret, service, config_path, rejoin=not no_rejoin)
        except TLSError as exc:  # (checked at the start; they may have changed since)
            die(f"TLS: {exc}", EXIT_CONFIG)
        # (beside the takeover file, named for this host, as its HOST.cp-generation: hsb.ops.runmark)
        runmark.started(Path(cfg.takeover.path).parent / f"{cfg.host.name}.run")
        try:
            code = await server.serve()
        except (NotWritable, NotRegularFile) as exc:  # a restart cannot fix it: said, and exit 78, as the config check says it
            await server.close()
            die(f"takeover.path: {exc}", EXIT_CONFIG)
        except (RecordCountMismatch, RecordSizeMismatch, BadMagic, UnsupportedVersion, FileTruncated, HeaderCorrupt) as exc:
            # the file there is not one this config can use (another geometry, another file or
            # version, cut short, a damaged header on a file short of the config's records):
            # every start finds the same; --check-config's line, exit 78
            await server.close()
            die(str(exc), EXIT_CONFIG)
        except TakeoverError as exc:
            await server.close()
            die(str(exc))
        except GenerationFileError as exc:  # a restart would find the same file: --check-config's line, exit 78
            await server.close()
            die(str(exc), EXIT_CONFIG)
        except OSError as exc:
            await server.close()
            die(start_error(exc))
        if code:
            click.echo(f"error: {server.exit_msg}", err=True)
        else:
            runmark.stopped()
        exit_watchdog(code)
        return code

    sys.exit(loop.run(run()))
