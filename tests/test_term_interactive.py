"""`hsbterm connect` (hsb.term.interactive) against the fake CP of tests/support/fakecp.py: its exit
status follows the session's verdict, and input that is not valid text ends it with an error."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from typing import TextIO

import pytest

from hsb.term.interactive import interactive
from tests.support.fakecp import FakeCP

pytestmark = pytest.mark.timeout(30)


async def _connect(fake: FakeCP, name: str, inp: TextIO) -> tuple[int, str]:
    out = io.StringIO()
    status = await asyncio.wait_for(interactive(name, "127.0.0.1", fake.port, linger=5, inp=inp, out=out), 20)
    return status, out.getvalue()


@pytest.mark.parametrize(
    ("knob", "said"),
    [
        ("duplicate", "duplicates: 1 reply beyond the first"),
        ("reply_before_ack", "unexpected: 1 reply to ids never sent or not yet acknowledged (1 before their ack)"),
    ],
)
async def test_connect_exits_nonzero_when_the_cp_breaks_a_promise(fake: FakeCP, knob: str, said: str) -> None:
    """Every message answered, but one twice (or before its ack): the session's verdict fails, so
    the exit status is 1 (it was 0: only a message without a reply counted)."""
    setattr(fake, knob, lambda name, seq: seq == 0)
    status, out = await _connect(fake, "T00051", io.StringIO("balance?\nwithdraw 20\n"))
    assert status == 1 and f"FAILED: {said}" in out and "without a reply" not in out, out
    assert out.endswith("bye\n")
    setattr(fake, knob, lambda name, seq: False)
    status, out = await _connect(fake, "T00052", io.StringIO("balance?\nwithdraw 20\n"))
    assert status == 0 and "FAILED" not in out, out


async def test_connect_exits_nonzero_when_the_cp_sent_an_error_frame(fake: FakeCP) -> None:
    """An error frame of the CP (an id it says was reused, say) is a broken promise, as in the
    load's verdict, even when every message was answered afterwards."""
    fake.error_after = lambda name, seq: "id_reused" if seq == 0 else None
    status, out = await _connect(fake, "T00054", io.StringIO("balance?\nwithdraw 20\n"))
    assert status == 1 and "FAILED: CP errors: id_reused x1" in out, out


async def test_connect_closed_for_sitting_idle_is_no_failure(fake: FakeCP) -> None:
    """A CP with terminal_idle_timeout closes a person who sat idle: its own setting, not a
    broken promise; the terminal reconnects and the session goes on (exit 0)."""
    fake.error_after = lambda name, seq: "idle_timeout" if seq == 1 else None  # (after the last reply: the fake keeps none for a reconnect)
    status, out = await _connect(fake, "T00055", io.StringIO("balance?\nwithdraw 20\n"))
    assert status == 0 and "FAILED" not in out, out


@pytest.mark.parametrize(
    "inp",
    [
        lambda: io.TextIOWrapper(io.BytesIO(b"balance?\n\xff\nwithdraw 20\n"), encoding="utf-8"),
        lambda: io.TextIOWrapper(io.BytesIO(b"balance?\n\xff\nwithdraw 20\n"), encoding="utf-8", errors="surrogateescape"),
        lambda: io.StringIO("balance?\n\udcff\nwithdraw 20\n"),
    ],
    ids=["strict", "surrogateescape", "text"],
)
async def test_connect_input_that_is_not_utf8_is_an_error_not_the_end_of_input(fake: FakeCP, inp: Callable[[], TextIO]) -> None:
    """A line that is not valid UTF-8 was taken for the end of input (exit 0, the lines after it
    silently not sent), or, from a surrogateescape stdin, recorded as sent and then crashed the
    terminal on encoding. It is an error naming the line; what came before it is sent and waited for."""
    status, out = await _connect(fake, "T00053", inp())
    assert status == 1 and "error: input is not valid UTF-8 at line 2; it and the lines after it were not sent" in out, out
    assert "reply id=" in out and ": balance?" in out and "without a reply" not in out, out
    assert len(fake.deliveries) == 1  # "balance?" only


async def test_connect_fed_by_a_pipe_exits_nonzero_when_the_cp_refuses_the_terminal() -> None:
    """`echo hi | hsbterm connect NOSUCH`: the input ends before the CP's answer comes, and its
    refusal (unknown_terminal) came while the end of input waited for replies: it exited 0, with
    no word of giving up, though the CP had refused the terminal."""
    from hsb.wire.framing import encode

    async def refuse_late(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # its hello begins
        await asyncio.sleep(0.5)  # the input (one line) has ended by now
        writer.write(encode({"t": "error", "code": "unknown_terminal", "msg": "no terminal T09999"}))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse_late, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        out = io.StringIO()
        status = await asyncio.wait_for(interactive("T09999", "127.0.0.1", port, linger=5, inp=io.StringIO("hi\n"), out=out), 20)
    finally:
        server.close()
    text = out.getvalue()
    assert status == 1 and "giving up: the CP refused this terminal (unknown_terminal)" in text, text


async def test_connect_and_load_say_a_broken_promise_in_the_same_words() -> None:
    """One terminal's session breaks every promise `hsbterm connect` judges: a reply twice, one
    to an id never sent, one before its ack, an ack of an id never sent, a welcome that forgot
    an ack, an error frame, a frame that breaks the protocol. Each line connect says is the load
    verdict's own for the same terminal (connect said some otherwise: the unexpected replies in
    two lines, the acks in other words)."""
    from hsb.term.client import TerminalClient
    from hsb.term.interactive import session_failures
    from hsb.term.load import _report
    from hsb.term.loadstats import LoadStats
    from hsb.wire.framing import encode
    from tests.support.transports import RecordingTransport

    stats = LoadStats(1)
    stats.counting = True
    c = TerminalClient("T1", stats, base=1000, keep_payloads=True, keepalive=0)

    def logon(last_acked: int, *frames: dict[str, object]) -> None:
        c.connection_made(RecordingTransport("cp"))  # type: ignore[arg-type]
        c.data_received(b"".join(encode(m) for m in ({"t": "welcome", "terminal": "T1", "last_acked": last_acked}, *frames)))
        c.connection_lost(None)

    a, b = c.submit("x"), c.submit("y")
    logon(
        0,
        {"t": "ack", "id": a},
        {"t": "reply", "id": a, "data": "x"},
        {"t": "reply", "id": a, "data": "x"},  # a duplicate
        {"t": "reply", "id": b, "data": "y"},  # before its ack
        {"t": "ack", "id": b},
        {"t": "reply", "id": 1500, "data": "?"},  # an id never sent
        {"t": "ack", "id": 1600},  # an ack of one
    )
    logon(a)  # below b, acknowledged before
    logon(b, {"t": "error", "code": "id_reused", "msg": "?"})
    logon(b, {"t": "reply"})  # no id: a protocol error
    said = session_failures(c, dict(stats.errors))
    assert [s.split(":")[0] for s in said] == ["duplicates", "unexpected", "unexpected acks", "acks forgotten", "protocol errors", "CP errors"], said
    load = _report([c], stats, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, []).failures
    assert [s for s in said if s not in load] == [], load
