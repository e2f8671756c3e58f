"""A simulated terminal's logon (hsb/term/logon.py, docs/protocol.md §1 `welcome`), fed frame by
frame to a real TerminalClient (tests/support/termfeed.py), each test naming a behaviour that a
mutation audit of the module found no test for: a second welcome on one connection, or one
whose last_acked is a boolean, is a protocol error; only a terminal's first welcome ever counts
it welcomed and sets when it logged on; a welcome acknowledging an id that is not this
terminal's (another terminal's, in an id space shared by stride) is an unexpected ack though it
is below what this one sent; the sends owed after a welcome are told apart (written before, or
never); a failed connect leaves the terminal down, so the connector connects it again, and one
never logged on counts no CP absence.

The audit (41 mutants of logon.py, listed in this file's commit message): 29 killed by the tests
before, 8 more by these, 4 equivalent: `dropped` left set by a welcome (every welcome after the
first follows the loss of the welcomed connection before it, which sets it again; nothing else
reads it), `away_counted` left set by a welcome (every path from a welcome to the next failed
connect passes that connection's loss, which clears it), `last_error` left set (read by no
code), the owed sends' check of a transport (a welcome comes through data_received: the
connection's transport is set)."""

from __future__ import annotations

import pytest

from hsb.term.client import TerminalClient
from hsb.term.loadstats import LoadStats
from tests.support.termfeed import BASE, client, connect, feed

pytestmark = pytest.mark.timeout(30)


def test_a_second_welcome_on_one_connection_is_a_protocol_error() -> None:
    """The CP welcomes a connection once (docs/protocol.md §1): a second welcome on the same
    connection is a protocol error of the CP's, counted, and the terminal closes the connection
    with an `error` (not taken as a new logon, its checks of what the CP holds made again)."""
    c, stats = client()
    tr = c.transport
    assert tr is not None and c.protocol_errors == 0
    feed(c, {"t": "welcome", "terminal": c.name, "last_acked": 0})
    assert c.protocol_errors == 1 and stats.protocol_errors == 1
    assert tr.is_closing()
    assert [f["t"] for f in tr.frames()][-1] == "error"  # type: ignore[attr-defined]


def test_only_the_first_welcome_ever_counts_the_terminal_welcomed_and_sets_when(monkeypatch: pytest.MonkeyPatch) -> None:
    """A terminal logs on at 100.0 (its time to log on, `welcomed_at`), drops, and is welcomed
    again at 105.0: the run counts one terminal welcomed (the load waits for every terminal's
    first welcome, and `welcomed` is in its report), and its `welcomed_at` stays 100.0."""
    from hsb.term import logon

    now = [100.0]

    class Clock:
        def monotonic(self) -> float:
            return now[0]

    monkeypatch.setattr(logon, "time", Clock())
    stats = LoadStats(2)
    c = TerminalClient("T1", stats, base=BASE)
    connect(c)
    assert stats.welcomed == 1 and c.welcomed_at == 100.0
    c.connection_lost(None)
    now[0] = 105.0
    connect(c)
    assert stats.welcomed == 1 and not stats.all_welcomed.is_set()
    assert c.welcomed_at == 100.0


def test_a_welcome_acknowledging_another_terminals_id_below_this_ones_sends_is_unexpected() -> None:
    """Terminals of one load share the id space by stride (this one: 1000, 1002, 1004 ...). It
    sent 1000 and 1002; the CP's welcome says last_acked 1001, another terminal's id: a message
    this terminal never sent, an unexpected ack, though below its last sent id; its own 1002
    is sent again, 1000 taken as acknowledged."""
    stats = LoadStats(1)
    stats.counting = True
    c = TerminalClient("T1", stats, base=BASE, stride=2, check_data=True)
    connect(c)
    a, b = c.submit(), c.submit()
    assert (a, b) == (BASE, BASE + 2)
    c.connection_lost(None)
    tr = connect(c, last_acked=BASE + 1)
    assert c.unexpected_acks == 1
    assert [f["id"] for f in tr.frames() if f["t"] == "msg"] == [BASE + 2]
    assert c.index(BASE + 1) < 0 and not c.earlier_run


def test_the_sends_after_a_welcome_say_which_were_written_before_and_which_never_were() -> None:
    """The terminal wrote 1000 (its last write, `sent_upto`), lost the connection, and 1001 was
    submitted while away. The next welcome (the CP holds neither) owes both: the listener hears
    two sent after the welcome, one of them for the first time (1001; hsbterm's console says
    "resent 1 unacknowledged message; sent 1 message queued until logged on")."""
    from hsb.term.listener import Listener

    heard: list[tuple[int, int]] = []

    class Heard(Listener):
        def on_resent(self, c: TerminalClient, count: int, first: int = 0) -> None:
            heard.append((count, first))

    c = TerminalClient("T1", Heard(), base=BASE)
    connect(c)
    a = c.submit()
    assert c.sent_upto == a
    c.connection_lost(None)
    b = c.submit()
    tr = connect(c, last_acked=0)
    assert heard == [(2, 1)]
    assert [f["id"] for f in tr.frames() if f["t"] == "msg"] == [a, b]


async def test_a_terminal_whose_connect_failed_is_connected_again_by_the_connector() -> None:
    """A real terminal behind the connector: its first connect is refused, the second gets
    through. The failed connect leaves it down (the connector's workers and probe take only
    terminals that are down), so it is connected again and sends its hello; it counted no CP
    absence (never logged on)."""
    import asyncio

    from hsb.term.client import HELLO
    from hsb.term.connector import Connector
    from tests.support.procs import until
    from tests.support.transports import RecordingTransport

    loop = asyncio.get_running_loop()
    tries: list[int] = []
    transports: list[RecordingTransport] = []

    async def create_connection(factory: object, *a: object, **kw: object) -> tuple[RecordingTransport, TerminalClient]:
        t = factory()  # type: ignore[operator]
        tries.append(1)
        await asyncio.sleep(0)
        if len(tries) == 1:
            raise ConnectionRefusedError(111, "refused")
        tr = RecordingTransport("cp")
        transports.append(tr)
        t.connection_made(tr)
        return tr, t

    conn = Connector("127.0.0.1", 1, concurrency=1)
    real = loop.create_connection
    loop.create_connection = create_connection  # type: ignore[method-assign,assignment]
    c = TerminalClient("T1", LoadStats(1), base=BASE)
    try:
        conn.start()
        conn.attach(c)
        conn.schedule(c)
        await until(lambda: c.state == HELLO, 5, interval=0.005, what="connected again after a refused connect")
        assert len(tries) == 2 and [f["t"] for f in transports[0].frames()] == ["hello"]
        assert c.cp_reconnects == 0
    finally:
        await conn.close()
        loop.create_connection = real  # type: ignore[method-assign]


def test_a_welcome_whose_last_acked_is_a_boolean_is_a_protocol_error() -> None:
    """`last_acked` must be an integer: `true` (an int to Python, 1) is a protocol error of the
    CP's, not taken as id 1; the terminal is not logged on by it."""
    c = TerminalClient("T1", LoadStats(1), base=BASE)
    tr = connect(c, last_acked=True)
    assert c.protocol_errors == 1 and c.welcomed_at is None and c.unexpected_acks == 0
    assert tr.is_closing() and [f["t"] for f in tr.frames()] == ["hello", "error"]
