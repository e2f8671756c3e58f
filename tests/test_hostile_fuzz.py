"""Hostile input (issue 7, item 5), fuzzed with hypothesis: the terminal port and the HTTP
ports of real hsbcpd and hsbd processes (tests/support/hostile.py), the HTTP listener's limits,
the CP's host link from a registered host (a standalone hsbcpd), and the hosts' peer links after
authentication (malformed frames, wrong field types: the HA loop lives on).

After every hostile example the daemons are alive, a real terminal (the "witness") still gets
its reply, and `hsbctl status`-style status still works. The authenticated links:
tests/test_hostile_auth.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hsb.wire.framing import encode
from tests.support import fuzz as fz
from tests.support.fuzz import Conn, Witness
from tests.support.hostile import FUZZ, HTTP_CODES, SB, http_code, http_exchange, module_sandbox, send_stream
from tests.support.procs import SECRET, Proc, start_cp

TERMINAL_TYPES = ("hello", "msg", "bye")


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=60)
@given(
    hello=st.one_of(st.none(), st.sampled_from(["T00010", "T00011", "T00012", "NOPE"])),
    stream=st.one_of(
        fz.hostile_streams(TERMINAL_TYPES),
        st.lists(fz.wrong_typed_frames(fz.TERMINAL_FIELDS), min_size=1, max_size=3).map(lambda ms: [b"".join(encode(m) for m in ms)]),
    ),
)
@example(hello="T00010", stream=[encode({"t": "msg", "id": -1, "data": b"x"})])
@example(hello="T00010", stream=[encode({"t": "msg", "id": 2**64 - 1, "data": b"x"})])
@example(hello="T00010", stream=[encode({"t": "msg", "id": True, "data": b"x"})])
@example(hello=None, stream=[fz.frame(b"\x82\xa1t\xa5hello\xa8terminal" + b"\x91" * 100_000 + b"\xc0")])
@example(hello=None, stream=[fz.frame(b"\x82\xa1t\xa5hello\xa8terminal\xa2\xff\xfe")])
def test_fuzz_terminal_port(hostile_sb: SB, witness: Witness, hello: str | None, stream: list[bytes]) -> None:
    c = Conn(hostile_sb.addr("cp.terminal"))
    try:
        if hello is not None:
            c.send({"t": "hello", "terminal": hello})
        send_stream(c, stream)
        assert c.finish(3.0), "the CP did not close a hostile terminal connection after EOF"
        assert not c.garbage, "the CP sent bytes that are not frames"
        fz.check_error_codes(c.errors(), fz.TERMINAL_CODES, "terminal link")
    finally:
        c.close()
    hostile_sb.assert_healthy(witness, where="terminal fuzz")


HTTP_REQ = st.one_of(
    st.binary(min_size=1, max_size=600),
    st.tuples(
        st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"get", b"", b"\xff\xfe"]) | st.binary(max_size=8),
        st.sampled_from([b"/health", b"/active", b"/standby", b"/metrics", b"/", b"/../../etc/passwd", b"/health?x=1", b"*", b"/\xff"])
        | st.binary(max_size=20),
        st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"HTTP/1.1 extra", b""]) | st.binary(max_size=10),
        st.lists(st.binary(max_size=60), max_size=5),
        st.sampled_from([b"\r\n\r\n", b"\r\n", b"\n\n", b""]),
    ).map(lambda p: p[0] + b" " + p[1] + b" " + p[2] + b"\r\n" + b"\r\n".join(p[3]) + p[4]),
)


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=40)
@given(target=st.sampled_from(["cp.http", "host-a.http", "host-b.http"]), req=HTTP_REQ)
def test_fuzz_http_ports(hostile_sb: SB, witness: Witness, target: str, req: bytes) -> None:
    resp, took = http_exchange(hostile_sb.addr(target), req)
    if resp:
        assert http_code(resp) in HTTP_CODES, resp[:200]
    assert took < 7.0
    hostile_sb.assert_healthy(witness, where=f"{target} fuzz")


@pytest.mark.timeout(40)
def test_http_limits(hostile_sb: SB, witness: Witness) -> None:
    for target in ("cp.http", "host-a.http", "host-b.http"):
        a = hostile_sb.addr(target)
        assert http_code(http_exchange(a, b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03garbage\r\n\r\n")[0]) == 400  # a TLS hello
        assert http_code(http_exchange(a, b"GARBAGE\r\n\r\n")[0]) == 400
        assert http_code(http_exchange(a, b"GET /health\r\n\r\n")[0]) == 400  # no version
        assert http_code(http_exchange(a, b"POST /health HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")[0]) == 405
        assert http_code(http_exchange(a, b"DELETE /metrics HTTP/1.1\r\n\r\n")[0]) == 405
        assert http_code(http_exchange(a, b"GET /nope HTTP/1.1\r\n\r\n")[0]) == 404
        assert http_code(http_exchange(a, b"GET /../../etc/passwd HTTP/1.1\r\n\r\n")[0]) == 404
        assert http_code(http_exchange(a, b"GET /health HTTP/1.1\r\n\r\n")[0]) in (200, 503)
        # a header block over 8 KiB that arrives before its end: 431 without waiting for more
        big = b"GET /health HTTP/1.1\r\nX-Big: " + b"a" * 9000
        resp, took = http_exchange(a, [big], half_close=False)
        assert http_code(resp) == 431 and took < 2.0, (resp[:60], took)
        # 64 KiB of headers, ending properly, in one write: answered (any documented code) and closed
        resp, took = http_exchange(a, b"GET /health HTTP/1.1\r\n" + b"X-Big: " + b"a" * 65536 + b"\r\n\r\n")
        assert http_code(resp) in HTTP_CODES and took < 2.0
        # 1 MiB without a line end: 431, the daemon does not buffer it all
        resp, took = http_exchange(a, [b"G" * (1 << 20)], half_close=False)
        assert http_code(resp) == 431 and took < 3.0
        # pipelined requests: one answer, then close
        resp, _ = http_exchange(a, b"GET /health HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n")
        assert resp.count(b"HTTP/1.1 ") == 1
    hostile_sb.assert_healthy(witness, where="after HTTP abuse")


@pytest.fixture
def lone_cp(tmp_path: Path):  # type: ignore[no-untyped-def]
    proc = start_cp(tmp_path / "cp", terminals=10, host_timeout=0.5)
    yield proc
    proc.stop()


def _admin(address: str, secret: bytes, msg: dict[str, Any]) -> dict[str, Any]:
    c = Conn(address)
    try:
        c.authenticate(secret, "admin", "test")
        c.send(msg)
        m = c.recv(3)
        assert m is not None, "no answer on the admin link"
        return m
    finally:
        c.close()


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=50)
@given(
    role=st.sampled_from(["active", "standby"]),
    good_epoch=st.booleans(),
    frames=st.lists(fz.wrong_typed_frames(fz.HOST_FIELDS), min_size=1, max_size=3),
)
@example(role="active", good_epoch=True, frames=[{"t": "reply", "terminal": "T00001", "id": 2**64 - 1, "data": 5, "epoch": 0}])
@example(role="active", good_epoch=True, frames=[{"t": "open", "terminal": "T00001", "kind": 7, "attrs": {}, "epoch": 0}])
@example(role="active", good_epoch=True, frames=[{"t": "open", "terminal": "T00001", "kind": "active", "attrs": [1], "epoch": 0}])
@example(role="standby", good_epoch=False, frames=[{"t": "switchover", "reason": {"x": 1}, "planned": [1, 2]}])
def test_fuzz_cp_host_link_as_registered_host(
    lone_cp: Proc, request: pytest.FixtureRequest, role: str, good_epoch: bool, frames: list[dict[str, Any]]
) -> None:
    """A standalone hsbcpd whose "hosts" are the fuzzer: every host-link handler gets wrong field types."""
    info, node = lone_cp.info, request.node
    if not hasattr(node, "_w"):  # one witness for all examples (fixtures are per test, not per example)
        node._w = Witness(info["terminal"], "T00001", need_session=False, need_reply=False)
    w = node._w
    c = Conn(info["host"])
    try:
        c.authenticate(SECRET, "host", f"fuzz-{role}")
        c.send({"t": "register", "role": role, "startup_id": 1})
        reg = c.wait_for(lambda m: m.get("t") in ("registered", "error"), 3)
        epoch = reg.get("epoch", 0) if reg else 0
        out = b""
        for f in frames:
            if good_epoch and "epoch" in f:
                f = {**f, "epoch": epoch}
            out += encode(f)
        c.send_raw(out)
        assert c.finish(3.0), "the CP did not close the host link after EOF"
        fz.check_error_codes(c.errors(), fz.HOST_CODES, "host link")
    finally:
        c.close()
    assert lone_cp.popen.poll() is None, f"hsbcpd exited: {lone_cp.log.read_text()[-2000:]}"
    w.ping()
    stat = _admin(info["admin"], SECRET, {"t": "status"})
    assert stat["t"] == "status" and stat["data"]["role"] == "cp"
    assert "Traceback" not in lone_cp.log.read_text(errors="replace")


WRONG_PEER: dict[str, dict[str, Any]] = {  # one frame per peer type, one field of the wrong type
    "peer_hello": {"t": "peer_hello", "name": 1, "role": ["active"], "state": None, "instance": 5},
    "hb": {"t": "hb", "role": 1, "ring_next": "x"},
    "active_startup": {"t": "active_startup", "name": 5, "instance": {"a": 1}},
    "standby_startup": {"t": "standby_startup", "startup_id": "abc", "name": "host-b"},
    "batch_write_complete": {"t": "batch_write_complete", "startup_id": b"1", "generation": "g"},
    "file_mismatch": {"t": "file_mismatch", "startup_id": [1], "found": "x", "path": 5},
    "standby_ready": {"t": "standby_ready", "startup_id": 1.5, "instance": 3},
    "resync_request": {"t": "resync_request", "startup_id": None, "reason": 1},
    "active_stopping": {"t": "active_stopping", "name": 123},
}


@pytest.fixture(scope="module")
def peer_sb(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One sandbox for the tests that take over the peer links with the secret (they heal; the roles never change)."""
    yield from module_sandbox(tmp_path_factory, "peer")


def _peer_send(s: SB, host: str, frames: list[dict[str, Any]]) -> Conn:
    c = Conn(s.addr(f"{host}.peer"))
    # as the host's own peer (any other name is refused: wrong_peer), and in the same write as the
    # answer: the real peer reconnects within ~50 ms and supersedes this connection
    peer = "host-b" if host == "host-a" else "host-a"
    c.authenticate(s.secret, "peer", peer, then=b"".join(encode(f) for f in frames))
    c.frames = c.frames[2:]  # challenge, auth_ok
    return c


@pytest.mark.timeout(40)
def test_malformed_peer_frame_does_not_kill_the_ha_loop(peer_sb: SB) -> None:
    s = peer_sb
    w = Witness(s.addr("cp.terminal"), "T00001")
    try:
        assert s.ha_alive("host-a")
        c = _peer_send(s, "host-a", [WRONG_PEER["standby_startup"]])
        c.finish(3)
        c.close()
        assert s.ha_alive("host-a"), "host-a's HA loop is dead after one malformed peer frame"
        s.wait_established(10)
        s.assert_healthy(w, where="after a malformed peer frame")
    finally:
        w.close()
        s.assert_no_secret()


@pytest.mark.timeout(40)
def test_peer_frames_with_wrong_field_types_are_protocol_errors(peer_sb: SB) -> None:
    s = peer_sb
    problems = []
    for t, f in WRONG_PEER.items():
        host = "host-b" if t != "standby_startup" else "host-a"
        c = _peer_send(s, host, [f])
        try:
            closed = c.finish(3)
            if "bad_fields" not in c.errors() or not closed:
                problems.append(f"{t} to {host}: errors {c.errors()}, closed {closed}")
        finally:
            c.close()
    assert not problems, "\n".join(problems)


@pytest.mark.timeout(60)
@settings(FUZZ, max_examples=25)
@given(host=st.sampled_from(["host-a", "host-b"]), frames=st.lists(fz.wrong_typed_frames(fz.PEER_FIELDS), min_size=1, max_size=3))
def test_fuzz_peer_link_after_authentication(peer_sb: SB, request: pytest.FixtureRequest, host: str, frames: list[dict[str, Any]]) -> None:
    s, node = peer_sb, request.node
    if not hasattr(node, "_w"):
        node._w = Witness(s.addr("cp.terminal"), "T00001")
    w = node._w
    c = _peer_send(s, host, frames)
    try:
        assert c.finish(3.0), f"{host} did not close the peer connection after EOF"
        fz.check_error_codes(c.errors(), fz.AUTH_CODES, f"{host} peer link")
    finally:
        c.close()
    # the peer link is taken over and healed; roles at the CP never change
    s.assert_healthy(w, where=f"{host} peer fuzz")
    assert s.ha_alive(host), f"{host}'s HA loop stopped after peer frames {frames}"
