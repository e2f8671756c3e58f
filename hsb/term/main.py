"""`hsbterm`: the terminal simulator's command line (interactive terminal and load generator)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

import click

from hsb import gcpolicy
from hsb import loop as hsb_loop
from hsb.term.interactive import interactive
from hsb.term.load import SetupNotAnswered, run_load
from hsb.term.net import parse_hostport
from hsb.term.report import LoadReport, format_table


def _cp(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, int]:
    try:
        return parse_hostport(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


cp_option = click.option("--cp", required=True, metavar="HOST:PORT", callback=_cp, help="The CP's terminal listen address.")


def tls_options(f: Any) -> Any:
    """--tls --ca [--cert --key]: the CP's terminal listener speaks TLS (docs/tls.md)."""
    f = click.option("--key", "tls_key", type=click.Path(dir_okay=False, exists=True), help="With --cert: this terminal's key.")(f)
    f = click.option(
        "--cert", "tls_cert", type=click.Path(dir_okay=False, exists=True), help="This terminal's certificate (optional; must name the terminal)."
    )(f)
    f = click.option(
        "--cp-name",
        "tls_cp_name",
        metavar="NAME",
        help="With --tls: the CP's certificate must also name NAME, the CP's [cp] name (the sandbox's: cp); without it, any certificate of --ca is taken.",
    )(f)
    f = click.option("--ca", "tls_ca", type=click.Path(dir_okay=False, exists=True), help="With --tls: the CA the CP's certificate chains to.")(f)
    return click.option("--tls", is_flag=True, help="Connect with TLS (the CP's terminal listener has [tls] terminals = true).")(f)


def _ssl(tls: bool, ca: str | None, cert: str | None, key: str | None, cp_name: str | None = None) -> Any:
    if not tls:
        if ca or cert or key or cp_name:
            raise click.UsageError("--ca, --cert, --key and --cp-name go with --tls")
        return None
    if not ca:
        raise click.UsageError("--tls needs --ca FILE (the CA the CP's certificate chains to)")
    if bool(cert) != bool(key):
        raise click.UsageError("--cert and --key go together")
    import ssl

    from hsb.term.connector import tls_context
    from hsb.wire.tls import TLSError

    try:
        return tls_context(ca, cert, key, cp_name)
    except TLSError as exc:
        raise click.BadParameter(str(exc).removeprefix("tls.key_file: "), param_hint="--key") from None
    except (ssl.SSLError, OSError) as exc:
        which = f"--ca {ca}" + (f" or --cert {cert} with --key {key}" if cert else "")
        raise click.UsageError(
            f"cannot use {which}: {getattr(exc, 'reason', None) or exc}; --ca takes the PEM file of the CA, --cert and --key a PEM certificate and its key"
        ) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Simulated terminals: interactive, or a load generator that checks for loss."""


@main.command()
@click.argument("name")
@cp_option
@click.option("--id-base", type=click.IntRange(min=1), default=None, help="First message id (default: clock in µs).")
@click.option(
    "--linger",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="At end of input, wait this long for outstanding replies before bye.",
)
@tls_options
def connect(
    name: str,
    cp: tuple[str, int],
    id_base: int | None,
    linger: float,
    tls: bool,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_cp_name: str | None,
) -> None:
    """Interactive terminal NAME: each stdin line is a message; events are printed. Ctrl-D logs off."""
    ssl = _ssl(tls, tls_ca, tls_cert, tls_key, tls_cp_name)
    try:
        status = hsb_loop.run(interactive(name, cp[0], cp[1], id_base=id_base, linger=linger, ssl=ssl, cert=tls_cert))
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(status)


def _progress_line(snap: dict[str, Any]) -> None:
    line = (
        f"[{snap['elapsed']:6.1f}s {snap['phase']:<7}] welcomed {snap['welcomed']}/{snap['terminals']}"
        f" sessions {snap['sessions']} sent {snap['sent']} acked {snap['acked']} replied {snap['replied']}"
        f" outstanding {snap['outstanding']} disc {snap['disconnects']} switched {snap['switched']}"
    )
    sys.stderr.write("\r" + line + "\x1b[K")
    if snap["phase"] == "done":
        sys.stderr.write("\n")
    sys.stderr.flush()


async def _load_main(cp: tuple[str, int], **kw: Any) -> LoadReport:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, stop.set)  # Ctrl-C ends the current phase early
    except (NotImplementedError, RuntimeError):  # pragma: no cover - not on the main thread
        pass
    return await run_load(cp, stop=stop, **kw)


@main.command()
@cp_option
@click.option("--terminals", "-n", type=click.IntRange(min=1), required=True, help="How many terminals.")
@click.option("--rate", type=click.FloatRange(min=0), default=None, help="Total messages per second, all terminals (required unless --closed-loop).")
@click.option(
    "--closed-loop",
    is_flag=True,
    help="No rate: each terminal keeps --window messages outstanding and sends the next on each reply (capacity).",
)
@click.option("--duration", type=click.FloatRange(min=0), required=True, help="Seconds of sending.")
@click.option("--prefix", default="T", show_default=True, help="Terminal name prefix.")
@click.option("--start", type=click.IntRange(min=0), default=1, show_default=True, help="First terminal number.")
@click.option("--width", type=click.IntRange(1, 12), default=5, show_default=True, help="Digits in a terminal name.")
@click.option(
    "--source",
    default=None,
    metavar="ADDR",
    help="Connect from this local address (127.0.0.2, ...): each source address has its own ~28,000 ephemeral ports.",
)
@click.option("--window", type=click.IntRange(min=0), default=8, show_default=True, help="Max outstanding per terminal (0: none).")
@click.option("--settle", type=click.FloatRange(min=0), default=10.0, show_default=True, help="Seconds to wait for late replies.")
@click.option(
    "--connect-concurrency",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="TCP connects in flight at once (keeps 10,000 terminals within the CP's listen backlog).",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Give up waiting for all terminals to log on after this long and start sending anyway.",
)
@click.option(
    "--wait-session/--no-wait-session",
    default=True,
    show_default=True,
    help="Start sending only once every terminal has an open session (else once all are welcomed).",
)
@click.option("--size", "payload_size", type=click.IntRange(min=0), default=0, help="Pad each message by this many bytes.")
@click.option("--id-base", type=click.IntRange(min=1), default=None, help="First message id (default: clock in µs).")
@click.option(
    "--ids-out",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help='Write {terminal: {"acked": [[first, last], ...], "replied": [...]}} (id ranges) to this JSON file.',
)
@click.option(
    "--check-data/--no-check-data",
    default=True,
    show_default=True,
    help="Fail on a reply whose data is not the data sent (right for the echo and journal services).",
)
@click.option(
    "--expect-disconnects",
    "expect_disconnects",
    is_flag=True,
    help="Disconnects and session closures are expected (conventional mode, a normal stop of the active): do not fail on them.",
)
@click.option(
    "--expect-cp-restart",
    "expect_cp_restart",
    is_flag=True,
    help="Only disconnects the CP's absence explains are expected (a CP restart or takeover): a terminal welcomed"
    " again by the same CP process, with no failed connect between, still fails the run.",
)
@click.option(
    "--classic",
    "classic",
    default="",
    metavar="NAMES",
    help="Comma-separated terminals without a standby session: a failover may disconnect them.",
)
@click.option(
    "--resume/--no-resume",
    default=True,
    show_default=True,
    help="Resume after a reconnect (last_reply, confirm, resent replies); --no-resume: the older terminal protocol.",
)
@click.option(
    "--keepalive",
    type=click.IntRange(0, 7200),
    default=1,
    show_default=True,
    help="TCP keepalive: probe an idle connection after this many seconds, so a dead CP machine is noticed (0: none, the system's default).",
)
@click.option(
    "--workload",
    type=click.Choice(["echo", "ledger"]),
    default="echo",
    show_default=True,
    help='echo: text the service sends back; ledger: transfers between the run\'s accounts (service = "ledger").',
)
@click.option("--accounts", type=click.IntRange(min=2), default=50, show_default=True, help="ledger: accounts the transfers move money between.")
@click.option("--books-dsn", default=None, metavar="DSN", help="ledger: check the books in this PostgreSQL database after the run.")
@click.option("--books-sqlite", default=None, metavar="PATH", help="ledger: check the books in this SQLite file after the run.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@tls_options
def load(
    cp: tuple[str, int],
    as_json: bool,
    ids_out: str | None,
    classic: str,
    workload: str,
    accounts: int,
    books_dsn: str | None,
    books_sqlite: str | None,
    tls: bool,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    tls_cp_name: str | None,
    expect_cp_restart: bool,
    **kw: Any,
) -> None:
    """Run N terminals at a total rate; check every promise; report latency and pauses.

    Exit status 1 if any promise was broken: an acknowledged message lost, a
    reply duplicated, unexpected (an id never sent, or before its ack) or with
    the wrong data, a message never acknowledged, a terminal never logged on,
    or a disconnect or session closure (unless --expect-disconnects, or the
    terminal is named in --classic); with --workload ledger and --books-dsn or
    --books-sqlite, also books that do not balance, a transfer applied twice
    or not as told, or a reply that differs from the stored first one. Each
    reason is printed. 2 if no terminal
    was ever welcomed (nothing connected; the reason is printed), or on a usage
    error; such a run gives up at once when every answer says no retry can
    help (the CP refused every terminal's name, --cp is not a CP's terminal
    port, TLS fails there). Ctrl-C ends the current phase (connect, send,
    settle) early.
    """
    kw["classic"] = [n for n in classic.split(",") if n]
    if expect_cp_restart:  # (one option of its own: two flags on one name, click took "cp" for a boolean)
        if kw["expect_disconnects"]:
            raise click.UsageError("--expect-disconnects and --expect-cp-restart: give one (every disconnect, or only the CP's)")
        kw["expect_disconnects"] = "cp"
    kw["ssl"] = _ssl(tls, tls_ca, tls_cert, tls_key, tls_cp_name)
    kw["tls_cert"] = tls_cert
    if workload == "ledger":
        from hsb.term.workload import LedgerWorkload

        kw["workload"] = LedgerWorkload(accounts=accounts)
        if books_dsn or books_sqlite:
            from hsb.service.db import dsn_problem

            problem = dsn_problem(books_dsn) if books_dsn else ""
            if problem:  # (said now, not after the whole run as "the books could not be checked")
                raise click.BadParameter(problem, param_hint="--books-dsn")
            kw["books"] = {"dsn": books_dsn, "sqlite": books_sqlite}
    elif books_dsn or books_sqlite:
        raise click.UsageError("--books-dsn/--books-sqlite check a ledger run: add --workload ledger")
    if kw["rate"] is None:
        if not kw["closed_loop"]:
            raise click.UsageError("--rate is required (or use --closed-loop)")
        kw["rate"] = 0.0
    if kw["closed_loop"] and kw["window"] < 1:
        raise click.UsageError("--closed-loop needs --window 1 or more")
    progress = _progress_line if sys.stderr.isatty() else None
    if ids_out is not None:  # before the run, not after it: a path it cannot write lost the run's report
        try:
            open(ids_out, "a").close()
        except OSError as exc:
            raise click.BadParameter(f"cannot write {ids_out}: {exc.strerror or exc}", param_hint="--ids-out") from None
    gcpolicy.apply()  # a full collection with 10,000 terminals would show up as a service gap
    try:
        report = hsb_loop.run(_load_main(cp, progress=progress, record_ids=ids_out is not None, **kw))
    except KeyboardInterrupt:
        sys.exit(130)
    except SetupNotAnswered as exc:  # the workload's setup (the ledger's accounts)
        click.echo(f"hsbterm: {exc}: is an active serving, and its service (the ledger's database) up?", err=True)
        sys.exit(1)
    if ids_out is not None:
        try:
            with open(ids_out, "w") as fh:
                json.dump(report.ids or {}, fh, separators=(",", ":"))
                fh.write("\n")
        except OSError as exc:
            click.echo(f"hsbterm: cannot write {ids_out}: {exc.strerror or exc} (the report follows)", err=True)
    if report.gave_up:  # refused for good before anyone logged on: the run ended at once
        click.echo(f"hsbterm: giving up, no terminal was welcomed: {report.gave_up}", err=True)
    elif not report.connected:
        click.echo(f"hsbterm: no terminal was ever welcomed by {cp[0]}:{cp[1]}: {report.never_welcomed}", err=True)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        click.echo(f"hsbterm load against {cp[0]}:{cp[1]}")
        click.echo(format_table(report))
    sys.exit(report.exit_status)


from hsb.cli import add_version_everywhere  # noqa: E402  (after every command is defined)

add_version_everywhere(main, "hsbterm")
