"""`hsbterm connect`: one interactive terminal on stdin/stdout.

Each line read from stdin is sent as a `msg` (blank lines are skipped); every
event from the CP is printed as one readable line on stdout. The terminal
reconnects and logs on again when its connection drops, re-sending what was
not acknowledged. End of input (Ctrl-D) waits up to `linger` seconds for the
replies still outstanding, then sends `bye` and exits.

A line that is not valid text in stdin's encoding (UTF-8, most often) ends the input there
with an error naming the line: it and the lines after it are not sent.

The exit status is 0 only if every message was answered and the session broke no promise of
the terminal link (as `hsbterm load`'s verdict has them, for one terminal): a reply
duplicated, to an id never sent or before its ack, an ack of an id never sent, or a frame
that broke the protocol makes it 1, as do an error frame of the CP (but `already_connected`,
which a reconnect meets and retries past, and `idle_timeout`, the CP's own setting), a message without a reply at the end, a refusal
by the CP and input that is not valid text.

A terminal that cannot log on for a reason no retry can change (hsb.term.hopeless: the CP
refused its name, the address is not a CP's terminal port, TLS fails there, its own
certificate is refused) gives up with one
line naming the cause and the fix, exit 1. End of input before the CP has answered the logon
waits for that answer (up to `linger`, at least BYE_WAIT seconds), so that a refusal is told.
One that never logged on otherwise (nothing listens there, or nothing answered its hello) says
why in one `error: never logged on` line with the fix, exit 2 (as `hsbterm load` that connected
nothing): a script checking a terminal this way must not see success against a dead CP.

stdin is read by a daemon thread, so a regular file, a pipe and a TTY all
work and a blocked read never holds up the exit.
"""

from __future__ import annotations

import asyncio
import codecs
import sys
import threading
from typing import Any, NamedTuple, TextIO

from hsb.plural import many
from hsb.term.client import WELCOMED, TerminalClient
from hsb.term.connector import Connector
from hsb.term.hopeless import PORT_REFUSALS, REFUSALS, Hopeless, check_cp, closed_after_hello, no_connect, refusal_fix, tls_failure
from hsb.term.listener import Listener
from hsb.term.report import (
    RECONNECT_RACES,
    acks_forgotten_failure,
    cp_errors_failure,
    duplicates_failure,
    protocol_errors_failure,
    unexpected_acks_failure,
    unexpected_failure,
)
from hsb.term.verdict import judge_marks
from hsb.wire.framing import ProtocolError

# Errors after which retrying is pointless for a person at the keyboard.
FATAL_ERRORS = REFUSALS | {"message_too_large"}  # (that message would be sent again, and again)
BYE_WAIT = 2.0
NOT_LOGGED_ON = 2  # the exit status of a terminal never welcomed (hsbterm load's "nothing connected")
# the CP closing on a setting of its own, no broken promise: a person who sat idle past
# [cp] terminal_idle_timeout is reconnected and goes on
OWN_SETTINGS = frozenset({"idle_timeout"})
# error frames that are no broken promise of the session (a refusal is told as the reason it gave up)
NOT_BROKEN = RECONNECT_RACES | FATAL_ERRORS | OWN_SETTINGS


def show(data: Any) -> str:
    """A reply's data as printable text."""
    if isinstance(data, (bytes, bytearray)):
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            return repr(bytes(data))
    return str(data)


class Printer(Listener):
    """Prints each event as one line; tracks when nothing is outstanding any more."""

    def __init__(self, out: TextIO, target: str, cert: str | None = None) -> None:
        self.out = out
        self.target = target
        self.drained = asyncio.Event()
        self.fatal: asyncio.Event = asyncio.Event()
        self.fatal_code: str | None = None
        self.fatal_msg = ""  # the CP's words with a refusal
        self.hopeless = Hopeless(target, 1, load=False, cert=cert)
        self.cause: str | None = None  # a port's fault no retry can change (fatal_code "hopeless")
        self.changed = asyncio.Event()  # anything happened to the connection
        self.unreachable = False  # the last connect failed (nothing there now: no answer to wait for)
        self.errors: dict[str, int] = {}  # the CP's error frames by code (a broken promise, as in the load's verdict)
        self.connect_failures = 0
        self.connect_error = ""  # the last failed connect's error

    def _fatal(self, code: str, msg: str = "") -> None:
        if not self.fatal.is_set():
            self.fatal_code, self.fatal_msg = code, msg
            self.fatal.set()

    def say(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()

    def on_sent(self, c: TerminalClient, msg_id: int, now: float) -> None:
        self.drained.clear()
        self.say(f"sent id={msg_id}" + ("" if c.state == WELCOMED else " (queued until logged on)"))

    def on_resent(self, c: TerminalClient, count: int, first: int = 0) -> None:
        # (those never written before go now for the first time: typed before the logon)
        said = [f"resent {many(count - first, 'unacknowledged message')}"] if count > first else []
        said += [f"sent {many(first, 'message')} queued until logged on"] if first else []
        self.say("; ".join(said))

    def on_welcome(self, c: TerminalClient, first: bool) -> None:
        self.say(f"welcome {c.name}" + ("" if first else " (logged on again)"))
        self.unreachable = False
        self.changed.set()

    def on_session(self, c: TerminalClient, state: str, epoch: int, reason: str | None, first_open: bool) -> None:
        self.say(f"session {state} epoch={epoch}" + (f" reason={reason}" if reason else ""))

    def on_ack(self, c: TerminalClient, msg_id: int, first: bool) -> None:
        self.say(f"ack id={msg_id}" + ("" if first else " (again)"))

    def on_reply(self, c: TerminalClient, msg_id: int, data: Any, latency: float | None, kind: str) -> None:
        if kind == "first":
            lat = f" ({latency * 1000:.1f} ms)" if latency is not None else ""
            self.say(f"reply id={msg_id}: {show(data)}{lat}")
        else:
            self.say(f"reply id={msg_id}: {show(data)} ({kind.upper()})")
        if not c.outstanding:
            self.drained.set()

    def on_switched(self, c: TerminalClient, epoch: int) -> None:
        self.say(f"switched epoch={epoch} ({c.last_switch or 'failover'}; session kept)")

    def on_error(self, c: TerminalClient, code: str, msg: str) -> None:
        self.say(f"error {code}: {msg}")
        self.errors[code] = self.errors.get(code, 0) + 1
        self.unreachable = False
        if code in FATAL_ERRORS:
            self._fatal(code, msg)
        self.changed.set()

    def on_protocol_error(self, c: TerminalClient, exc: ProtocolError) -> None:
        self.say(f"protocol error from the CP: {exc.code}: {exc.msg}")
        self.unreachable = False
        if c.welcomed_at is None:  # never logged on: not a CP's terminal port, after a few
            self._hopeless(self.hopeless.protocol_error(exc.msg))
        self.changed.set()

    def on_disconnect(self, c: TerminalClient, exc: Exception | None, retry_in: float, welcomed: bool) -> None:
        why = f" ({type(exc).__name__})" if exc is not None else ""
        what = "disconnected" if welcomed else "connection closed before logon"
        self.say(f"{what}{why}; reconnecting in {retry_in:.2f} s")
        self.unreachable = False
        self.changed.set()

    def on_connect_failed(self, c: TerminalClient, exc: BaseException, retry_in: float) -> None:
        self.say(f"cannot connect to {self.target}: {type(exc).__name__}; retrying in {retry_in:.2f} s")
        self.connect_failures += 1
        self.connect_error = type(exc).__name__
        # (a TLS handshake the peer failed: something answers there, and says so again)
        self.unreachable = tls_failure(exc) is None
        if c.welcomed_at is None:  # TLS that cannot work there (a plain port, another CA), after a few
            self._hopeless(self.hopeless.connect_failed(exc))
        self.changed.set()

    def _hopeless(self, cause: str | None) -> None:
        if cause is not None and not self.fatal.is_set():
            self.cause = cause
            self._fatal("hopeless")


def _giving_up(p: Printer) -> str:
    code = p.fatal_code
    if code == "hopeless":
        return f"giving up: {p.cause}"
    if code in PORT_REFUSALS:
        return f"giving up: {p.target} speaks TLS on its terminal port ({code}): {refusal_fix(code, load=False)}"
    if code == "message_too_large":
        return f"giving up: the CP refused a message that cannot be delivered ({code}): send less, or raise max_frame on the CP and both hosts"
    words = f": {p.fatal_msg[:200]}" if p.fatal_msg else ""
    return f"giving up: the CP refused this terminal ({code}){words}; {refusal_fix(str(code), load=False)}"


class BadLine(NamedTuple):
    """Line `number` of the input is not valid text in `encoding`: the input ends there."""

    number: int
    encoding: str


def _read_lines(stream: TextIO, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | BadLine | None]) -> None:
    """Put each line of `stream` on `queue`, then None (end of input) or a BadLine."""
    # Lines are read as bytes and decoded one by one where the stream has a byte layer: its
    # decoder works on 8 KiB chunks, so an undecodable byte would fail the lines before it too
    raw = getattr(stream, "buffer", None)
    encoding = getattr(stream, "encoding", None) or "utf-8"
    errors = getattr(stream, "errors", None) or "strict"
    n = 0
    end: BadLine | None = None
    try:
        while True:
            n += 1
            line = raw.readline().decode(encoding, errors) if raw is not None else stream.readline()
            if not line:
                break
            line.encode("utf-8")  # not sent, not even recorded, if it cannot go on the wire
            loop.call_soon_threadsafe(queue.put_nowait, line)
    except UnicodeError:  # undecodable, or decoded to lone surrogates (a surrogateescape stdin)
        name = codecs.lookup(encoding).name
        end = BadLine(n, "UTF-8" if name == "utf-8" else name)
    except (OSError, ValueError):  # (ValueError: stdin closed)
        pass
    finally:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, end)
        except RuntimeError:  # loop already closed
            pass


async def interactive(
    name: str,
    host: str,
    port: int,
    *,
    id_base: int | None = None,
    linger: float = 5.0,
    inp: TextIO | None = None,
    out: TextIO | None = None,
    ssl: Any = None,
    cert: str | None = None,
) -> int:
    """Run the interactive terminal until end of input; the exit status. `cert` is the path of
    the certificate in `ssl` (named if the CP refuses it)."""
    loop = asyncio.get_running_loop()
    out = out if out is not None else sys.stdout
    target = f"{host}:{port}"
    printer = Printer(out, target, cert)
    client = TerminalClient(name, printer, base=id_base, keep_payloads=True)
    connector = Connector(host, port, concurrency=1, ssl=ssl)
    connector.attach(client)
    connector.start()
    connector.schedule(client)

    lines: asyncio.Queue[str | BadLine | None] = asyncio.Queue()
    reader = threading.Thread(target=_read_lines, args=(inp if inp is not None else sys.stdin, loop, lines), daemon=True)
    reader.start()
    status = 0
    told = False  # the giving-up line was said
    unanswered: set[int] | None = None  # logged on: the ids still unanswered when the linger ended
    fatal_wait = asyncio.ensure_future(printer.fatal.wait())
    try:
        while True:
            get = asyncio.ensure_future(lines.get())
            done, _ = await asyncio.wait({get, fatal_wait}, return_when=asyncio.FIRST_COMPLETED)
            if fatal_wait in done:
                get.cancel()
                break
            line = get.result()
            if isinstance(line, BadLine):
                printer.say(f"error: input is not valid {line.encoding} at line {line.number}; it and the lines after it were not sent")
                status = 1  # (what was sent before it is still waited for, below)
                break
            if line is None:
                break
            text = line.rstrip("\r\n")
            if text.strip():
                client.submit(text)
        if not printer.fatal.is_set() and client.outstanding and linger > 0:
            printer.say(f"end of input: waiting up to {linger:g} s for {len(client.outstanding)} outstanding reply(ies)")
            printer.drained.clear()
            if client.outstanding:
                drained = asyncio.ensure_future(printer.drained.wait())
                await asyncio.wait([drained, fatal_wait], timeout=linger, return_when=asyncio.FIRST_COMPLETED)
                drained.cancel()
        # never logged on yet (the input ended at once, or had nothing to send): the CP's answer to
        # the logon is waited for before the bye, a refusal above all (it was lost, or the bye met
        # the connection the refusal had closed); not when nothing answers there (a connect failed)
        waited = max(linger, BYE_WAIT)
        await _await_logon(client, printer, waited)
        if printer.fatal.is_set():
            printer.say(_giving_up(printer))
            told = True
            status = 1
        elif client.welcomed_at is None:
            printer.say(f"error: never logged on: {_not_logged_on(printer, client, waited)}")
            if status == 0:  # (an invalid input line keeps its 1)
                status = NOT_LOGGED_ON
        else:  # judged after the bye (below): the CP hands what it held over with the logoff
            unanswered = set(client.outstanding)
    finally:
        fatal_wait.cancel()
        await connector.close()
        if client.transport is not None:
            client.closed = loop.create_future()
            client.bye()
            try:
                await asyncio.wait_for(asyncio.shield(client.closed), BYE_WAIT)
            except TimeoutError:
                client.close(abort=True)
        else:
            client.close()
    if printer.fatal.is_set() and not told:  # refused while it logged off
        printer.say(_giving_up(printer))
        status = 1
    # a script feeding it must see that something was not answered within the linger: still
    # without a reply at the CP's close, or answered only after the bye (a message held with no
    # session, handed to the active with the logoff, as hsbterm load counts it: late). Said once
    # the CP closed, so that the line does not say "without a reply" above the reply it printed
    if unanswered is not None and (unanswered or client.outstanding):
        late = len(unanswered - set(client.outstanding))
        if late:
            printer.say(f"{many(late, 'message')} answered only after the bye, not within the linger ({linger:g} s)")
        if client.outstanding:
            printer.say(f"{many(len(client.outstanding), 'message')} still without a reply")
        status = 1
    # judged after the bye: what the CP sent up to its close is in
    broken = session_failures(client, printer.errors)
    if broken:
        printer.say("FAILED: " + "; ".join(broken))
        status = 1
    printer.say("bye")
    return status


def _not_logged_on(p: Printer, c: TerminalClient, waited: float) -> str:
    """Why a terminal was never welcomed, with no refusal to tell, and the fix."""
    if p.unreachable:
        return no_connect(p.connect_failures, p.connect_error, p.target)
    if c.logon_drops:
        return closed_after_hello(c.logon_drops, p.target)
    return f"no welcome came within {waited:g} s of the end of input: {check_cp(p.target)}"


async def _await_logon(client: TerminalClient, printer: Printer, timeout: float) -> None:
    """Until the terminal is welcomed, refused for good, or cannot reach the CP (its last
    connect failed), at most `timeout` seconds; at once if it was ever welcomed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while client.welcomed_at is None and not printer.fatal.is_set() and not printer.unreachable:
        left = deadline - loop.time()
        if left <= 0:
            return
        printer.changed.clear()
        try:
            await asyncio.wait_for(printer.changed.wait(), left)
        except TimeoutError:
            return


def session_failures(c: TerminalClient, errors: dict[str, int] | None = None) -> list[str]:
    """What the CP did wrong in this terminal's session, as `hsbterm load`'s verdict counts it
    and in its words (hsb.term.report): its error frames too, but for the refusals a reconnect
    meets and retries past (RECONNECT_RACES); a message still without a reply is said apart.
    (Its replies' data is not checked: `connect` prints them.)"""
    v = judge_marks(c.marks, base=c.base, stride=c.stride, name=c.name)
    unexpected = c.unexpected + c.early
    bad = {k: n for k, n in (errors or {}).items() if k not in NOT_BROKEN}  # (a refusal is told as the reason it gave up)
    checks = (
        (v.duplicates, duplicates_failure(v.duplicates, v.duplicate_ids)),
        (unexpected, unexpected_failure(unexpected, c.early)),
        (c.unexpected_acks, unexpected_acks_failure(c.unexpected_acks)),
        (c.acks_forgotten, acks_forgotten_failure(c.acks_forgotten)),
        (c.protocol_errors, protocol_errors_failure(c.protocol_errors)),
        (len(bad), cp_errors_failure(bad)),
    )
    return [said for n, said in checks if n]
