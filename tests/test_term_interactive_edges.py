"""`hsbterm connect`'s parts (hsb.term.interactive) in process, at the edges the end-to-end tests
do not reach: what its printer says and tracks, when it stops waiting for the logon, and which
error frames its verdict counts (found by a mutation audit of the module)."""

from __future__ import annotations

import asyncio
import io
from types import SimpleNamespace
from typing import Any, Literal

import pytest

from hsb.term.client import WELCOMED, TerminalClient
from hsb.term.interactive import BadLine, Printer, _await_logon, _giving_up, _read_lines, interactive, session_failures, show
from hsb.term.listener import Listener
from tests.support.fakecp import FakeCP

pytestmark = pytest.mark.timeout(30)


def _printer() -> tuple[Printer, io.StringIO]:
    out = io.StringIO()
    return Printer(out, "127.0.0.1:1"), out


def test_show_decodes_utf8_bytes_and_shows_other_bytes_as_a_literal() -> None:
    assert show(b"caf\xc3\xa9") == "café"
    assert show(bytearray(b"ok")) == "ok"
    assert show(b"\xff") == repr(b"\xff")
    assert show({"a": 1}) == "{'a': 1}"


def test_the_first_fatal_cause_is_the_one_told() -> None:
    """A refusal followed by another fatal event: the first is the reason it gave up."""
    p, _ = _printer()
    p.on_error(None, "unknown_terminal", "no such terminal")  # type: ignore[arg-type]
    p.on_error(None, "message_too_large", "too big")  # type: ignore[arg-type]
    assert (p.fatal_code, p.fatal_msg) == ("unknown_terminal", "no such terminal")


def test_a_message_sent_before_the_logon_is_said_to_be_queued() -> None:
    p, out = _printer()
    p.on_sent(SimpleNamespace(state="connecting"), 7, 0.0)  # type: ignore[arg-type]
    p.on_sent(SimpleNamespace(state=WELCOMED), 8, 0.0)  # type: ignore[arg-type]
    assert out.getvalue().splitlines() == ["sent id=7 (queued until logged on)", "sent id=8"]


def test_messages_never_written_before_are_not_said_to_be_resent() -> None:
    """After a welcome, what goes out again is said as resent; what was typed before the logon
    (never on a connection) is said as sent now, queued until logged on."""
    p, out = _printer()
    c: Any = SimpleNamespace()
    p.on_resent(c, 2, 2)
    p.on_resent(c, 3, 0)
    p.on_resent(c, 3, 1)
    assert out.getvalue().splitlines() == [
        "sent 2 messages queued until logged on",
        "resent 3 unacknowledged messages",
        "resent 2 unacknowledged messages; sent 1 message queued until logged on",
    ]


async def test_lines_typed_before_the_logon_go_as_first_sends(fake: FakeCP) -> None:
    """Input there before the welcome: its lines are sent once logged on, and not said to be
    resent (they were never on a connection)."""
    out = io.StringIO()
    status = await asyncio.wait_for(interactive("T00063", "127.0.0.1", fake.port, linger=5, inp=io.StringIO("one\ntwo\n"), out=out), 20)
    said = out.getvalue()
    assert status == 0, said
    queued = said.count(" (queued until logged on)")
    assert queued >= 1 and "resent" not in said, said
    assert f"sent {queued} message{'' if queued == 1 else 's'} queued until logged on" in said, said


def test_an_already_connected_refusal_met_on_a_reconnect_is_no_broken_promise() -> None:
    """`already_connected` is a race a reconnect meets and retries past (RECONNECT_RACES): it does
    not fail the session, while another error frame does."""
    c = TerminalClient("T00001", Listener(), base=1000)
    assert session_failures(c, {"already_connected": 2}) == []
    assert session_failures(c, {"id_reused": 1}) == ["CP errors: id_reused x1"]


async def test_the_logon_wait_ends_when_the_welcome_comes() -> None:
    """End of input before the logon waits for the CP's answer: a welcome that comes while it
    waits ends the wait at once, not after the whole timeout."""
    p, _ = _printer()
    c: Any = SimpleNamespace(name="T00001", welcomed_at=None)

    class WelcomedWhileWaiting(asyncio.Event):
        async def wait(self) -> Literal[True]:
            if c.welcomed_at is None:
                c.welcomed_at = 1.0
                p.on_welcome(c, True)
            return await super().wait()

    p.changed = WelcomedWhileWaiting()
    await asyncio.wait_for(_await_logon(c, p, 60.0), 5)
    assert c.welcomed_at == 1.0


def test_a_reply_is_printed_with_its_latency_and_a_second_one_with_its_kind() -> None:
    """The first reply shows its latency; a second one is named (DUPLICATE), not timed; the
    printer is drained once nothing is outstanding."""
    p, out = _printer()
    c: Any = SimpleNamespace(outstanding={8: b"x"})
    p.on_reply(c, 7, b"balance 10", 0.0125, "first")
    assert not p.drained.is_set()
    c.outstanding = {}
    p.on_reply(c, 8, b"ok", None, "first")
    assert p.drained.is_set()
    p.on_reply(c, 7, b"balance 10", 0.5, "duplicate")
    assert out.getvalue().splitlines() == ["reply id=7: balance 10 (12.5 ms)", "reply id=8: ok", "reply id=7: balance 10 (DUPLICATE)"]


def test_each_error_frame_of_the_cp_is_counted() -> None:
    p, _ = _printer()
    for _ in range(2):
        p.on_error(None, "id_reused", "msg 5: id reused")  # type: ignore[arg-type]
    p.on_error(None, "already_connected", "T00001 is connected")  # type: ignore[arg-type]
    assert p.errors == {"id_reused": 2, "already_connected": 1}


@pytest.mark.parametrize(
    "answered",
    [
        lambda p, c: p.on_error(c, "already_connected", "T00001 is connected"),
        lambda p, c: p.on_disconnect(c, ConnectionResetError(), 0.1, False),
        lambda p, c: p.on_welcome(c, True),
    ],
    ids=["error", "disconnect", "welcome"],
)
def test_a_cp_that_answers_after_a_failed_connect_is_reachable_again(answered: Any) -> None:
    """A failed connect makes the CP unreachable (the logon wait stops, the reason given is that no
    connect got through); a later connect that something answered on, even with an error or a
    close, undoes it: what is told is then that no welcome came."""
    p, _ = _printer()
    c: Any = SimpleNamespace(name="T00001", welcomed_at=None, logon_drops=0)
    p.on_connect_failed(c, ConnectionRefusedError(), 0.1)
    assert p.unreachable
    answered(p, c)
    assert not p.unreachable


def test_the_first_hopeless_cause_is_the_one_told() -> None:
    p, _ = _printer()
    p._hopeless(None)
    assert not p.fatal.is_set()
    p._hopeless("the first cause")
    p._hopeless("a later cause")
    assert p.fatal_code == "hopeless" and _giving_up(p) == "giving up: the first cause"


async def test_input_with_a_byte_layer_and_no_errors_setting_is_decoded_strictly() -> None:
    """A stream with a byte layer but no `errors` of its own is decoded strictly: an undecodable
    line ends the input there (it is not sent with replacement characters)."""
    queue: asyncio.Queue[str | BadLine | None] = asyncio.Queue()
    stream: Any = SimpleNamespace(buffer=io.BytesIO(b"one\n\xff two\nthree\n"), encoding="utf-8")
    _read_lines(stream, asyncio.get_running_loop(), queue)
    got = [await asyncio.wait_for(queue.get(), 5) for _ in range(2)]
    assert got == ["one\n", BadLine(2, "UTF-8")]


async def test_blank_lines_are_skipped_and_a_line_is_sent_without_its_line_ending(fake: FakeCP) -> None:
    """Lines of nothing but white space are not sent; a line is sent without its line ending,
    a Windows one (CR LF) too."""
    out = io.StringIO()
    inp = io.StringIO("  \n\t\n\nbalance?\r\nwithdraw 20\n")
    status = await asyncio.wait_for(interactive("T00061", "127.0.0.1", fake.port, linger=5, inp=inp, out=out), 20)
    said = out.getvalue()
    assert status == 0, said
    assert said.count("sent id=") == 2, said
    replies = sorted(line.split(": ", 1)[1] for line in said.split("\n") if line.startswith("reply id="))
    assert [r.rsplit(" (", 1)[0] for r in replies] == ["balance?", "withdraw 20"], said


async def test_no_linger_still_waits_for_the_logon_that_is_under_way(fake: FakeCP) -> None:
    """Input that ends at once with `linger` 0: the logon under way is still waited for (BYE_WAIT
    at least), so a CP that welcomes the terminal is no `never logged on`."""
    out = io.StringIO()
    status = await asyncio.wait_for(interactive("T00062", "127.0.0.1", fake.port, linger=0, inp=io.StringIO(""), out=out), 20)
    assert status == 0 and "welcome T00062" in out.getvalue() and "never logged on" not in out.getvalue(), out.getvalue()


async def test_a_cp_that_does_not_close_after_the_bye_is_cut_off(fake: FakeCP, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CP closes the connection after the bye; one that does not within BYE_WAIT has it
    aborted: the terminal never leaves a connection open behind it."""
    import hsb.term.interactive as mod

    made: list[TerminalClient] = []

    class Recorded(TerminalClient):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            made.append(self)

    handle = fake.handle

    def deaf_to_bye(conn: Any, m: dict[str, Any]) -> None:
        if m.get("t") != "bye":
            handle(conn, m)

    monkeypatch.setattr(fake, "handle", deaf_to_bye)
    monkeypatch.setattr(mod, "TerminalClient", Recorded)
    monkeypatch.setattr(mod, "BYE_WAIT", 0.2)
    out = io.StringIO()
    status = await asyncio.wait_for(interactive("T00063", "127.0.0.1", fake.port, linger=5, inp=io.StringIO("balance?\n"), out=out), 20)
    assert status == 0, out.getvalue()
    [c] = made
    assert c.transport is None or c.transport.is_closing()


async def test_the_logon_wait_ends_at_once_when_nothing_answers_there() -> None:
    """The last connect failed (nothing listens there): there is no answer to wait for."""
    p, _ = _printer()
    c: Any = SimpleNamespace(name="T00001", welcomed_at=None, logon_drops=0)
    p.on_connect_failed(c, ConnectionRefusedError(), 0.1)
    await asyncio.wait_for(_await_logon(c, p, 60.0), 5)
    assert c.welcomed_at is None


async def test_the_logon_wait_sleeps_until_something_happens() -> None:
    """An event before the wait (a connection closed before the logon) does not make the wait
    spin: it waits once, for what happens next (here the welcome)."""
    p, _ = _printer()
    c: Any = SimpleNamespace(name="T00001", welcomed_at=None)
    waits = 0

    class Counted(asyncio.Event):
        async def wait(self) -> Literal[True]:
            nonlocal waits
            waits += 1
            return await super().wait()

    def welcome() -> None:
        c.welcomed_at = 1.0
        p.on_welcome(c, True)

    p.changed = Counted()
    p.on_disconnect(c, None, 0.1, False)  # (it happened before: changed is set)
    asyncio.get_running_loop().call_later(0.05, welcome)
    await asyncio.wait_for(_await_logon(c, p, 60.0), 5)
    assert c.welcomed_at == 1.0 and waits == 1, waits
