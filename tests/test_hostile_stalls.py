"""Stalled and unauthenticated connections are dropped on time (issue 7, item 5): real hsbcpd
and hsbd processes (tests/support/hostile.py) close a connection that stalls before or after its
authentication, a terminal stalled in the middle of a frame after its hello, and a client that
dribbles its bytes and never authenticates.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from hsb.wire.framing import Decoder, ProtocolError
from tests.support import fuzz as fz
from tests.support.fuzz import Conn
from tests.support.hostile import SB
from tests.support.procs import start_cp

SLACK = 2.5


async def _stall(address: str, prelude: bytes, *, dribble: bool = False, every: float = 0.4, give_up: float = 15.0) -> tuple[float, bytes]:
    """Connect, send `prelude` (or dribble it a byte every `every` s), then wait; seconds until the server closes
    (a dribbler stops after `give_up` s and reports that)."""
    h, p = fz.addr(address)
    r, w = await asyncio.open_connection(h, p)
    t0 = time.monotonic()
    got = b""
    try:
        if dribble:
            for b in prelude:
                if time.monotonic() - t0 > give_up:
                    return time.monotonic() - t0, got
                w.write(bytes([b]))
                await w.drain()
                try:
                    more = await asyncio.wait_for(r.read(65536), every)
                except TimeoutError:
                    continue
                got += more
                if not more:
                    return time.monotonic() - t0, got
        else:
            if prelude:
                w.write(prelude)
                await w.drain()
                t0 = time.monotonic()  # the idle timer restarts with the last byte
        while True:
            chunk = await asyncio.wait_for(r.read(65536), 15)
            if not chunk:
                return time.monotonic() - t0, got
            got += chunk
    except ConnectionResetError:
        return time.monotonic() - t0, got
    finally:
        w.close()


def _last_error(data: bytes) -> str | None:
    try:
        frames = Decoder(fz.MAX_FRAME).feed(data)
    except ProtocolError:
        return "<garbage>"
    errs = [f.get("code") for f in frames if f.get("t") == "error"]
    return errs[-1] if errs else None


@pytest.mark.timeout(40)
def test_stalled_and_unauthenticated_connections_are_dropped(hostile_sb: SB) -> None:
    partial = fz.LEN.pack(40) + b"\x81\xa1t"  # a frame announced, never finished
    peer_timeout = max(4 * 0.5, 2.0)  # sandbox heartbeat_timeout = 0.5
    http_req = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "
    cases: list[tuple[str, str, bytes, float, bool]] = [
        # target, what, prelude, expected seconds, dribble
        ("cp.terminal", "no hello", b"", 5.0, False),
        ("cp.terminal", "partial frame, no hello", partial, 5.0, False),
        ("cp.terminal", "half a length prefix", b"\0\0", 5.0, False),
        ("cp.host", "never authenticates", b"", 5.0, False),
        ("cp.host", "partial auth frame", partial, 5.0, False),
        ("cp.admin", "never authenticates", b"", 5.0, False),
        ("cp.admin", "partial auth frame", partial, 5.0, False),
        ("host-a.admin", "never authenticates", b"", 5.0, False),
        ("host-b.admin", "partial auth frame", partial, 5.0, False),
        ("host-a.peer", "never authenticates", b"", peer_timeout, False),
        ("host-b.peer", "partial auth frame", partial, peer_timeout, False),
        ("cp.http", "partial request", http_req, 5.0, False),
        ("host-a.http", "slowloris", http_req * 3, 5.0, True),
        ("host-b.http", "partial request", http_req, 5.0, False),
    ]

    async def run() -> list[tuple[float, bytes]]:
        return await asyncio.gather(*(_stall(hostile_sb.addr(t), pre, dribble=d) for t, _, pre, _, d in cases))

    results = asyncio.run(run())
    problems = []
    for (target, what, _, expect, _), (took, got) in zip(cases, results, strict=False):
        if not (expect - 0.5 <= took <= expect + SLACK):
            problems.append(f"{target} ({what}): closed after {took:.2f}s, expected {expect}s")
        if target.endswith(".http"):
            if not got.startswith(b"HTTP/1.1 408"):
                problems.append(f"{target} ({what}): expected a 408 before the close, got {got[:40]!r}")
        elif _last_error(got) != "idle_timeout":
            problems.append(f"{target} ({what}): expected an idle_timeout error frame, got {_last_error(got)!r}")
    assert not problems, "\n".join(problems)
    hostile_sb.assert_healthy(None, where="after stalls")


@pytest.mark.timeout(30)
def test_terminal_stalled_mid_frame_after_hello_is_dropped(tmp_path: Path) -> None:
    # a CP of its own with a short auth_timeout (the timeout a stalled partial frame should get), to keep this quick
    cp = start_cp(tmp_path / "cp", terminals=2, auth_timeout=1.0)
    try:
        c = Conn(cp.info["terminal"])
        try:
            c.send({"t": "hello", "terminal": "T00001"})
            w = c.recv(3)
            assert w is not None, "no welcome"
            assert {k: w[k] for k in ("t", "terminal", "last_acked")} == {"t": "welcome", "terminal": "T00001", "last_acked": 0}
            c.send_raw(fz.LEN.pack(fz.MAX_FRAME) + b"\x83\xa1t\xa3msg" + bytes(4096))
            t0 = time.monotonic()
            closed = c.drain_until_closed(1.0 + SLACK)
            assert closed, f"a terminal stalled mid-frame was still connected after {time.monotonic() - t0:.1f}s (auth_timeout 1s)"
            assert "idle_timeout" in c.errors()
        finally:
            c.close()
    finally:
        cp.stop()


@pytest.mark.timeout(30)
def test_dribbling_client_that_never_authenticates_is_dropped(tmp_path: Path) -> None:
    """Slowloris on the framed links: one byte every 0.3 s of a frame that never ends (CP with auth_timeout = 1 s)."""
    cp = start_cp(tmp_path / "cp", terminals=2, auth_timeout=1.0)
    try:
        prelude = fz.LEN.pack(1000) + b"\x81\xa1t" + b"x" * 40

        async def run() -> list[tuple[float, bytes]]:
            return await asyncio.gather(
                *(_stall(cp.info[k], prelude, dribble=True, every=0.3, give_up=1.0 + SLACK + 0.5) for k in ("terminal", "host", "admin"))
            )

        results = asyncio.run(run())
        late = [
            f"{k}: not closed within {took:.1f}s" for k, (took, _) in zip(("terminal", "host", "admin"), results, strict=False) if took > 1.0 + SLACK
        ]
        assert not late, f"auth_timeout 1s, dribbling clients: {late}"
    finally:
        cp.stop()
