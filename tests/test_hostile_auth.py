"""Hostile input on the authenticated links (issue 7, item 5), against real hsbcpd and hsbd
processes (tests/support/hostile.py): the host, admin and peer ports fuzzed before and after
authentication, replayed authentication refused, the secret file's mode enforced, the terminal
link unable to speak for a host or an operator, and the secret kept out of logs and status
(last: it reads the logs of everything this module did to the sandbox).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hsb.ctl import sandbox
from hsb.host.peer import PEER_TYPES
from hsb.wire.framing import encode
from tests.support import fuzz as fz
from tests.support.fuzz import Conn, Witness
from tests.support.hostile import FUZZ, SB, http_exchange, send_stream

AUTH_TARGETS = ["cp.host", "cp.admin", "host-a.admin", "host-b.admin", "host-a.peer", "host-b.peer"]


AFTER_AUTH = {  # target -> field table fuzzed after a valid authentication (the peer link: test_hostile_fuzz, on a sandbox of its own)
    "cp.host": fz.HOST_FIELDS,
    "cp.admin": fz.CP_ADMIN_FIELDS,
    "host-a.admin": {k: v for k, v in fz.HOST_ADMIN_FIELDS.items() if k != "switchover"},  # a real planned switchover is not hostile
    "host-b.admin": fz.HOST_ADMIN_FIELDS,
}


LINK_TYPES = {"host": set(fz.HOST_FIELDS), "admin": set(fz.CP_ADMIN_FIELDS) | set(fz.HOST_ADMIN_FIELDS), "peer": set(PEER_TYPES)}


@st.composite
def auth_link_cases(draw: Any) -> tuple[str, bool, list[bytes]]:
    target = draw(st.sampled_from(AUTH_TARGETS))
    link = target.split(".")[1]
    authed = target in AFTER_AUTH and draw(st.booleans())
    if authed:
        spec = AFTER_AUTH[target]
        stream = draw(
            st.one_of(
                fz.hostile_streams(spec),
                st.lists(fz.wrong_typed_frames(spec), min_size=1, max_size=3).map(lambda ms: [b"".join(encode(m) for m in ms)]),
            )
        )
    else:
        stream = draw(
            st.one_of(
                fz.hostile_streams(LINK_TYPES[link] | {"auth"}),
                fz.wrong_typed_frames(fz.AUTH_FIELDS).map(lambda m: [encode(m)]),
                fz.wrong_typed_frames({t: {} for t in LINK_TYPES[link]}).map(lambda m: [encode(m)]),  # before auth: auth_required
            )
        )
    return target, authed, stream


@pytest.mark.timeout(80)
@settings(FUZZ, max_examples=80)
@given(case=auth_link_cases())
@example(case=("cp.host", True, [encode({"t": "register", "role": ["active"], "startup_id": -(2**63)})]))
@example(case=("cp.host", True, [encode({"t": "open", "terminal": "T00002", "kind": "active", "attrs": [], "epoch": 1})]))
@example(case=("cp.host", True, [encode({"t": "register", "role": "active", "startup_id": 2**64 - 1})]))
@example(case=("cp.host", False, [encode({"t": "auth", "name": "host-a", "link": "host", "mac": b"\0" * 32})]))
@example(case=("host-b.peer", False, [encode({"t": "auth", "name": "host-a", "link": "admin", "mac": b"\0" * 32})]))
@example(case=("host-a.admin", False, [encode({"t": "status"})]))
def test_fuzz_authenticated_ports(hostile_sb: SB, witness: Witness, case: tuple[str, bool, list[bytes]]) -> None:
    target, authed, stream = case
    link = hostile_sb.ports[target][1]
    c = Conn(hostile_sb.addr(target))
    try:
        if authed:
            c.authenticate(hostile_sb.secret, link, "fuzz")
            c.frames.clear()
        send_stream(c, stream)
        assert c.finish(3.0), f"{target} did not close a hostile connection after EOF"
        assert not c.garbage, f"{target} sent bytes that are not frames"
        fz.check_error_codes(c.errors(), fz.HOST_CODES if link == "host" else fz.AUTH_CODES, target)
        if not authed:
            assert not any(m.get("t") in ("auth_ok", "status", "result", "registered") for m in c.frames), (
                f"{target} answered an unauthenticated client: {c.frames}"
            )
    finally:
        c.close()
    now = hostile_sb.assert_healthy(witness, where=f"{target} fuzz")
    assert now["cp"]["active"]["name"] == "host-a" and now["cp"]["standby"]["name"] == "host-b", now["cp"]


@pytest.mark.timeout(40)
def test_replayed_authentication_is_refused(hostile_sb: SB, witness: Witness) -> None:
    for target in AUTH_TARGETS:
        address, link = hostile_sb.ports[target]
        a = Conn(address)
        b = Conn(address)
        try:
            # (a peer port takes only its host's peer: wrong_peer for any other name)
            name = "hsbctl" if link == "admin" else ("host-a" if link != "peer" or target.startswith("host-b") else "host-b")
            recorded = a.authenticate(hostile_sb.secret, link, name)
            chb = b.challenge()
            assert chb["nonce"] != a.nonce, f"{target}: two connections got the same nonce"
            b.send_raw(recorded)  # the exact bytes that authenticated connection a
            m = b.recv(3)
            assert m is not None and m.get("t") == "error" and m.get("code") == "auth_failed", f"{target}: replayed answer got {m!r}"
            assert b.drain_until_closed(3), f"{target}: connection with a replayed answer not closed"
            assert not any(f.get("t") == "auth_ok" for f in b.frames)
            # the same answer a second time on the connection it was good for is not an auth either
            seen = len(a.frames)
            a.send_raw(recorded)
            m = a.wait_for(lambda f: f.get("t") in ("error", "auth_ok"), 3)
            # an error, or (peer link: the real peer reconnected and superseded us) a plain close
            assert (m is not None and m["t"] == "error") or (m is None and a.eof), f"{target}: second auth got {m!r}"
            assert not any(f.get("t") == "auth_ok" for f in a.frames[seen:]), f"{target}: second auth_ok on one connection"
            assert a.drain_until_closed(3), f"{target}: a second 'auth' on an authenticated link did not close it"
        finally:
            a.close()
            b.close()
    nonces = set()
    for _ in range(40):
        c = Conn(hostile_sb.addr("cp.admin"))
        nonces.add(c.challenge()["nonce"])
        c.close()
    assert len(nonces) == 40
    # taking over the peer links (with the secret) for a moment must heal by itself
    hostile_sb.wait_established()
    hostile_sb.assert_healthy(witness, where="after replays")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_daemons_refuse_a_secret_file_readable_by_others(tmp_path: Path, mode: int) -> None:
    d = tmp_path / "cfg"
    sandbox.write_configs(d, terminals=2, service="echo", conventional=False)
    secret = d / "secret"
    secret.chmod(mode)
    runs = {
        "hsbcpd": [sys.executable, "-m", "hsb.cp", "--config", str(d / "cp.toml")],
        "hsbd": [sys.executable, "-m", "hsb.host", "--role", "active", "--config", str(d / "host-a.toml")],
    }
    with ThreadPoolExecutor(2) as ex:
        done = dict(
            zip(runs, ex.map(lambda argv: subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=d), runs.values()), strict=False)
        )
    for name, r in done.items():
        assert r.returncode != 0, f"{name} started with a mode {mode:o} secret file"
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, f"{name}: expected one line on stderr, got: {r.stderr!r}"
        assert str(secret.resolve()) in lines[0] and "chmod 600" in lines[0], f"{name}: {lines[0]!r}"
        assert r.stdout.strip() == "", r.stdout
        assert secret.read_bytes().strip() not in (r.stderr + r.stdout).encode()


FOREIGN: list[dict[str, Any]] = [
    {"t": "register", "role": "active", "startup_id": 1},
    {"t": "open", "terminal": "T00001", "kind": "active", "attrs": {}, "epoch": 1},
    {"t": "reply", "terminal": "T00001", "id": 1, "data": b"forged", "epoch": 1},
    {"t": "refuse", "terminal": "T00001", "reason": "forged", "epoch": 1},
    {"t": "close", "terminal": "T00001", "kind": "active", "epoch": 1},
    {"t": "switchover", "reason": "forged", "planned": True},
    {"t": "status"},
    {"t": "sessions"},
    {"t": "promote"},
    {"t": "release", "epoch": 1},
    {"t": "handover", "epoch": 1},
    {"t": "stopping", "epoch": 1},
    {"t": "hb"},
    {"t": "auth", "name": "host-a", "link": "host", "mac": b"\0" * 32},
    {"t": "deliver", "terminal": "T00001", "id": 1, "data": b"x", "redelivered": False},
    {"t": "standby_startup", "startup_id": 1, "name": "host-b"},
]


def _cp_sessions(sb: SB) -> dict[str, Any]:
    c = Conn(sb.addr("cp.admin"))
    try:
        c.authenticate(sb.secret, "admin", "test")
        c.send({"t": "sessions"})
        m = c.recv(3)
        assert m is not None and m["t"] == "sessions", m
        data: dict[str, Any] = m["data"]
        return data
    finally:
        c.close()


@pytest.mark.timeout(40)
def test_terminal_link_cannot_issue_host_or_admin_messages(hostile_sb: SB, witness: Witness) -> None:
    hostile_sb.wait_established()
    before = hostile_sb.assert_healthy(witness)
    deadline = time.monotonic() + 10
    while not ((sess_before := _cp_sessions(hostile_sb)["T00001"])["active"] and sess_before["standby"]) and time.monotonic() < deadline:
        time.sleep(0.05)  # the witness's standby session opens shortly after its active one
    assert sess_before["active"] and sess_before["standby"], sess_before
    for msg in FOREIGN:
        for after_hello in (True, False):
            c = Conn(hostile_sb.addr("cp.terminal"))
            try:
                if after_hello:
                    c.send({"t": "hello", "terminal": "T00017"})
                    w = c.wait_for(lambda m: m.get("t") in ("welcome", "error"), 5)
                    assert w is not None and w["t"] == "welcome", w
                c.send(msg)
                e = c.wait_for(lambda m: m.get("t") == "error", 3)
                assert e is not None, f"{msg['t']} on the terminal link (after hello: {after_hello}) got no error; frames {c.frames}"
                # (one with a map or an array inside is refused as it is read, before its type)
                nested = any(isinstance(v, (dict, list)) for v in msg.values())
                assert e["code"] in ("unknown_type", "bad_hello", *(["bad_fields"] if nested else [])), e
                assert c.drain_until_closed(3), f"{msg['t']} on the terminal link: connection not closed"
                assert not any(f.get("t") in ("status", "sessions", "registered", "result", "auth_ok", "challenge") for f in c.frames), c.frames
            finally:
                c.close()
    after = hostile_sb.assert_healthy(witness, where="after foreign frames")
    for k in ("epoch", "switchovers", "active_stopped_normally"):
        assert after["cp"][k] == before["cp"][k], (k, before["cp"][k], after["cp"][k])
    assert after["cp"]["active"]["name"] == "host-a" and after["cp"]["standby"]["name"] == "host-b"
    assert after["cp"]["counters"]["switchovers"] == before["cp"]["counters"]["switchovers"]
    assert [h["role"] for h in after["hosts"]] == ["active", "standby"] and after["established"]
    assert _cp_sessions(hostile_sb)["T00001"] == sess_before
    # T00017 was logged on 16 times and left: no session of it survives
    deadline = time.monotonic() + 5
    while "T00017" in (s := _cp_sessions(hostile_sb)) and (s["T00017"]["connected"] or s["T00017"]["active"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    s17 = _cp_sessions(hostile_sb).get("T00017")
    assert s17 is None or not (s17["connected"] or s17["active"]), s17


@pytest.mark.timeout(40)
def test_secret_never_in_logs_or_status(hostile_sb: SB) -> None:
    stat = hostile_sb.status()
    extra = {"status": json.dumps(stat).encode(), "sessions": json.dumps(_cp_sessions(hostile_sb)).encode()}
    r = subprocess.run([sys.executable, "-m", "hsb.ctl", *hostile_sb.info["ctl"], "status", "--json"], capture_output=True, timeout=30)
    assert r.returncode in (0, 1), r.stderr
    extra["hsbctl status --json"] = r.stdout + r.stderr
    for target in ("cp.http", "host-a.http", "host-b.http"):
        for path in ("/health", "/active", "/standby", "/metrics"):
            extra[f"{target}{path}"] = http_exchange(hostile_sb.addr(target), f"GET {path} HTTP/1.1\r\n\r\n".encode())[0]
    # an authentication failure is logged (and the log must not carry the secret either)
    c = Conn(hostile_sb.addr("cp.admin"))
    c.challenge()
    c.send({"t": "auth", "name": "probe", "link": "admin", "mac": b"\1" * 32})
    c.finish(3)
    c.close()
    assert hostile_sb.log_count("cp", "auth_failed") >= 1
    hostile_sb.assert_no_secret(extra)
