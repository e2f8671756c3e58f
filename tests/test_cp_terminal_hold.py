"""A terminal's first read decoded no further than its hello (hsb.cp.terminal_link, the
Decoder's `hold`), in-process on stand-in transports.

A client that connects and writes a hello with 256 KB of frames behind it had the whole read
decoded before its hello was looked at (28 ms of the loop, 5.6 MB of objects, for a client
nobody knows). Now what follows the hello stays bytes until the hello is taken; then it is
decoded and handled in order, as before; a refused hello leaves it undecoded, dropped with
the connection."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest

from hsb.cp import logons
from hsb.cp.terminal_link import TerminalProtocol
from hsb.wire.framing import Decoder, encode
from tests.support.cpcore import cp_core, fake_host, recording_terminal
from tests.support.transports import RecordingTransport, recorded, stand_in

pytestmark = pytest.mark.timeout(60)

N = 200  # messages behind the hello (under the held bound: all acknowledged with no session)


def counting_decodes(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every frame a terminal link's Decoder decodes from now on, in order (not the test's own
    decoding of what was written to it)."""
    seen: list[dict[str, Any]] = []
    real = Decoder._decode

    def decode(self: Decoder, body: bytes) -> dict[str, Any]:
        msg = real(self, body)
        if self.known_types == frozenset(TerminalProtocol.dispatch):
            seen.append(msg)
        return msg

    monkeypatch.setattr(Decoder, "_decode", decode)
    return seen


def decoded_at_hello(cp: Any, seen: list[dict[str, Any]]) -> list[list[str]]:
    """The types decoded so far, as each hello reaches the CP's core."""
    at: list[list[str]] = []
    real = cp.terminal_hello

    def hello(proto: Any, name: str, last_reply: int | None = None) -> None:
        at.append([m["t"] for m in seen])
        real(proto, name, last_reply)

    cp.terminal_hello = hello
    return at


def hello_and_messages(name: str, n: int = N) -> bytes:
    return encode({"t": "hello", "terminal": name, "last_reply": 0}) + b"".join(
        encode({"t": "msg", "id": i, "data": f"m{i}"}) for i in range(1, n + 1)
    )


async def until(pred: Any, what: str, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not pred():
        assert loop.time() - t0 < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


def acks(p: Any) -> list[int]:
    p.flush()
    return [f["id"] for f in p.transport.frames() if f["t"] == "ack"]


async def test_only_the_hello_is_decoded_before_it_is_taken_then_the_rest_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cp = cp_core(tmp_path, 2)
    seen = counting_decodes(monkeypatch)
    at = decoded_at_hello(cp, seen)
    p = TerminalProtocol(cp, hello_timeout=5.0, idle_after_hello=None)
    p.connection_made(stand_in(RecordingTransport("T00001")))
    p.data_received(hello_and_messages("T00001"))
    assert at == [["hello"]], "frames behind the hello were decoded before it was taken"
    await until(lambda: len(acks(p)) == N, "every message acknowledged")
    assert acks(p) == list(range(1, N + 1)) and list(cp.terms["T00001"].held) == list(range(1, N + 1))
    assert [m["t"] for m in seen] == ["hello"] + ["msg"] * N  # each decoded once
    p.flush()
    assert recorded(p.transport).frames()[0]["t"] == "welcome" and not p.closed
    p.connection_lost(None)
    await asyncio.sleep(0)


@pytest.mark.parametrize("hello", ["unknown", "already_connected", "bad_hello", "not_hello"])
async def test_a_refused_hello_has_nothing_behind_it_decoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hello: str) -> None:
    cp = cp_core(tmp_path, 2)
    if hello == "already_connected":
        recording_terminal(cp, "T00001")
    seen = counting_decodes(monkeypatch)
    p = TerminalProtocol(cp, hello_timeout=5.0, idle_after_hello=None)
    p.connection_made(stand_in(RecordingTransport("x")))
    first = cast(
        dict[str, Any],
        {
            "unknown": {"t": "hello", "terminal": "T99999"},
            "already_connected": {"t": "hello", "terminal": "T00001"},
            "bad_hello": {"t": "hello", "terminal": ""},
            "not_hello": {"t": "confirm", "id": 0},
        }[hello],
    )
    p.data_received(encode(first) + hello_and_messages("T00001")[len(encode({"t": "hello", "terminal": "T00001", "last_reply": 0})) :])
    p.flush()
    err = [f for f in recorded(p.transport).frames() if f["t"] == "error"]
    code = {"unknown": "unknown_terminal", "not_hello": "bad_hello"}.get(hello, hello)
    assert p.closed and err and err[0]["code"] == code, err
    assert [m["t"] for m in seen] == [first["t"]], "frames behind a refused hello were decoded"
    p.clear_deadline()
    await asyncio.sleep(0)


async def test_a_hello_that_waits_its_turn_has_its_frames_decoded_and_taken_in_its_turn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a logon storm the hello is queued and its connection not read: what came behind it in
    its read stays bytes until its logon, then is taken in order."""
    cp = cp_core(tmp_path, 2)
    fake_host(cp, "host-a", "active")
    seen = counting_decodes(monkeypatch)
    cp.logons.inline = logons.BURST  # this turn's inline logons all used: the hello is queued
    p = TerminalProtocol(cp, hello_timeout=5.0, idle_after_hello=None)
    p.connection_made(stand_in(RecordingTransport("T00001")))
    p.data_received(hello_and_messages("T00001"))
    assert p.term is None and p.reading_paused and cp.logons.deferred == 1
    assert [m["t"] for m in seen] == ["hello"]
    await until(lambda: len(acks(p)) == N, "every message acknowledged")
    assert acks(p) == list(range(1, N + 1)) and list(cp.terms["T00001"].held) == list(range(1, N + 1))
    p.connection_lost(None)
    await asyncio.sleep(0)


async def test_a_bad_frame_behind_a_taken_hello_is_refused_after_the_frames_before_it(tmp_path: Path) -> None:
    """As on any read: the frames ahead of a bad one are taken, then the link is refused."""
    import struct

    cp = cp_core(tmp_path, 2)
    p = TerminalProtocol(cp, hello_timeout=5.0, idle_after_hello=None)
    p.connection_made(stand_in(RecordingTransport("T00001")))
    p.data_received(hello_and_messages("T00001", 3) + struct.pack(">I", 0))
    p.flush()
    frames = recorded(p.transport).frames()
    assert [f["t"] for f in frames] == ["welcome", "ack", "ack", "ack", "error"] and frames[-1]["code"] == "empty_frame", frames
    assert p.closed and list(cp.terms["T00001"].held) == [1, 2, 3]
    p.clear_deadline()
    await asyncio.sleep(0)
