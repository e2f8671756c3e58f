"""hsbterm when no retry can help: a refused name, a port that is no CP's terminal port, TLS that
cannot work there. `connect` tells the CP's refusal and exits 1 (it printed a traceback from a
connection its own logoff had closed, or nothing at all, when the input ended at once); `load`
gives up within seconds naming the cause and the fix (it waited out the 60 s connect timeout and
then said only that nothing connected). What a CP restart looks like is still retried."""

from __future__ import annotations

import asyncio
import io
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hsb.term.client import DOWN, TerminalClient
from hsb.term.connector import Connector, tls_context
from hsb.term.interactive import interactive
from hsb.term.listener import Listener
from hsb.term.load import run_load
from hsb.term.report import format_table
from hsb.wire.framing import encode
from tests.support.fakecp import FakeCP, free_port, reap, spawn, wait_until
from tests.support.procs import Proc, start_cp

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """A real hsbcpd without TLS, terminals T00001..T00004."""
    proc = start_cp(tmp_path_factory.mktemp("cp"), terminals=4)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> str:
    from hsb.ctl.tls_cmd import make_ca_and_certs

    d = tmp_path_factory.mktemp("tls")
    make_ca_and_certs(d, ["cp"])
    return str(d / "ca.pem")


@pytest.fixture(scope="module")
def tls_cp(tmp_path_factory: pytest.TempPathFactory, ca: str) -> Iterator[Proc]:
    """A real hsbcpd with TLS on its terminal port ([tls] terminals = true), terminals T00001..T00004."""
    from pathlib import Path

    d = Path(ca).parent
    tls = {"ca_file": ca, "cert_file": str(d / "cp.pem"), "key_file": str(d / "cp.key"), "terminals": True}
    proc = start_cp(tmp_path_factory.mktemp("tls-cp"), terminals=4, tls=tls)
    yield proc
    proc.stop()


# --------------------------------------------------------------------------- the connector


def test_a_connect_cut_by_close_just_as_it_got_through_leaves_no_dead_connection() -> None:
    """`Connector.close()` (the end of input) cancels a connect that has just got through: uvloop
    then closes that connection's handle with no connection_lost, and the terminal kept the dead
    transport as its connection: its logoff wrote the bye to it and died of a RuntimeError."""
    from hsb import loop as hsb_loop

    async def scenario() -> TerminalClient:
        loop = asyncio.get_running_loop()

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # never answers the hello
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        connector = Connector("127.0.0.1", server.sockets[0].getsockname()[1], concurrency=1)
        closing: list[asyncio.Task[None]] = []

        class Client(TerminalClient):
            __slots__ = ()

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                if not closing:  # the close runs before the connect's task resumes
                    closing.append(loop.create_task(connector.close()))

        c = Client("T00001", Listener())
        try:
            connector.attach(c)
            connector.start()
            connector.schedule(c)
            await wait_until(lambda: closing, 10, "a connection")
            await closing[0]
            assert c.transport is None and c.state == DOWN  # the connection is gone for the terminal too
            c.closed = loop.create_future()
            c.bye()  # (raised RuntimeError: the handler is closed)
            c.close()
        finally:
            server.close()
            await server.wait_closed()
        return c

    c = hsb_loop.run(scenario())
    assert c.logon_drops == 0  # closed by this side: no drop of the CP's


async def test_bye_on_a_connection_whose_handle_is_closed_ends_it() -> None:
    """A transport whose handle uvloop closed under it (is_closing() still False) raises on a
    write: the logoff ended in that RuntimeError; now the connection is taken as gone."""
    from tests.support.transports import CountingTransport

    class Dead(CountingTransport):
        dead = False

        def write(self, data: bytes) -> None:
            if self.dead:
                raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")
            super().write(data)

    c = TerminalClient("T00001", Listener())
    tr = Dead("cp")
    c.connection_made(tr)  # type: ignore[arg-type]
    tr.dead = True
    c.closed = asyncio.get_running_loop().create_future()
    c.bye()
    assert c.closed.done() and c.transport is None and c.state == DOWN and c.logon_drops == 0


# --------------------------------------------------------------------------- connect (in process)


class EndsAt(io.StringIO):
    """Input whose end sets `ended` (when the terminal reads it)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.ended = threading.Event()

    def readline(self, size: int | None = -1) -> str:  # type: ignore[override]  # (text, as typeshed's own TextIOBase overrides it)
        line = super().readline(-1 if size is None else size)
        if not line:
            self.ended.set()
        return line


@pytest.mark.parametrize(("code", "fix"), [("unknown_terminal", "a terminal the CP defines"), ("bad_hello", "give the terminal's name")])
async def test_connect_whose_input_ends_at_once_tells_the_refusal(code: str, fix: str) -> None:
    """The input ends before the CP answers the hello: the refusal was never heard (the logoff
    closed the connection first) and the exit status was 0. Now the answer is waited for."""
    inp = EndsAt("")

    async def refuse_once_the_input_ended(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # its hello begins
        await wait_until(inp.ended.is_set, 10, "the end of input")
        writer.write(encode({"t": "error", "code": code, "msg": "no such terminal"}))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse_once_the_input_ended, "127.0.0.1", 0)
    out = io.StringIO()
    try:
        status = await asyncio.wait_for(interactive("ZZZ", "127.0.0.1", server.sockets[0].getsockname()[1], inp=inp, out=out), 20)
    finally:
        server.close()
    text = out.getvalue()
    said = [ln for ln in text.splitlines() if ln.startswith("giving up:")]
    assert status == 1 and len(said) == 1, text
    assert f"the CP refused this terminal ({code}): no such terminal; " in said[0] and fix in said[0], said


# --------------------------------------------------------------------------- load (in process)


async def test_load_gives_up_at_once_when_the_cp_refuses_every_terminal() -> None:
    cp = FakeCP(known={"T00001"})
    await cp.start()
    t0 = time.monotonic()
    try:
        r = await asyncio.wait_for(run_load(("127.0.0.1", cp.port), terminals=3, rate=30, duration=1, prefix="ZZ", connect_timeout=60), 20)
    finally:
        await cp.stop()
    assert time.monotonic() - t0 < 10
    assert r.exit_status == 2 and r.welcomed == 0 and r.sent == 0
    assert r.gave_up is not None and "refused every terminal (unknown_terminal" in r.gave_up and "--prefix" in r.gave_up, r.gave_up
    assert f"FAILED: no terminal was ever welcomed: {r.gave_up}" in format_table(r)
    assert r.to_dict()["never_welcomed"] == r.gave_up


async def test_load_gives_up_on_a_port_that_is_no_terminal_port() -> None:
    """A CP's host or admin port answers with a challenge: a protocol error at every try."""

    async def challenge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(encode({"t": "challenge", "nonce": b"0" * 16, "server": "cp"}))
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(challenge, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        r = await asyncio.wait_for(run_load(("127.0.0.1", port), terminals=2, rate=20, duration=1, connect_timeout=60), 20)
    finally:
        server.close()
    assert r.exit_status == 2 and r.gave_up is not None, r.to_dict()
    assert r.gave_up.startswith(f"127.0.0.1:{port} does not speak the terminal link (unknown message type 'challenge')"), r.gave_up
    assert "terminal_listen" in r.gave_up


async def test_load_with_tls_gives_up_on_a_plain_port(ca: str) -> None:
    cp = FakeCP()
    await cp.start()
    try:
        r = await asyncio.wait_for(run_load(("127.0.0.1", cp.port), terminals=2, rate=20, duration=1, connect_timeout=60, ssl=tls_context(ca)), 20)
    finally:
        await cp.stop()
    assert r.exit_status == 2 and r.gave_up is not None, r.to_dict()
    assert "does not speak TLS (wrong version number): leave out --tls" in r.gave_up, r.gave_up
    assert not cp.terms  # (no hello reached it)


async def test_load_with_cp_name_is_served_by_the_cp_and_gives_up_on_a_certificate_of_another_daemon(tls_cp: Proc, ca: str) -> None:
    """--cp-name: the CP's certificate must name it. Its own name: logged on as without it (no
    host here: nothing is answered). Another daemon's name (a host of the same CA answering at
    that address, as the check sees it): the run gives up at once saying the certificate does
    not name it, not 'give --ca the CA'."""
    host, port = tls_cp.info["terminal"].rsplit(":", 1)
    ok = await asyncio.wait_for(
        run_load((host, int(port)), terminals=2, rate=20, duration=0.3, settle=0.2, connect_timeout=1, ssl=tls_context(ca, cp_name="cp")), 30
    )
    assert ok.connected and ok.gave_up is None, ok.to_dict()  # (welcomed; no session: no host)
    r = await asyncio.wait_for(
        run_load((host, int(port)), terminals=2, rate=20, duration=1, connect_timeout=60, ssl=tls_context(ca, cp_name="host-a")), 20
    )
    assert r.exit_status == 2 and r.gave_up is not None, r.to_dict()
    assert "the CP's certificate does not name the CP of --cp-name (Hostname mismatch" in r.gave_up, r.gave_up
    assert "give --cp-name the CP's [cp] name" in r.gave_up, r.gave_up
    # an address given for the name (the certificate names cp, not its address): the same words
    r = await asyncio.wait_for(
        run_load((host, int(port)), terminals=2, rate=20, duration=1, connect_timeout=60, ssl=tls_context(ca, cp_name="127.0.0.1")), 20
    )
    assert r.gave_up is not None and "does not name the CP of --cp-name (IP address mismatch" in r.gave_up, r.to_dict()


def test_cp_name_goes_with_tls() -> None:
    import click

    from hsb.term.main import _ssl

    with pytest.raises(click.UsageError, match="--cp-name go with --tls"):
        _ssl(False, None, None, None, "cp")


async def test_load_keeps_retrying_what_a_cp_restart_looks_like() -> None:
    """Refused connects, then connections reset or closed after their hello: a CP restarting.
    None of it gives up: the run connects once the CP is back, and is OK."""
    port = free_port()
    snaps: list[dict[str, Any]] = []
    task = asyncio.ensure_future(
        run_load(
            ("127.0.0.1", port), terminals=4, rate=40, duration=0.3, settle=3, expect_disconnects=True, progress=snaps.append, progress_interval=0.02
        )
    )
    cuts = 0

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal cuts
        await reader.read(1)
        cuts += 1
        if cuts % 2:
            writer.transport.abort()  # a reset
        else:
            writer.close()  # closed after the hello, no word why

    cp = FakeCP()
    try:
        await wait_until(lambda: snaps and snaps[-1]["connect_failures"] >= 5, 10, "refused connects")
        server = await asyncio.start_server(cut, "127.0.0.1", port)
        try:
            await wait_until(lambda: cuts >= 12, 10, "connections cut")
        finally:
            server.close()
            await server.wait_closed()
        await cp.start(port)
        r = await asyncio.wait_for(task, 20)
    finally:
        task.cancel()
        await cp.stop()
    assert r.gave_up is None and r.welcomed == 4 and r.ok, r.failures
    assert r.logon_drops > 0 and r.connect_failures > 0


# --------------------------------------------------------------------------- the CLI against hsbcpd


async def _run(*args: str, stdin: bytes | None = None, within: float = 20) -> tuple[int, str, str]:
    proc = await spawn(*args, stdin=stdin is not None)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), within)
    finally:
        await reap(proc)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize(
    ("name", "port", "said"),
    [
        (
            "ZZZ",
            "terminal",
            "giving up: the CP refused this terminal (unknown_terminal): terminal 'ZZZ' is not in the CP's terminal table; connect as",
        ),
        ("", "terminal", "giving up: the CP refused this terminal (bad_hello): hello needs a non-empty string 'terminal'; give the terminal's name"),
        ("T00001", "host", "does not speak the terminal link (unknown message type 'challenge'): --cp takes the CP's terminal_listen address"),
    ],
    ids=["unknown", "empty", "host-port"],
)
async def test_cli_connect_with_no_input_tells_why_it_cannot_log_on(cp: Proc, name: str, port: str, said: str) -> None:
    """`hsbterm connect ZZZ --cp … < /dev/null`: a traceback (RuntimeError: the handler is
    closed) in most runs, and never the refusal."""
    code, out, err = await _run("connect", name, "--cp", cp.info[port])
    assert "Traceback" not in err and err == "", err
    assert code == 1 and said in out and out.count("giving up:") == 1, out


@pytest.mark.parametrize("stdin", [None, b"balance?\n"], ids=["no-input", "a-line"])
async def test_cli_connect_that_never_logged_on_exits_nonzero(stdin: bytes | None) -> None:
    """`hsbterm connect T00001 --cp <a closed port> < /dev/null`: nothing listens there, nothing
    was outstanding, no refusal: it exited 0, and a script checking a terminal this way saw
    success against a dead CP. It says why it never logged on and exits 2 (as `load` that
    connected nothing)."""
    port = free_port()  # (the OS's free port, closed again: nothing listens there)
    code, out, err = await _run("connect", "T00001", "--cp", f"127.0.0.1:{port}", "--linger", "0.5", stdin=stdin)
    assert "Traceback" not in err and err == "", err
    said = [line for line in out.splitlines() if line.startswith("error: never logged on")]
    assert code == 2 and len(said) == 1, out
    assert re.fullmatch(
        r"error: never logged on: no connect got through \(\d+ failed, the last ConnectionRefusedError\):"
        rf" is the CP running, and --cp its terminal_listen address \(127\.0\.0\.1:{port}\)\?",
        said[0],
    ), said


async def test_cli_connect_with_invalid_input_and_no_logon_exits_1() -> None:
    """An invalid input line exits 1 (docs/operations.md §17); with no CP there as well, the
    never-logged-on branch overwrote that with 2. Both are said, and the status stays 1."""
    port = free_port()
    code, out, err = await _run("connect", "T00001", "--cp", f"127.0.0.1:{port}", "--linger", "0.5", stdin=b"balance?\n\xff\xfe\n")
    assert "Traceback" not in err and err == "", err
    assert "error: input is not valid" in out and out.count("error: never logged on") == 1, out
    assert code == 1, out


async def test_cli_connect_with_tls_against_a_plain_cp_gives_up(cp: Proc, ca: str) -> None:
    """It retried `SSLError` for ever and exited 0 at the end of input."""
    code, out, err = await _run("connect", "T00001", "--cp", cp.info["terminal"], "--tls", "--ca", ca)
    assert code == 1 and err == "", err
    assert f"giving up: TLS with {cp.info['terminal']} failed: it does not speak TLS (wrong version number): leave out --tls" in out, out


@pytest.mark.parametrize(
    ("port", "extra", "cause"),
    [
        (
            "terminal",
            ["--prefix", "ZZ"],
            "refused every terminal (unknown_terminal: terminal 'ZZ00001' is not in the CP's terminal table): name terminals",
        ),
        ("host", [], "does not speak the terminal link (unknown message type 'challenge'): --cp takes the CP's terminal_listen address"),
        ("terminal", ["--tls"], "failed: it does not speak TLS (wrong version number): leave out --tls"),
    ],
    ids=["unknown-names", "host-port", "tls"],
)
async def test_cli_load_gives_up_at_once_naming_the_cause(cp: Proc, ca: str, port: str, extra: list[str], cause: str) -> None:
    """Each waited out the 60 s connect timeout, then said only `no terminal was ever welcomed
    (nothing connected to a CP)`."""
    if "--tls" in extra:
        extra = [*extra, "--ca", ca]
    t0 = time.monotonic()
    code, out, err = await _run("load", "--cp", cp.info[port], "-n", "2", "--rate", "10", "--duration", "1", *extra)
    assert time.monotonic() - t0 < 15
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("hsbterm: giving up, no terminal was welcomed: ") and cause in lines[0], err
    verdict = next(ln for ln in out.splitlines() if ln.strip().startswith("verdict"))
    assert "FAILED: no terminal was ever welcomed: " in verdict and cause in verdict, out


TLS_CAUSE = "speaks TLS on its terminal port (tls_required): give the terminal the CP's TLS settings: --tls --ca FILE"


async def test_cli_load_without_tls_against_a_tls_terminal_port_gives_up_at_once(tls_cp: Proc) -> None:
    """The CP closed after the plaintext hello without a word: taken for a CP restart, the run
    connected again and again until --connect-timeout, then said only that nothing connected.
    The CP now answers a plaintext hello with error tls_required; the run stops at once."""
    t0 = time.monotonic()
    code, out, err = await _run(
        "load", "--cp", tls_cp.info["terminal"], "-n", "2", "--rate", "10", "--duration", "1", "--connect-timeout", "30", within=20
    )
    assert time.monotonic() - t0 < 10
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("hsbterm: giving up, no terminal was welcomed: "), err
    assert f"the CP at {tls_cp.info['terminal']} {TLS_CAUSE}" in lines[0], err


async def test_cli_connect_without_tls_against_a_tls_terminal_port_gives_up(tls_cp: Proc) -> None:
    t0 = time.monotonic()
    code, out, err = await _run("connect", "T00001", "--cp", tls_cp.info["terminal"], "--linger", "15")
    assert time.monotonic() - t0 < 10
    assert code == 1 and err == "", err
    assert f"giving up: {tls_cp.info['terminal']} {TLS_CAUSE}" in out and out.count("giving up:") == 1, out


# --------------------------------------------------------------------------- the terminal's own certificate refused


@pytest.fixture(scope="module")
def refused(ca: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str, str]]:
    """T00001 certificates the TLS CP refuses: (cert, key, the CP's alert), expired (of its CA)
    and of another CA."""
    import datetime as dt
    from pathlib import Path

    from hsb.ctl.tls_cmd import make_ca_and_certs

    d = Path(ca).parent  # (its CA: ca.pem and ca.key)
    make_ca_and_certs(d, ["T00001"], days=1, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    other = tmp_path_factory.mktemp("other-ca")
    make_ca_and_certs(other, ["T00001"])
    return {
        "expired": (str(d / "T00001.pem"), str(d / "T00001.key"), "sslv3 alert certificate expired"),
        "other-ca": (str(other / "T00001.pem"), str(other / "T00001.key"), "tlsv1 alert unknown ca"),
    }


@pytest.mark.parametrize("which", ["expired", "other-ca"])
async def test_cli_connect_whose_own_certificate_is_refused_gives_up(
    tls_cp: Proc, ca: str, refused: dict[str, tuple[str, str, str]], which: str
) -> None:
    """Under TLS 1.3 the terminal's handshake ends before the CP checks its certificate: the
    hello went out, the CP's alert closed the connection after it, and that was taken for a drop
    while logging on: retried ~3 times a second for ever, `giving up:` never said. It is the
    connect failure it is: one line naming the certificate and the fix, exit 1, stdin still open."""
    cert, key, alert = refused[which]
    target = tls_cp.info["terminal"]
    proc = await spawn("connect", "T00001", "--cp", target, "--tls", "--ca", ca, "--cert", cert, "--key", key, stdin=True)
    try:
        # (a bound for a start and one refusal on a loaded machine; the fault retried for ever)
        out = (await asyncio.wait_for(proc.stdout.read(), 20)).decode()  # type: ignore[union-attr]
        code = await asyncio.wait_for(proc.wait(), 5)
        err = (await proc.stderr.read()).decode()  # type: ignore[union-attr]
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        await reap(proc)
    assert code == 1 and err == "", (code, err, out)
    said = f"giving up: TLS with {target} failed: the CP refused this terminal's certificate {cert} ({alert}): "
    assert said in out and out.count("giving up:") == 1, out
    assert ("make a new one" if which == "expired" else "--cert must be issued by the CA of the CP's [tls] terminal_ca_file") in out, out


async def test_cli_load_whose_own_certificate_is_refused_gives_up_at_once(tls_cp: Proc, ca: str, refused: dict[str, tuple[str, str, str]]) -> None:
    """The same for a run: it retried until --connect-timeout, then said nothing connected."""
    cert, key, alert = refused["expired"]
    target = tls_cp.info["terminal"]
    t0 = time.monotonic()
    code, out, err = await _run(
        "load", "--cp", target, "-n", "1", "--rate", "10", "--duration", "1", "--connect-timeout", "30",
        "--tls", "--ca", ca, "--cert", cert, "--key", key, within=20,
    )  # fmt: skip
    assert time.monotonic() - t0 < 10
    lines = err.splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(
        f"hsbterm: giving up, no terminal was welcomed: TLS with {target} failed: the CP refused this terminal's certificate {cert} ({alert})"
    ), err
    # counted as the failed connects they are (no drop while logging on)
    assert re.search(r"disconnects\s+0 \(failed connects [1-9]", out), out


def test_connect_and_load_say_why_they_never_logged_on_in_the_same_words() -> None:
    """`hsbterm connect` that never logged on and a load whose terminals never did say the same
    line for the same cause (the connect's naming the address, the load's line names it before):
    the connect's was a near-copy of the load report's, and a closed connection's fix said
    otherwise ("is the CP running" for a CP that took the hello)."""
    import io

    from hsb.term.client import TerminalClient
    from hsb.term.interactive import Printer, _not_logged_on
    from hsb.term.report import LoadReport

    target = "127.0.0.1:7000"
    p = Printer(io.StringIO(), target)
    c = TerminalClient("T1", p)
    c.logon_drops = 3
    load = LoadReport(terminals=1, logon_drops=3)
    assert _not_logged_on(p, c, 2.0) == load.never_welcomed.replace("address?", f"address ({target})?")
    p.unreachable, p.connect_failures, p.connect_error = True, 4, "ConnectionRefusedError"
    load = LoadReport(terminals=1, connect_failures=4, connect_error="ConnectionRefusedError")
    assert _not_logged_on(p, c, 2.0) == load.never_welcomed.replace("address?", f"address ({target})?")
