"""`hsbcpd`: the command line of the communications processor (only the CLI lives here)."""

from __future__ import annotations

import errno
import socket
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from hsb import __version__, logs, version_line
from hsb.cli import EXIT_CANNOT_START, EXIT_CONFIG, EXIT_DATA, EXIT_FAILED, die, exit_watchdog, load_or_exit, log_level_option
from hsb.config import Partial, resolve_under
from hsb.cp.config import LISTEN_KEYS, CPConfig, CPSection
from hsb.fsutil import LASTING, unwritable_above
from hsb.ops import runmark
from hsb.ops.limits import check_warnings, storm_timing
from hsb.ops.listen import ListenError, listen_problems, listen_warnings
from hsb.wire.auth import load_secret
from hsb.worker import within


def config_warnings(cfg: CPConfig) -> list[str]:
    out = []
    if cfg.cp.durability == "none":
        out.append(
            'cp.durability = "none": hsbcpd keeps what it accepted in memory only; a crash or restart of'
            ' hsbcpd loses it (for benchmark comparison only; use "fsync")'
        )
    if cfg.cp.host_timeout > 30:
        out.append(
            f"cp.host_timeout = {cfg.cp.host_timeout:g} s: a silent active is noticed only that long after it went"
            " silent, and the same after a restart of hsbcpd (seconds, not milliseconds; the default is 0.5)"
        )
    storm = storm_timing(len(cfg.terminal_table), cfg.cp.host_timeout)
    if storm is not None:
        out.append(storm)
    return out + check_warnings(len(cfg.terminal_table))


def cp_run_mark(cfg: CPConfig) -> Path | None:
    """Where this CP says whether it stopped cleanly (hsb.ops.runmark): beside its journal
    directory, named for this machine (two CP machines share the journal's storage); none
    without a journal."""
    if cfg.cp.durability == "none":
        return None
    d = Path(cfg.cp.journal)
    return d.with_name(f"{d.name}.{socket.gethostname()}.run")


def start_problems(cfg: CPConfig) -> list[str]:
    """What the start refuses about this machine, said by --check-config too (ExecStartPre): the
    journal's I/O mode, the NFS options two CP machines need, ip_nonlocal_bind, and a journal
    directory this user can make and write (under the shipped unit, only /var/lib/hsb)."""
    return machine_problems({k: getattr(cfg.cp, k) for k in MACHINE_KEYS})


MACHINE_KEYS = ("durability", "journal_io", "takeover", "journal", "terminal_listen")  # what the machine checks read of [cp]


def machine_problems(c: Mapping[str, Any]) -> list[str]:
    """`start_problems` on [cp]'s values: each check made when the keys it needs are there (a
    config that failed its schema gives only its valid keys: `partial_problems`)."""
    from pathlib import Path

    from hsb.cp.journal import JournalIOUnavailable
    from hsb.cp.journal.writer import check_io
    from hsb.cp.waiting import nonlocal_bind_problem
    from hsb.ops.mounts import nfs_fencing_problem

    if c.get("durability") != "fsync":  # (none, or given wrong: whether the journal is used is not known)
        return []
    out = []
    if "journal_io" in c:
        try:
            check_io(c["journal_io"])
        except JournalIOUnavailable as exc:
            out.append(str(exc))
    if c.get("takeover") == "on_wake":  # two CP machines: their fencing needs the server asked every time
        if "journal" in c:
            done, fencing = _within(STORAGE_LOOK_S, nfs_fencing_problem, c["journal"])
            if not done:  # a hung mount: the start goes on, waiting says so, and the takeover asks again
                click.echo(
                    f"warning: the CP journal's storage ({c['journal']}) did not answer within {STORAGE_LOOK_S:g} s (a hung mount?);"
                    " its mount options are checked again when this CP takes the journal over",
                    err=True,
                )
            out += [fencing] if fencing else []
        if "terminal_listen" in c and (why := nonlocal_bind_problem(c["terminal_listen"])):
            out.append(why)
    elif c.get("takeover") == "at_start" and "journal" in c:  # (on_wake: made once on the shared storage, perhaps not mounted yet)
        d = Path(c["journal"])
        there = unwritable_above(d)
        if there is not None:
            # a file (or a device, a pipe) at the journal's own path is no directory to chmod: say so
            if there != d:
                what = f"cannot be made ({there} is not a directory this user may write)"
            elif d.is_dir():
                what = "cannot be written"
            else:
                what = "is a file, not a directory" if d.is_file() else "is not a directory"
            out.append(
                f"cp.journal: {d} {what}: point journal at a directory the CP's user may write"
                " (under the shipped systemd unit: in /var/lib/hsb, its ReadWritePaths)"
            )
    return out


def partial_problems(part: Partial, check_config: bool) -> list[str]:
    """The machine checks (and with `check_config` the listen names) when another part of the
    config failed its schema, on the valid keys of [cp]: every error at once."""
    c = part.values("cp")
    if "journal" in c:
        c["journal"] = resolve_under(c["journal"], part.base)
    listens = [(f"cp.{k}", c[k]) for k in LISTEN_KEYS if k in c]
    return machine_problems(c) + (listen_problems(listens) if check_config else [])


def _listens(cfg: CPConfig) -> list[tuple[str, str]]:
    return [(f"cp.{k}", getattr(cfg.cp, k)) for k in LISTEN_KEYS]


def listen_addresses(cfg: CPConfig) -> list[str]:
    """--check-config: a listen address on a name that does not resolve (no start could bind it)."""
    return listen_problems(_listens(cfg))


def listen_foreign(cfg: CPConfig) -> list[str]:
    """--check-config's warning: a listen address that is not this machine's. With takeover =
    "on_wake" the terminal and host listeners are on the virtual address, which the other CP
    machine holds until this one takes over."""
    moving = ("cp.terminal_listen", "cp.host_listen") if cfg.cp.takeover == "on_wake" else ()
    return listen_warnings(_listens(cfg), moving)


STORAGE_LOOK_S = 2.0  # the start's look at the journal's mount: a hung one does not hold the start


def _within(timeout: float, fn: Callable[[str], str | None], arg: str) -> tuple[bool, str | None]:
    """`fn(arg)` within `timeout` (hsb.worker.within); a storage error is no answer: nothing known
    about its options (the takeover asks again)."""

    def look() -> str | None:
        try:
            return fn(arg)
        except OSError:
            return None

    return within(timeout, look, "storage-look")


def _applied(applied: Any) -> CPConfig | None:
    """The config the workers before this one last applied (hsbcpd --supervise), if any."""
    if applied is None:
        return None
    try:
        cfg: CPConfig | None = applied.load(CPConfig)
    except Exception as exc:  # noqa: BLE001 - (cannot be: it was a valid config once) none then
        import structlog

        structlog.get_logger("hsb.cp").error("applied_config_unreadable", error=str(exc))
        return None
    return cfg


def _set_journal_aside(config_path: str, force: bool) -> None:
    """`--set-journal-aside`: one line said, exit 0; or one line why not, exit 1."""
    from pathlib import Path

    from hsb.cp.journal.aside import AsideRefused, set_aside

    cfg = load_or_exit(config_path, CPConfig, False)  # (a bad config: its lines, exit 78)
    d = Path(cfg.cp.journal)
    try:
        to, n, gen = set_aside(d, force=force)
    except (AsideRefused, OSError) as exc:
        die(f"journal not set aside: {exc}")
    click.echo(
        f"moved {d} ({n} files) to {to} (keep it for inspection: the messages in it were acknowledged);"
        f" {d} is new, with generation {gen}: the next hsbcpd starts empty at generation {gen + 1}"
    )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
# (readable=False: a config this user may not read is a config error, 78 with the fix, hsb.config.load; not usage, 2)
@click.option("--config", "config_path", required=True, type=click.Path(readable=False), help="CP TOML config.")
@click.option("--check-config", is_flag=True, help="Check the config as the start would (schema, secret, timings), print every error, exit 0 or 78.")
@click.option(
    "--supervise",
    is_flag=True,
    help="Run the CP under a small master process that starts it again at once when it dies of a signal (docs/operations.md §11).",
)
@click.option(
    "--set-journal-aside",
    is_flag=True,
    help="With every hsbcpd on this journal stopped: move a damaged journal's records aside (kept for inspection)"
    " and keep its generation, so the next start begins empty and the hosts still take it (docs/operations.md §11).",
)
@click.option("--force", is_flag=True, help="With --set-journal-aside: set aside a journal that is not damaged too (what it holds is lost).")
@log_level_option
@click.version_option(__version__, prog_name="hsbcpd", message=version_line("%(prog)s"))
def main(config_path: str, check_config: bool, supervise: bool, set_journal_aside: bool, force: bool, log_level: str) -> None:
    """Run the communications processor in front of the terminals (docs/design.md)."""
    if set_journal_aside and (check_config or supervise):  # (it ran the set-aside, neither checking nor starting)
        flag = "--check-config" if check_config else "--supervise"
        raise click.UsageError(
            f"--set-journal-aside does not go with {flag}: it moves the journal aside and exits, neither checking nor starting;"
            f" run 'hsbcpd --config FILE --set-journal-aside' alone, then 'hsbcpd --config FILE {flag}'"
        )
    if force and not set_journal_aside:  # (it was ignored: a start is never forced)
        raise click.UsageError(
            "--force goes with --set-journal-aside only (hsbcpd --config FILE --set-journal-aside --force); drop it to start or check"
        )
    if set_journal_aside:
        _set_journal_aside(config_path, force)
        return
    # keepalived's notify (SIGUSR1) or a reload (SIGHUP) may come while starting: never die of
    # it, nor lose it (noted, acted on once the loop is up: hsb.cp.server.take_early_signals)
    from hsb.cp.supervise import record_early_signals

    record_early_signals()
    start_cfg = load_or_exit(
        config_path,
        CPConfig,
        check_config,
        warnings=lambda c: config_warnings(c) + listen_foreign(c),
        checks=lambda c: start_problems(c) + (listen_addresses(c) if check_config else []),
        partial_checks=lambda part: partial_problems(part, check_config),
    )
    start_secret = load_secret(start_cfg.cp.secret_file)
    logs.setup(log_level, process=f"hsbcpd:{start_cfg.cp.name}", cache=True)

    def reread(cfg: CPConfig, secret: bytes) -> tuple[CPConfig, bytes]:
        """A worker forked again after its predecessor died or exited 1 at its start: what a SIGHUP
        applies (the CP's RELOADABLE keys) as the config file has it now, so what SIGHUPs applied
        (or, waiting, checked) since the start stays applied; the rest as at the start (a journal path or a listen address changed in
        the file waits for a restart of the unit, as it did for the worker that died)."""
        import structlog

        from hsb.config import load
        from hsb.cp import supervise as sv
        from hsb.cp.server import CPServer
        from hsb.ops.reload import changed_keys

        log = structlog.get_logger("hsb.cp")
        kept = None  # the config the workers before applied, once decoded (all the terminals: not twice)
        try:
            new = load(config_path, CPConfig)
        except Exception as exc:  # noqa: BLE001 - a file broken since: what the last worker applied, said so
            kept = _applied(sv.APPLIED)
            if kept is None:
                log.error("config_reread_failed", path=config_path, error=str(exc), msg="the worker runs on the config it started with; fix the file")
                return cfg, secret
            log.error(
                "config_reread_failed",
                path=config_path,
                error=str(exc),
                msg="the worker runs on the config the worker before it last applied (its SIGHUPs included); fix the file",
            )
            new = kept
        # the [cp] section copied, the rest shared: a deep copy of 10,000 terminals' definitions
        # cost about 70 ms of a restart here, and they are replaced from `new` below anyway
        merged = cfg.model_copy(update={"cp": cfg.cp.model_copy()})
        merged.cp.held_bound = new.cp.held_bound
        merged.cp.held_bytes = new.cp.held_bytes
        merged.cp.held_total_bytes = new.cp.held_total_bytes
        kept_timeout = None
        if CPSection.lease_allows(new.cp.host_timeout, cfg.cp.host_lease):  # (as a reload checks it)
            merged.cp.host_timeout = new.cp.host_timeout
        else:  # meant for the next restart of the unit (with a shorter host_lease): what ran stays
            applied = kept if kept is not None else _applied(sv.APPLIED)
            if applied is not None and CPSection.lease_allows(applied.cp.host_timeout, cfg.cp.host_lease):
                merged.cp.host_timeout = applied.cp.host_timeout
            kept_timeout = f"cp.host_timeout (kept at {merged.cp.host_timeout:g} s: below the running host_lease {cfg.cp.host_lease:g} s + margin)"
        merged.terminals, merged.terminal_groups, merged._defs = new.terminals, new.terminal_groups, new.terminal_table
        waiting = [k for k in changed_keys(merged, new) if k not in CPServer.RELOADABLE] + ([kept_timeout] if kept_timeout else [])
        if waiting:
            log.warning("config_reread_incomplete", msg=f"these settings change only on a restart of the unit: {', '.join(waiting)}")
        return merged, secret

    from hsb import faults, loop
    from hsb.cp.journal import JournalDamaged, JournalIOUnavailable
    from hsb.cp.journal.recovery import JournalUnsettled
    from hsb.cp.server import CPServer
    from hsb.cp.waiting import JournalMissing
    from hsb.wire.tls import TLSError

    async def run(supervisor: dict[str, Any] | None) -> int:
        from hsb.cp import supervise as sv

        cfg, secret = start_cfg, start_secret
        # any worker but the master's first, after a death or an exit 1 at its start: one that took
        # a SIGHUP and then exited 1 leaves it in the file (or in APPLIED), not on the start's config
        again = supervisor is not None and sv.FORKED_AGAIN
        if again:
            cfg, secret = reread(cfg, secret)
            for why in start_problems(cfg):  # before any generation is taken (else load_or_exit checked them)
                die(why, EXIT_CONFIG)
        try:
            try:
                server = CPServer(cfg, secret, config_path)
            except TLSError as exc:  # (checked at the start; a worker forked again reads them again: expired, replaced)
                pem = sv.applied_tls() if again else None
                if pem is None:
                    raise
                import structlog

                structlog.get_logger("hsb.cp").error(
                    "tls_files_broken_since",
                    error=str(exc),
                    msg="serving on the certificates the worker before loaded; fix the files, then reload (SIGHUP)",
                )
                server = CPServer(cfg, secret, config_path, tls_pem=pem)
        except OSError as exc:
            die(os_error_line("taking_over", cfg.cp.journal, exc), os_error_code("taking_over", exc))
        except TLSError as exc:
            die(f"TLS: {exc}", EXIT_CONFIG)
        server.supervisor = supervisor
        runmark.started(cp_run_mark(cfg))
        try:
            code = await server.serve()
            if code == 0:
                runmark.stopped()
            exit_watchdog(code)
            return code
        except JournalUnsettled as exc:  # another CP still deleting segments: a start again may succeed
            die(str(exc))
        except JournalMissing as exc:  # the shared storage not mounted: a start again may find it
            die(str(exc))
        except JournalDamaged as exc:  # the same at every start: not restarted by systemd (the unit)
            die(str(exc), EXIT_DATA)
        except JournalIOUnavailable as exc:  # the config asks for what this machine lacks: no restart loop
            die(str(exc), EXIT_CONFIG)
        except OSError as exc:
            die(os_error_line(server.state, cfg.cp.journal, exc), os_error_code(server.state, exc))

    def work(supervisor: dict[str, Any] | None) -> int:
        from hsb.cp.supervise import ending_as_meant

        faults.install()  # in the worker: the master passes SIGUSR2 on
        return ending_as_meant(lambda: loop.run(run(supervisor)))

    if supervise:
        from hsb.cp import supervise as sv
        from hsb.cp.listeners import master_listeners
        from hsb.cp.supervise import supervise as master

        if start_cfg.cp.takeover == "at_start":  # (a waiting CP listens only once it takes over)
            try:
                sv.LISTENERS.update(master_listeners(start_cfg))
            except OSError as exc:  # (a ListenError: its line names the key and the fix)
                die(os_error_line("starting", start_cfg.cp.journal, exc), os_error_code("starting", exc))

        sys.exit(master(work))
    sys.exit(work(None))


# Errors of a start that last until someone acts: every start would fail the same way, so the
# CP exits EXIT_CANNOT_START (73), which the unit does not restart (RestartPreventExitStatus),
# rather than 1, which it restarts (at once, for ever: StartLimitIntervalSec=0). A listener: a
# port another process holds, an address that is not this machine's (with on_wake, the virtual
# address leaving as the CP takes over is no such thing: hsb.cp.server, exit 0), a port below
# 1024, an address family it lacks (a name that does not resolve may resolve at the next start). The
# journal: permissions, a read-only file system, a path through a file (a hung or missing mount,
# EIO, ESTALE and the like may come back: 1).
LASTING_LISTEN = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES, errno.EAFNOSUPPORT})


def os_error_code(state: str, exc: OSError) -> int:
    """The exit status for an OSError out of the CP's start (`os_error_line` says it): 73 for one
    that lasts (LASTING_LISTEN, hsb.fsutil.LASTING), else 1."""
    if isinstance(exc, ListenError):
        lasting = not isinstance(exc.cause, socket.gaierror) and exc.errno in LASTING_LISTEN
    elif state in ("taking_over", "waiting"):
        lasting = exc.errno in LASTING
    else:  # (serving or stopping: not the start's; restarted as before)
        lasting = state == "starting" and exc.errno in LASTING_LISTEN
    return EXIT_CANNOT_START if lasting else EXIT_FAILED


def os_error_line(state: str, journal: str, exc: OSError) -> str:
    """The one line an OSError out of the CP's run gets: what it was doing names the problem (a
    listener's own error, hsb.ops.listen.ListenError, names its config key and the fix)."""
    if isinstance(exc, ListenError):
        return str(exc)
    why = exc.strerror or str(exc)
    if state == "taking_over":
        return f"cannot open the CP journal {journal}: {why} (check [cp] journal and its permissions)"
    if state == "waiting":  # its polls read the journal directory on the shared storage
        return f"cannot read the CP journal {journal} while waiting to take over: {why} (check its mount, and that the hsb user has the same uid on both CP machines)"
    return f"cannot listen: {why} (is another hsbcpd running on these ports?)"
