"""A third host whose `host.peer` names host-a's `peer_listen` by mistake (with the same secret)
is refused on host-a's peer port with one `peer_host_refused` line naming both hosts and the fix;
host-a's link to its real peer stays up (no `peer_link_down`, no state change). Before, every
authenticated connection replaced the current one whatever its name, and the two senders
knocked each other off ~1,400 times a second. The peer itself reconnecting under its own name
(a restart) still replaces its old connection. Real loopback sockets, in-process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import hsb.host.ha as ha_mod
import hsb.host.peer as peer_mod
import hsb.ops.refusals as refusals_mod
from hsb.host.peer import PeerLink
from hsb.ports import free_port
from hsb.service.builtin import EchoService
from hsb.wire.client import FrameStream
from tests.support.inproc import hot_standby, pair_in_hot_standby, until
from tests.support.logrec import RecordingLog
from tests.support.procs import SECRET

pytestmark = pytest.mark.timeout(60)


def link(name: str, listen: str, peer: str, downs: list[str] | None = None, ups: list[int] | None = None) -> PeerLink:
    def up() -> None:
        if ups is not None:
            ups.append(1)

    hello: Callable[[], dict[str, Any]] = lambda: {"t": "peer_hello", "name": name, "role": "standby", "state": "waiting", "instance": name}  # noqa: E731
    return PeerLink(
        name=name,
        listen=listen,
        peer=peer,
        secret=SECRET,
        interval=0.05,
        timeout=0.5,
        max_frame=1 << 20,
        on_frame=lambda m: None,
        on_down=(downs if downs is not None else []).append,
        on_up=up,
        hello=hello,
    )


def addr() -> str:
    return f"127.0.0.1:{free_port()}"


async def test_a_third_host_on_the_actives_peer_port_is_refused_and_hot_standby_stays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = RecordingLog()
    monkeypatch.setattr(peer_mod, "log", rec)
    monkeypatch.setattr(refusals_mod, "log", rec)
    monkeypatch.setattr(ha_mod, "log", rec)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        await until(lambda: a.peer.outbound is not None, "host-a's sending connection up (host-b's name proved on it)")
        inbound, since = a.peer.inbound, len(rec.entries)
        c_ups: list[int] = []
        c = link("host-c", addr(), a.peer.bound, ups=c_ups)  # host-c's host.peer: host-a's peer_listen by mistake
        await c.start()
        try:
            await until(lambda: rec.events("peer_host_refused") and rec.events("peer_link_refused"), "host-c refused", timeout=10)
            refused = rec.events("peer_host_refused")
            assert len(refused) == 1, refused
            why = refused[0]["reason"]
            assert "host-c" in why and "host-a" in why and "host-b" in why and "check host.peer in host-c's config" in why, why
            assert refused[0]["level"] == "error"
            theirs = rec.events("peer_link_refused")[0]  # host-c's own line, from host-a's error frame
            assert theirs["level"] == "error" and "host.peer" in theirs["msg"] and "host-b" in theirs["reason"], theirs
            # host-a kept its link to host-b: the same receiving connection, no drop, no state change
            assert a.peer.inbound is inbound and a.peer.peer_name == "host-b" and hot_standby(a, b)
            after = [e["event"] for e in rec.entries[since:]]
            assert not {"peer_link_down", "hot_standby_lost", "state_change"} & set(after), after
            assert c.outbound is None and c_ups == [] and a.peer.up
        finally:
            await c.close()


async def test_before_the_peers_name_is_proved_the_name_of_the_link_that_is_up_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """host-a cannot reach its host.peer (nothing listens there), so it knows no proved name:
    host-b's receiving link, up, is kept against host-c; once host-b's link is gone, host-c is
    taken, and the change of name is logged."""
    rec = RecordingLog()
    monkeypatch.setattr(peer_mod, "log", rec)
    monkeypatch.setattr(refusals_mod, "log", rec)
    pa = addr()
    a_downs: list[str] = []
    a = link("host-a", pa, addr(), a_downs)
    b = link("host-b", addr(), pa)
    c = link("host-c", addr(), pa)
    await a.start()
    await b.start()
    try:
        await until(lambda: a.up and a.peer_name == "host-b", "host-b's link up at host-a")
        inbound = a.inbound
        await c.start()
        await until(lambda: rec.events("peer_host_refused"), "host-c refused")
        why = rec.events("peer_host_refused")[0]["reason"]
        assert "while its peer link with host-b is up" in why and "check host.peer in host-c's config" in why, why
        assert a.inbound is inbound and a_downs == [] and not rec.events("peer_link_down")
        await b.close()
        await until(lambda: a_downs, "host-b's link gone")
        c.wake_connect.set()  # (host-c tries again now, not after its 5 s)
        await until(lambda: a.up and a.peer_name == "host-c", "host-c taken with no link up")
        changed = rec.events("peer_host_changed")
        assert changed and changed[0]["was"] == "host-b" and changed[0]["name"] == "host-c", rec.entries
    finally:
        for x in (a, b, c):
            await x.close()


async def test_the_peer_reconnecting_under_its_name_still_replaces_its_old_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """host-b restarted while its old connection is still open at host-a: the new one is taken
    and the old one closed, as before (host-b's sending side played by two raw connections)."""
    rec = RecordingLog()
    monkeypatch.setattr(peer_mod, "log", rec)
    monkeypatch.setattr(refusals_mod, "log", rec)
    pa, pb = addr(), addr()
    a = link("host-a", pa, pb)
    b = link("host-b", pb, addr())  # host-b listens (host-a proves its name) but sends only below
    await a.start()
    await b.start()
    streams: list[FrameStream] = []
    try:
        await until(lambda: a.outbound is not None, "host-a's sending connection up (host-b's name proved on it)")
        host, port = pa.rsplit(":", 1)
        for _ in range(2):
            fs = await FrameStream.connect(host, int(port), timeout=2.0, max_frame=1 << 20)
            streams.append(fs)
            assert await fs.authenticate(SECRET, "peer", "host-b", timeout=2.0) == "host-a"
            fs.send({"t": "peer_hello", "name": "host-b", "role": "standby", "state": "waiting", "instance": "b"})
            local = "{}:{}".format(*fs.writer.get_extra_info("sockname")[:2])
            await until(lambda: a.inbound is not None and a.inbound.peer == local, "host-b's newest connection taken")  # noqa: B023
        await asyncio.wait_for(streams[0].reader.read(), 5)  # (returns at EOF: the old connection closed by host-a)
        assert streams[0].reader.at_eof()
        assert a.peer_name == "host-b" and a.up
        assert not rec.events("peer_host_refused") and not rec.events("peer_host_changed")
    finally:
        for fs in streams:
            await fs.aclose()
        for x in (a, b):
            await x.close()
