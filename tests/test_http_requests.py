"""The daemons' HTTP listener (hsb.ops.http) in-process on a loopback port: a request cut short by
the client's end of the connection is answered 400 with what was missing, not closed in silence;
a request whose lines end in a bare LF is served (RFC 9112 lets a recipient take them), and one
that ends properly is answered as before. (The limits against real daemons:
tests/test_hostile_fuzz.py, test_http_limits.)
"""

from __future__ import annotations

import asyncio
import time

import pytest

from hsb.ops import http

pytestmark = pytest.mark.timeout(20)


async def _exchange(port: int, data: bytes, half_close: bool) -> tuple[bytes, float]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    try:
        w.write(data)
        if half_close:
            w.write_eof()
        await w.drain()
        return await asyncio.wait_for(r.read(), 10.0), time.monotonic() - t0
    finally:
        w.close()


def exchange(data: bytes, half_close: bool = True) -> tuple[bytes, float]:
    async def main() -> tuple[bytes, float]:
        srv, addr = await http.start_http("127.0.0.1:0", {"/health": lambda: (200, "text/plain", b"ok\n")})
        try:
            return await _exchange(int(addr.rsplit(":", 1)[1]), data, half_close)
        finally:
            srv.close()
            await srv.wait_closed()

    return asyncio.run(main())


@pytest.mark.parametrize(
    "partial",
    [b"", b"GET /health HTTP/1.1", b"GET /health HTTP/1.1\r\n", b"GET /health HTTP/1.1\r\nHost: x\r\n", b"\x16\x03\x01"],
)
def test_request_cut_short_by_the_client_is_answered_400(partial: bytes) -> None:
    resp, took = exchange(partial)
    assert resp.startswith(b"HTTP/1.1 400 "), resp[:80]
    assert resp.endswith(b"incomplete request: the connection ended before the empty line that ends the headers\n")
    assert took < http.TIMEOUT / 2, "answered at the client's end, not at the request timeout"


@pytest.mark.parametrize("half_close", [True, False])
def test_lines_ended_by_a_bare_lf_are_served(half_close: bool) -> None:
    resp, took = exchange(b"GET /health HTTP/1.1\nHost: x\n\n", half_close)
    assert resp.startswith(b"HTTP/1.1 200 ") and resp.endswith(b"\r\n\r\nok\n"), resp[:80]
    assert took < http.TIMEOUT / 2


@pytest.mark.parametrize("req, code", [(b"GET /health HTTP/1.1\r\n\r\n", 200), (b"GET /nope HTTP/1.1\r\n\r\n", 404), (b"GARBAGE\n\n", 400)])
def test_whole_requests_answered_as_before(req: bytes, code: int) -> None:
    resp, _ = exchange(req)
    assert resp.startswith(f"HTTP/1.1 {code} ".encode()), resp[:80]
    assert resp.count(b"HTTP/1.1 ") == 1
