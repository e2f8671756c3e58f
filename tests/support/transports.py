"""Stand-in transports for driving protocol objects without a kernel (tests and bench/scale_core.py)."""

from __future__ import annotations

import asyncio
from typing import Any, cast


class NoFlowControl:
    """A stand-in transport's flow control: reading never paused, writes never buffered."""

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


class CountingTransport(NoFlowControl):
    """A transport that takes every write (counting bytes) and never blocks."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.bytes = 0
        self.writes = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.bytes += len(data)
        self.writes += 1

    def writelines(self, chunks: Any) -> None:
        for c in chunks:
            self.write(c)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


class RecordingTransport(CountingTransport):
    """A CountingTransport that also keeps what was written; `frames()` decodes it."""

    def __init__(self, peer: str) -> None:
        super().__init__(peer)
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        super().write(data)
        self.data += data

    def frames(self) -> list[dict[str, Any]]:
        from hsb.wire.framing import Decoder

        return Decoder().feed(bytes(self.data))


def stand_in(t: NoFlowControl) -> asyncio.Transport:
    """`t` where a protocol takes an asyncio.Transport: a stand-in has the methods the protocols
    use (as uvloop's transports do), not the class."""
    return cast(asyncio.Transport, t)


def recorded(t: object) -> RecordingTransport:
    """A protocol's transport (typed as the real one, or None) as the RecordingTransport it was given."""
    assert isinstance(t, RecordingTransport), f"not a RecordingTransport: {t!r}"
    return t
