"""The server side of the challenge-response (hsb.wire.authlink) driven in-process: what it
takes, what it refuses with which one-line error, and what holds once a link is in."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hsb import LINK_PROTOCOL
from hsb.wire import auth
from hsb.wire.authlink import AuthServerProtocol
from hsb.wire.conn import PROTOCOL_ERRORS
from hsb.wire.framing import encode
from tests.support.transports import RecordingTransport

SECRET = b"k" * 32


class Link(AuthServerProtocol):
    link = "host"
    dispatch = {"ping": "on_ping"}

    def __init__(self, **kw: Any) -> None:
        super().__init__(secret=SECRET, **kw)
        self.pings = 0

    def on_ping(self, msg: dict[str, Any]) -> None:
        self.pings += 1


def opened(**kw: Any) -> tuple[Link, RecordingTransport]:
    kw.setdefault("auth_timeout", 5.0)
    p = Link(**kw)
    t = RecordingTransport("peer")
    p.connection_made(t)  # type: ignore[arg-type]
    return p, t


def sent(p: Link, t: RecordingTransport) -> list[dict[str, Any]]:
    p.flush()
    return t.frames()


def auth_frame(challenge_nonce: bytes, *, name: str = "host-a", link: str = "host", secret: bytes = SECRET, **more: Any) -> bytes:
    return encode({"t": "auth", "name": name, "link": link, "mac": auth.answer(secret, challenge_nonce, link, name), "proto": LINK_PROTOCOL, **more})


def challenge(p: Link, t: RecordingTransport) -> bytes:
    ch = sent(p, t)[0]
    assert ch["t"] == "challenge" and len(ch["nonce"]) == auth.NONCE_BYTES
    return bytes(ch["nonce"])


def refusal(p: Link, t: RecordingTransport) -> dict[str, Any]:
    errs = [f for f in sent(p, t) if f["t"] == "error"]
    assert len(errs) == 1 and p.closed and not p.authed, errs
    return errs[0]


def done(p: Link) -> None:
    p.connection_lost(None)


async def test_the_right_answer_is_taken_and_the_server_proves_itself_to_the_clients_nonce() -> None:
    p, t = opened()
    mine = auth.new_nonce()
    p.data_received(auth_frame(challenge(p, t), nonce=mine))
    ok = sent(p, t)[-1]
    assert p.authed and not p.closed and p.name == "host-a" and ok["t"] == "auth_ok"
    assert auth.verify(SECRET, mine, auth.server_role("host"), p.server_name, ok["mac"])
    assert not auth.verify(SECRET, mine, "host", p.server_name, ok["mac"])  # never a client's answer
    done(p)


@pytest.mark.parametrize(
    ("frame", "code", "says"),
    [
        (lambda n: auth_frame(n, secret=b"other"), "auth_failed", "secret differs"),
        (lambda n: encode({"t": "ping"}), "auth_required", "authenticate first"),
        (lambda n: auth_frame(n, link="admin"), "auth_failed", "serves the host link"),
        (lambda n: auth_frame(n, proto=LINK_PROTOCOL + 1), "version_mismatch", "install the same hsb version"),
        (lambda n: encode({"t": "auth", "name": "host-a", "link": "host", "mac": "text"}), "auth_failed", "'mac' must be bytes"),
        (lambda n: auth_frame(n, proto={}), "version_mismatch", "install the same hsb version"),
        (lambda n: auth_frame(n, proto=str(LINK_PROTOCOL)), "version_mismatch", f"speaks link protocol '{LINK_PROTOCOL}' (hsb"),
        (lambda n: auth_frame(n, proto=float(LINK_PROTOCOL)), "version_mismatch", f"speaks link protocol {float(LINK_PROTOCOL)} (hsb"),
    ],
)
async def test_a_wrong_auth_is_refused_with_its_own_one_line_error(frame: Any, code: str, says: str) -> None:
    before = PROTOCOL_ERRORS[("host", code)]
    p, t = opened()
    p.data_received(frame(challenge(p, t)))
    err = refusal(p, t)
    assert err["code"] == code and says in err["msg"] and "\n" not in err["msg"], err
    assert PROTOCOL_ERRORS[("host", code)] == before + 1
    done(p)


async def test_an_answer_to_another_connections_challenge_is_refused() -> None:
    a, ta = opened()
    b, tb = opened()
    na, nb = challenge(a, ta), challenge(b, tb)
    assert na != nb
    b.data_received(auth_frame(na))  # a replay: the answer made for a's nonce
    assert refusal(b, tb)["code"] == "auth_failed"
    done(a)
    done(b)


async def test_an_authenticated_link_outlives_the_auth_timeout_and_keeps_its_idle_timeout() -> None:
    p, t = opened(auth_timeout=0.1, idle_timeout=None)
    p.data_received(auth_frame(challenge(p, t)))
    assert p.authed
    await asyncio.sleep(0.3)  # an observation window: three auth timeouts
    assert not p.closed
    p.data_received(encode({"t": "ping"}))
    assert p.pings == 1
    done(p)
    q, tq = opened(auth_timeout=5.0, idle_timeout=0.1)
    q.data_received(auth_frame(challenge(q, tq)))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not q.closed:  # the idle timeout after auth is its own, not the auth timeout's 5 s
        assert loop.time() - t0 < 2.0, "an idle authenticated link was not closed"
        await asyncio.sleep(0.01)
    assert [f["code"] for f in sent(q, tq) if f["t"] == "error"] == ["idle_timeout"]
    done(q)


async def test_a_link_not_authenticated_in_time_is_closed_however_it_dribbles() -> None:
    p, t = opened(auth_timeout=0.2)
    raw = auth_frame(challenge(p, t))
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    i = 0
    while not p.closed:
        assert loop.time() - t0 < 3.0, "still open"
        if i < len(raw) - 1:
            p.data_received(raw[i : i + 1])  # a byte now and then, never the whole frame
            i += 1
        await asyncio.sleep(0.02)
    err = refusal(p, t)
    assert err["code"] == "idle_timeout" and "not logged on" in err["msg"]
    done(p)


async def test_a_second_auth_on_an_authenticated_link_is_an_unknown_type() -> None:
    p, t = opened()
    nonce = challenge(p, t)
    p.data_received(auth_frame(nonce))
    p.data_received(auth_frame(nonce))
    errs = [f for f in sent(p, t) if f["t"] == "error"]
    assert [e["code"] for e in errs] == ["unknown_type"] and p.closed
    done(p)


async def test_frames_behind_an_accepted_auth_are_handled_and_behind_a_refused_one_not() -> None:
    p, t = opened()
    p.data_received(auth_frame(challenge(p, t)) + encode({"t": "ping"}) * 3)
    await asyncio.sleep(0)
    assert p.authed and p.pings == 3
    done(p)
    q, tq = opened()
    q.data_received(auth_frame(challenge(q, tq), secret=b"other") + encode({"t": "ping"}) * 3)
    await asyncio.sleep(0)
    assert refusal(q, tq)["code"] == "auth_failed" and q.pings == 0
    done(q)


async def test_a_link_the_subclass_refuses_after_its_auth_gets_that_error_and_is_counted() -> None:
    class Refusing(Link):
        def refusal(self, name: str) -> tuple[str, str] | None:
            return ("not_the_peer", f"{name} is not this host's peer")

    before = PROTOCOL_ERRORS[("host", "not_the_peer")]
    p = Refusing(auth_timeout=5.0)
    t = RecordingTransport("peer")
    p.connection_made(t)  # type: ignore[arg-type]
    p.data_received(auth_frame(challenge(p, t)))
    err = refusal(p, t)
    assert err["code"] == "not_the_peer" and "host-a" in err["msg"]
    assert PROTOCOL_ERRORS[("host", "not_the_peer")] == before + 1
    done(p)


def test_an_answer_is_for_one_role_and_name_not_another_split_of_the_same_bytes() -> None:
    nonce = auth.new_nonce()
    assert auth.answer(SECRET, nonce, "host", "a") != auth.answer(SECRET, nonce, "hos", "ta")
    assert auth.answer(SECRET, nonce, "server:host", "") != auth.answer(SECRET, nonce, "server:", "host")


async def test_a_long_name_is_kept_and_logged_at_64_characters_and_each_read_is_heard() -> None:
    p, t = opened()
    heard = p.last_rx
    raw = auth_frame(challenge(p, t), name="h" * 300)
    await asyncio.sleep(0.01)
    p.data_received(raw)
    assert p.authed and p.name == "h" * 64 and p.last_rx > heard
    done(p)


@pytest.mark.parametrize(
    "cls, level",
    [
        ("hsb.cp.host_link:HostProtocol", "info"),
        ("hsb.host.peer:PeerInbound", "info"),
        ("hsb.cp.admin:CPAdminProtocol", "debug"),
        ("hsb.host.admin:HostAdminProtocol", "debug"),
    ],
)
async def test_an_admin_link_taken_is_logged_at_debug_only(monkeypatch: pytest.MonkeyPatch, cls: str, level: str) -> None:
    """Found by the soak walk-through: with `hsbctl status` asked every 5 s by monitoring, every
    line a quiet pair's daemons logged was `link_authenticated` of an admin link (about 2.8 MB a
    day per daemon). The pair's own links (host, peer) stay info: their coming and going matters."""
    import importlib

    from hsb.wire import authlink
    from tests.support.logrec import RecordingLog

    module, name = cls.split(":")
    real = getattr(importlib.import_module(module), name)
    link = real.link
    rec = RecordingLog()
    monkeypatch.setattr(authlink, "log", rec)
    monkeypatch.setattr(Link, "link", link)
    monkeypatch.setattr(Link, "quiet_authenticated", real.quiet_authenticated)  # (the real link's level, said by the shared code)
    p, t = opened()
    p.data_received(auth_frame(challenge(p, t), link=link))
    assert p.authed
    [said] = rec.events("link_authenticated")
    assert said["level"] == level and said["link"] == link, said
    done(p)
