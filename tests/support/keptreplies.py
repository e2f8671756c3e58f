"""What the tests of the replies a CP keeps for a resuming terminal share (test_cp_kept_bound,
test_cp_kept_claims): hsbterm's terminal connected in memory to a CP core's terminal link, an
earlier run of a terminal that died without a bye, what the CP wrote to a stand-in host or
terminal, and a wait for a condition with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hsb.wire.framing import encode
from tests.support.cpcore import cp_core, fake_host, recording_terminal
from tests.support.transports import NoFlowControl, stand_in


async def until(cond: Callable[[], bool], what: str, within: float = 5.0) -> None:
    """Wait for `cond`, turning the loop, for at most `within` seconds (else fail: never `what`)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not cond():
        assert loop.time() - t0 < within, f"never: {what}"
        await asyncio.sleep(0)


class Pipe(NoFlowControl):
    """One direction of an in-memory connection: what is written arrives at `to` on the next
    turn of the loop, as from a socket; a close ends both sides."""

    def __init__(self, to: Any) -> None:
        self.to = to
        self.other: Pipe | None = None
        self.closing = False

    def write(self, data: bytes) -> None:
        if not self.closing:
            asyncio.get_running_loop().call_soon(self._arrive, bytes(data))

    def _arrive(self, data: bytes) -> None:
        if not self.closing:
            self.to.data_received(data)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def close(self) -> None:
        for side in (self, self.other):
            if side is not None and not side.closing:
                side.closing = True
                asyncio.get_running_loop().call_soon(side.to.connection_lost, None)

    abort = close

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


def connect_hsbterm(cp: Any, c: Any) -> Any:
    """hsbterm's terminal `c` connected to the CP's terminal link in memory; the CP's side."""
    from hsb.cp.terminal_link import TerminalProtocol

    p = TerminalProtocol(cp, hello_timeout=5.0, idle_after_hello=None)
    to_cp, to_term = Pipe(p), Pipe(c)
    to_cp.other, to_term.other = to_term, to_cp
    p.connection_made(stand_in(to_term))
    c.connection_made(to_cp)
    return p


async def earlier_run(tmp_path: Path, ids: tuple[int, ...]) -> tuple[Any, Any]:
    """A CP core and its active (cp, h): run 1 of T00001 sent `ids` and died without a bye, the
    active still working on them."""
    cp = cp_core(tmp_path, 2)
    h = fake_host(cp, "host-a", "active", record=True)
    run1 = recording_terminal(cp, "T00001", 0)
    cp.host_open(h, "T00001", "active", {})
    run1.data_received(b"".join(encode({"t": "msg", "id": i, "data": f"m{i}"}) for i in ids))
    await until(lambda: {("T00001", i) for i in ids} <= delivered(h), "run 1's messages delivered")
    run1.connection_lost(None)  # no bye; the active still working on them
    return cp, h


def delivered(h: Any) -> set[tuple[str, int]]:
    """(terminal, id) of every `deliver` the CP wrote to the stand-in host `h`."""
    h.flush()
    return {(m["terminal"], m["id"]) for m in h.transport.frames() if m.get("t") == "deliver"}


def replies(p: Any) -> list[dict[str, Any]]:
    """Every `reply` frame the CP wrote to the stand-in terminal `p`."""
    p.flush()
    return [m for m in p.transport.frames() if m.get("t") == "reply"]
