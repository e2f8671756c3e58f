"""hsbterm's Connector with one real TerminalClient and a fake connect, for the connector's tests
(tests/test_term_connector.py, tests/test_term_connector_mutants.py): the loop's create_connection
replaced for a block, and what a fake connect hands the terminal (a RecordingTransport)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from hsb.term.client import TerminalClient
from hsb.term.connector import Connector
from hsb.term.loadstats import LoadStats
from tests.support.transports import RecordingTransport


def one_terminal() -> tuple[Connector, TerminalClient, RecordingTransport]:
    """A connector (to nowhere, one connect at a time), its terminal T1, and a transport for it."""
    conn = Connector("127.0.0.1", 1, concurrency=1)
    c = TerminalClient("T1", LoadStats(1))
    conn.attach(c)
    return conn, c, RecordingTransport("cp")


async def connect_timing_out(conn: Connector, c: TerminalClient, tr: RecordingTransport, *, close: bool = False) -> BaseException | None:
    """`conn`'s connect of `c` as it is when its deadline falls due just as it connects: the
    terminal is handed `tr` (closed too with `close`, as a cancelled connect closes it), then
    the connect raises TimeoutError; what `_connect` returns."""

    async def connect_then_time_out(*a: Any, **kw: Any) -> Any:
        c.connection_made(tr)  # type: ignore[arg-type]
        if close:
            tr.close()
        raise TimeoutError

    with create_connection_as(connect_then_time_out):
        return await conn._connect(c)


@contextlib.contextmanager
def create_connection_as(fake: Callable[..., Coroutine[Any, Any, Any]]) -> Iterator[None]:
    """The running loop's create_connection is `fake` within the block."""
    loop = asyncio.get_running_loop()
    real = loop.create_connection
    loop.create_connection = fake  # type: ignore[method-assign]
    try:
        yield
    finally:
        loop.create_connection = real  # type: ignore[method-assign]
