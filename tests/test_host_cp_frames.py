"""A frame from the CP that the host cannot take (a field missing or of the wrong type: another
version, a bug) drops the CP link the way any other loss does: the host's link-loss handling
runs (deliveries cancelled, the lease and registration reset), the CP is told why, and the host
connects and registers again. It once only logged `cp_link_error` and reconnected, with the host
still thinking itself registered and granted. CP and both hosts in-process (tests/support/inproc)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from hsb.service.builtin import EchoService
from tests.support.inproc import hot_standby as established
from tests.support.inproc import keep_sending, pair_in_hot_standby, until

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    "frame",
    [
        {"t": "deliver_batch", "items": [["T00001", 1, "x"]]},  # an item short of its flag
        {"t": "session_closed"},  # no terminal
        {"t": "registered", "role": "active", "epoch": "one"},  # an epoch that is no number
        {"t": "deliver", "terminal": "T00001", "id": "7", "data": "x"},  # an id that is no number
        {"t": "deliver_batch", "items": [["T00001", 9, "x", False], ["T00001", "10", "y", False]]},
        {"t": "session_request", "terminal": ["T00001"]},  # (raised in a task: the request was dropped unsaid)
        {"t": "session_request", "terminal": 5},  # (answered with a refusal naming 5: the CP dropped the link)
        {"t": "session_request", "terminal": "T00001", "attrs": ["x"]},
        {"t": "open_failed", "terminal": 5, "kind": "standby"},
    ],
    ids=["short_item", "no_terminal", "bad_epoch", "text_id", "text_id_in_batch", "list_name", "int_name", "list_attrs", "int_name_failed"],
)
async def test_a_frame_the_host_cannot_take_is_a_link_loss_not_a_silent_reconnect(tmp_path: Path, frame: dict[str, Any]) -> None:
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        core.set_paused(True, "test")  # host-a comes back as the active: nobody takes over meanwhile
        downs: list[str] = []
        real_down = a.cp.on_down

        def on_down(why: str) -> None:
            downs.append(why)
            real_down(why)

        a.cp.on_down = on_down
        link = core.active
        assert link is not None and link.name == "host-a"
        link.send(frame)
        await until(lambda: bool(downs), "the host's link-loss handling")
        assert "bad_fields" in downs[0] and frame["t"] in downs[0], downs
        await until(lambda: core.active is not None and core.active is not link and core.active.usable and a.ha.registered, "host-a registered again")
        assert a.ha.role == "active" and b.ha.role == "standby"
        core.set_paused(False, "test")
        await until(lambda: established(a, b), "hot standby again")


async def test_a_host_whose_ha_loop_was_held_up_registers_once_on_the_live_link(tmp_path: Path) -> None:
    """The CP link dropped and came back while the HA loop was held up: the `cp_up` events of the
    links since lost are stale. Only the live link's one sends `register`; a second register on
    that link would be refused (bad_role) and the link closed."""
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        tasks[2].cancel()  # host-b's HA loop held up
        await asyncio.gather(tasks[2], return_exceptions=True)
        for _ in range(2):  # its CP link lost and made again, twice, meanwhile
            n = b.cp.connects
            link = next(h for h in cp.hosts if h.name == "host-b" and not h.closed)
            link.abort()

            def relinked(n: int = n) -> bool:
                return b.cp.connects > n and b.cp.up

            await until(relinked, "host-b's link made again")
        assert [k for k, _ in b.ha.events].count("cp_up") == 2
        registers: list[dict[str, Any]] = []
        real_send = b.cp.send

        def send(msg: dict[str, Any]) -> bool:
            if msg.get("t") == "register":
                registers.append(msg)
            return real_send(msg)

        b.cp.send = send  # type: ignore[method-assign]  # (the registrations noted on the way)
        tasks.append(asyncio.ensure_future(b.ha.run()))
        await until(lambda: core.standby is not None and core.standby.name == "host-b" and b.ha.registered, "host-b registered again")
        await until(lambda: established(a, b), "hot standby again")
        assert len(registers) == 1, registers
        assert core.standby is not None and not core.standby.closed


async def test_an_active_registered_again_at_a_cp_that_keeps_no_sessions_closes_its_own(tmp_path: Path) -> None:
    """With `resume_window = 0` (or a CP of before) the CP keeps none of the active's sessions when
    its link is made again: the host closes its own too, so a terminal gone meanwhile is not left
    active on the host for ever (named in every batch, carried to the standby), and one still
    connected is opened again when the CP asks."""
    from hsb.host.sessions import ACTIVE
    from tests.support.hostclient import FakeTerminal

    async with pair_in_hot_standby(tmp_path, EchoService, resume_window=0) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        core.set_paused(True, "test")
        gone = await FakeTerminal.connect(cp.bound["terminal"], "T00001")
        stays = await FakeTerminal.connect(cp.bound["terminal"], "T00002")
        for t in (gone, stays):
            await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
        sessions = a.sessions_ctl.sessions
        assert sessions.table["T00001"].state == ACTIVE and sessions.table["T00002"].state == ACTIVE
        link = core.active
        assert link is not None
        link.abort()
        await gone.close()
        await until(lambda: core.active is not None and core.active is not link and core.active.usable and a.ha.registered, "host-a registered again")
        await until(lambda: sessions.table["T00002"].state == ACTIVE and core.terms["T00002"].active is not None, "T00002 opened again")
        await until(lambda: sessions.table["T00001"].state != ACTIVE, "T00001 closed at the host")
        core.set_paused(False, "test")
        await stays.close()


async def test_a_clean_stop_of_the_cp_takes_nothing_more_from_open_connections(tmp_path: Path) -> None:
    """A stop of hsbcpd while terminals keep sending: closing its listeners does not stop its open
    connections, so it stops reading them (terminals and hosts alike, whatever back-pressure later
    says); the journal's drain then has only what was already taken to write, not new records as
    they keep coming, and what the terminals send meanwhile goes to the next CP."""
    from tests.support.hostclient import FakeTerminal

    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        t = await FakeTerminal.connect(cp.bound["terminal"], "T00001")
        await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
        sender = keep_sending(t)
        try:
            await t.wait(lambda m: m["t"] == "reply" and m["id"] >= 20)
            cp.should_exit.set()
            await tasks[0]
            conns = [x.conn for x in core.terms.values() if x.conn is not None] + list(cp.hosts)
            taken: list[Any] = []
            real_append = core.journal.append

            def append(payload: Any, done: Any = None, lazy: bool = False) -> int:
                # once the stop has begun (its first step, before any await, freezes the links);
                # before it, the load's messages are taken as usual
                if payload[0] == "a" and cp.state == "stopping":
                    taken.append(payload[2])
                return int(real_append(payload, done, lazy))

            core.journal.append = append  # type: ignore[method-assign]
            shutdown = asyncio.ensure_future(cp.shutdown())
            for _ in range(50):  # the load goes on while it stops: 50 more of its messages, paced
                await asyncio.sleep(0.001)
            await shutdown
        finally:
            sender.cancel()
        assert taken == [], f"{len(taken)} messages taken after the stop began"
        assert conns and all(c.frozen and c.reading_paused for c in conns)
        conns[0].resume_reading()  # (back-pressure freeing room) does not start reading again
        assert conns[0].reading_paused


async def test_a_service_that_changes_the_attrs_it_is_given_changes_no_session(tmp_path: Path) -> None:
    """A service's open_session gets a copy of the terminal's attributes: one that writes into
    them changes neither what the active records (and writes to the takeover file) nor what the
    standby compares with its own, so the terminal still gets its standby session."""
    from hsb.host.sessions import STANDBY
    from tests.support.hostclient import FakeTerminal

    class Scribbler(EchoService):
        async def open_session(self, terminal: str, attrs: dict[str, Any], standby: bool) -> None:
            attrs["seen_by"] = self.host  # a service's own note: host-a's differs from host-b's

    async with pair_in_hot_standby(tmp_path, Scribbler) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        t = await FakeTerminal.connect(cp.bound["terminal"], "T00001")
        await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
        await until(lambda: b.sessions_ctl.sessions.table["T00001"].state == STANDBY, "host-b's standby session for T00001")
        await until(lambda: core.terms["T00001"].standby is not None, "the CP's standby session for T00001")
        assert "seen_by" not in a.sessions_ctl.sessions.table["T00001"].attrs
        assert "seen_by" not in b.sessions_ctl.sessions.table["T00001"].attrs
        await t.close()


async def test_the_hosts_say_their_max_frame_and_cap_their_replies_at_the_cps(tmp_path: Path) -> None:
    """A CP whose max_frame is smaller than the hosts' (1 MiB here): each host said its own at
    its register, and caps its replies at what the CP's frames take, so a large reply is answered
    with an error instead of dropping the CP link at every try."""
    from hsb.wire.framing import payload_max

    cp_frame = 64 * 1024
    async with pair_in_hot_standby(tmp_path, EchoService, max_frame=cp_frame) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        assert core.host_frames == {"host-a": a.cfg.host.max_frame, "host-b": b.cfg.host.max_frame}
        assert core.max_data == payload_max(cp_frame)  # the CP's own is the smallest
        assert a.delivery.max_reply == b.delivery.max_reply == payload_max(cp_frame) < payload_max(a.cfg.host.max_frame)


async def test_a_cp_that_sends_a_bad_frame_after_every_registration_is_not_reconnected_to_in_a_tight_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CP that answers every registration of host-a with a frame it cannot take (another
    version, a bug): each link was made again at once (the backoff reset at every registration),
    a tight loop of registrations, each one an epoch journalled at the CP and every delivery
    cancelled. The links back off, doubling, said as `cp_link_backoff`; a link that then stays up
    starts the backoff over. (The CP turns good while host-a waits out its third backoff, not
    when its fourth link is seen: that link's registration may still be to come, and good.)"""
    from hsb.host import cplink as cplink_mod
    from tests.support.logrec import RecordingLog

    rec = RecordingLog()
    monkeypatch.setattr(cplink_mod, "log", rec)
    settled_s = 0.5
    monkeypatch.setattr(cplink_mod, "LINK_SETTLED_S", settled_s, raising=False)  # (2 s)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        core.set_paused(True, "test")  # host-a comes back as the active: nobody takes over meanwhile
        real_register = core.host_register
        bad = True
        good = 0  # host-a's registrations answered without the bad frame

        def register(host: Any, role: str, startup_id: int) -> None:
            nonlocal good
            real_register(host, role, startup_id)
            if host.name == "host-a":
                if bad:
                    host.send({"t": "session_request", "terminal": "T00001", "attrs": ["x"]})
                else:
                    good += 1

        def backoffs() -> list[dict[str, Any]]:
            return rec.events("cp_link_backoff")

        monkeypatch.setattr(core, "host_register", register)
        link = core.active
        assert link is not None
        t0 = time.monotonic()
        link.abort()  # host-a registers again, and meets the bad frame
        await until(lambda: len(backoffs()) >= 3, "host-a's third bad link backed off", timeout=20)
        bad = False
        await until(lambda: good and a.ha.registered and a.cp.up, "host-a registered on a good link", timeout=20)
        took = [e["wait_s"] for e in backoffs()]
        assert time.monotonic() - t0 >= sum(took[:3]) - 0.01 >= 0.8, (time.monotonic() - t0, took)  # each one waited out
        for i, wait in enumerate(took[:3]):  # 0.25, 0.5, 1 s (±50 %: the jitter)
            base = cplink_mod.BAD_LINK_FIRST * 2**i
            assert 0.5 * base - 0.001 <= wait <= 1.5 * base + 0.001, took
        assert [e["in_a_row"] for e in backoffs()][:3] == [1, 2, 3]
        assert "bad_fields" in backoffs()[0]["reason"]
        n = len(backoffs())
        seen = {"link": -1, "at": 0.0}

        def settled() -> bool:
            """host-a's link has been up past LINK_SETTLED_S (by this test's clock, which starts
            once it sees the link: later than the link's own)."""
            now = time.monotonic()
            if a.cp.connects != seen["link"] or not (a.cp.up and a.ha.registered and core.active is not None):
                seen.update(link=a.cp.connects, at=now)
                return False
            return now - seen["at"] > settled_s

        await until(settled, "host-a's good link up past LINK_SETTLED_S", timeout=20)
        assert len(backoffs()) == n  # (a good link is never backed off)
        bad = True
        assert core.active is not None
        core.active.abort()
        await until(lambda: len(backoffs()) > n, "the next bad link")
        assert backoffs()[n]["in_a_row"] == 1  # started over
        core.set_paused(False, "test")


@pytest.mark.parametrize("code", ["standby_exists", "handed_over"])
async def test_a_cp_that_refuses_every_registration_is_not_reconnected_to_in_a_tight_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str
) -> None:
    """A CP that refuses host-b's registration (standby_exists: the link of a standby it still
    takes for alive, a second process of that name) sends its error and closes the link: host-b
    made it again at once (the backoff reset once authenticated), a tight loop of links and
    refused registrations at the CP. Such links back off as bad ones do, said as
    `cp_link_backoff` with the CP's error; once the CP takes the registration the host is the
    standby again. `handed_over`, an error the host acts on by registering otherwise (not as a
    standby: it goes on as one), is made again at once the first time only."""
    from hsb.host import cplink as cplink_mod
    from tests.support.logrec import RecordingLog

    rec = RecordingLog()
    monkeypatch.setattr(cplink_mod, "log", rec)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        real_register = core.host_register
        refusing = True

        def register(host: Any, role: str, startup_id: int) -> None:
            if refusing and host.name == "host-b":
                host.close_with_error(code, "host-x is already the standby host")
                return
            real_register(host, role, startup_id)

        monkeypatch.setattr(core, "host_register", register)
        link = core.standby
        assert link is not None
        links = b.cp.connects
        t0 = time.monotonic()
        link.abort()  # host-b registers again, and is refused
        more = 4 if code == "standby_exists" else 5  # (handed_over: the second refused link is the first backed off)
        await until(lambda: b.cp.connects >= links + more, f"host-b's link made {more} times", timeout=20)
        assert time.monotonic() - t0 >= 0.8, time.monotonic() - t0  # three backoffs: at least 0.125 + 0.25 + 0.5 s
        said = rec.events("cp_link_backoff")
        assert [e["in_a_row"] for e in said][:3] == [1, 2, 3], said
        assert f"the CP ended the link: {code}: host-x is already the standby host" in said[0]["reason"]
        refusing = False
        await until(lambda: core.standby is not None and not core.standby.closed and b.ha.registered, "host-b the standby again", timeout=20)


async def test_a_host_the_cp_fences_neither_backs_off_nor_makes_its_link_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CP's `fenced` error (an epoch it no longer has) makes the host exit 75, and the CP
    closes the link after it. That link was backed off as one the CP would refuse again (a
    `cp_link_backoff` warning while the host exits) and then made again: a fenced host
    registering anew while it closes. Now it is neither backed off nor made again."""
    from hsb.cli import EXIT_FENCED
    from hsb.host import cplink as cplink_mod
    from tests.support.logrec import RecordingLog

    rec = RecordingLog()
    monkeypatch.setattr(cplink_mod, "log", rec)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        core.set_paused(True, "test")  # (host-b does not take over meanwhile)
        link = core.active
        assert link is not None
        links = a.cp.connects
        link.close_with_error("fenced", f"epoch 1 is not the current epoch {core.epoch}")
        await until(lambda: a.ha.exit is not None and a.ha.exit.code == EXIT_FENCED, "host-a fenced")
        await until(lambda: a.cp.task is not None and a.cp.task.done(), "host-a's CP link loop over")
        assert a.cp.connects == links and not a.cp.up
        assert rec.events("cp_link_backoff") == [], rec.events("cp_link_backoff")
        assert len(rec.events("cp_link_down")) == 1  # (that link only)
        core.set_paused(False, "test")


async def test_a_host_started_as_the_active_rejoins_as_the_standby_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """host-b, started with --role active while host-a is the active, is refused (active_exists)
    and rejoins as the standby (hsb.host.rejoin), nothing to do, operations.md says. The CP's
    error ended that link, and every such link was backed off, as if the CP would refuse the same
    registration again: a `cp_link_backoff` warning and a wait before the standby's registration,
    in a normal start. A refusal this host acts on by registering otherwise is made again at once
    (the first backoff made 30 s here: a wait fails the test)."""
    from hsb.host import cplink as cplink_mod
    from hsb.host.server import HostServer
    from tests.support.logrec import RecordingLog
    from tests.support.procs import SECRET

    rec = RecordingLog()
    monkeypatch.setattr(cplink_mod, "log", rec)
    monkeypatch.setattr(cplink_mod, "BAD_LINK_FIRST", 30.0)
    monkeypatch.setattr(cplink_mod, "BAD_LINK_CAP", 30.0)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        tasks[2].cancel()  # (host-b's HA loop: host-b stops)
        await asyncio.gather(tasks[2], return_exceptions=True)
        await b.close()
        await until(lambda: core.standby is None, "host-b gone")
        b2 = HostServer(b.cfg, "active", SECRET, EchoService("host-b"))
        ha: asyncio.Future[Any] | None = None
        try:
            await b2.startup()
            ha = asyncio.ensure_future(b2.ha.run())
            await until(lambda: b2.ha.role == "standby" and b2.ha.registered and core.standby is not None, "host-b the standby", timeout=10)
            assert b2.rejoined_from == "host-a" and b2.cp.connects == 2, b2.cp.connects
            assert rec.events("cp_link_backoff") == [], rec.events("cp_link_backoff")
        finally:
            if ha is not None:
                ha.cancel()
                await asyncio.gather(ha, return_exceptions=True)
            await b2.close()


@pytest.mark.parametrize(
    ("frame", "said"),
    [
        ({"t": "deliver", "terminal": "T" * 10_000, "id": 1, "data": "x"}, "(10000 characters) must be 1..48 bytes"),
        ({"t": "deliver", "terminal": "", "id": 1, "data": "x"}, "terminal name '' (0 characters) must be 1..48 bytes"),
        ({"t": "deliver", "terminal": "T 1", "id": 1, "data": "x"}, "with no spaces"),
        ({"t": "deliver", "terminal": "T00001", "id": 0, "data": "x"}, "a message id must be positive, not 0"),
        ({"t": "deliver", "terminal": "T00001", "id": -5, "data": "x"}, "a message id must be positive, not -5"),
        ({"t": "deliver_batch", "items": [["T00001", 1, "x", False], ["é" * 25, 2, "y", False]]}, "(25 characters) must be 1..48 bytes"),
    ],
    ids=["long_name", "empty_name", "spaced_name", "id_0", "negative_id", "long_utf8_name_in_batch"],
)
async def test_a_delivery_for_a_name_or_id_the_cp_could_not_have_is_a_protocol_error_not_handed_to_the_service(
    tmp_path: Path, frame: dict[str, Any], said: str
) -> None:
    """The host took any text as a terminal name and any integer as an id: a 10 KB name went to
    the service and stayed a key of Delivery.handed for good, an id 0 or below was delivered. A
    name the CP's config could not hold (hsb.terminals.name_problem: 1..48 bytes of UTF-8, no
    spaces) or an id below 1 is the link's protocol error (bad_fields, said to the CP), and
    nothing of the frame reaches the service."""
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        core.set_paused(True, "test")  # host-a comes back as the active: nobody takes over meanwhile
        handled: list[Any] = []
        real_handle = a.service.handle

        async def handle(terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
            handled.append((terminal, message_id))
            return await real_handle(terminal, message_id, data, redelivered)

        a.service.handle = handle  # type: ignore[method-assign]
        downs: list[str] = []
        real_down = a.cp.on_down

        def on_down(why: str) -> None:
            downs.append(why)
            real_down(why)

        a.cp.on_down = on_down
        link = core.active
        assert link is not None and link.name == "host-a" and a.ha.granted
        link.send(frame)
        await until(lambda: bool(downs), "the host's link-loss handling")
        assert "bad_fields" in downs[0] and said in downs[0], downs
        assert len(downs[0]) < 600, downs[0]  # (the name shown cut short)
        await until(lambda: core.active is not None and core.active is not link and core.active.usable and a.ha.registered, "host-a registered again")
        assert handled == [] and all(len(k) <= 48 for k in a.delivery.handed), (handled, list(a.delivery.handed))
        core.set_paused(False, "test")
        await until(lambda: established(a, b), "hot standby again")


async def test_an_active_session_the_cp_refuses_is_shown_counted_and_cleared_once_it_opens(tmp_path: Path) -> None:
    """A session the CP refused to open (`open_failed`) was only logged: the terminal was not
    served and hsbctl status and the metrics said nothing. The host's status keeps the last
    refused terminals with the CP's reason (cleared for one once its session opens), the metric
    counts them by kind, and hsbctl status shows them in one line."""
    import json

    from hsb.ctl.status import render
    from hsb.ctl.verdict import summarize
    from hsb.ops.metrics import HostCollector
    from tests.support.hostclient import FakeTerminal

    def refused_count(kind: str) -> float:
        ms = [s for m in HostCollector(a.status).collect() for s in m.samples if s.name == "hsb_session_open_failed_total"]
        return next(s.value for s in ms if s.labels == {"kind": kind})

    def ctl_lines() -> list[str]:  # (hsbctl reads the status as JSON)
        hosts = [{**json.loads(json.dumps(h.status(), default=str)), "reachable": True} for h in (a, b)]
        return render(summarize({**cp.status(), "reachable": True}, hosts)).splitlines()

    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        real_open = core.host_open
        refusals = 0

        def host_open(host: Any, name: str, kind: str, attrs: dict[str, Any]) -> None:
            nonlocal refusals
            if name == "T00001" and kind == "active" and refusals == 0:  # (as for a role moved meanwhile)
                refusals += 1
                host.send({"t": "open_failed", "terminal": name, "kind": kind, "reason": "this host is not the active host"})
                return
            real_open(host, name, kind, attrs)

        core.host_open = host_open  # type: ignore[method-assign]
        assert refused_count("active") == 0 and a.status()["open_failed"]["recent"] == []
        t = await FakeTerminal.connect(cp.bound["terminal"], "T00001")
        await until(lambda: a.status()["open_failed"]["recent"], "the refusal in host-a's status")
        st = a.status()["open_failed"]
        assert st["active"] == 1 and st["standby"] == 0, st
        (r,) = st["recent"]
        assert (r["terminal"], r["kind"], r["reason"]) == ("T00001", "active", "this host is not the active host") and r["at"] > 0, r
        assert refused_count("active") == 1 and refused_count("standby") == 0
        line = next((x for x in ctl_lines() if "SESSIONS REFUSED" in x), None)
        assert line is not None and "T00001 (active)" in line and "this host is not the active host" in line, ctl_lines()

        await t.close()  # the terminal logs on again: this time the CP opens its session
        await until(lambda: core.terms["T00001"].conn is None, "the CP seeing the terminal gone")
        t = await FakeTerminal.connect(cp.bound["terminal"], "T00001")
        await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
        await until(lambda: not a.status()["open_failed"]["recent"], "the refusal cleared once the session opened")
        assert a.status()["open_failed"]["active"] == 1 and refused_count("active") == 1  # (a counter: it stays)
        assert not any("SESSIONS REFUSED" in x for x in ctl_lines())
        await t.close()


@pytest.mark.parametrize(
    ("items", "said"),
    [
        (["T" * 10_000], "(10000 characters) must be 1..48 bytes"),
        ([5], "a terminal name must be text, not int"),
        (["T00001", "é" * 25], "(25 characters) must be 1..48 bytes"),
        ("T00001", "items must be an array, not str"),
    ],
    ids=["long_name", "int_name", "bad_name_after_a_good_one", "text_items"],
)
async def test_standby_kept_names_the_cp_could_not_have_are_a_protocol_error_and_none_is_kept(tmp_path: Path, items: Any, said: str) -> None:
    """The deliveries' names are checked (above), a `standby_kept` frame's were not: a 10 KB name
    or a number would have been kept as a standby session's key. The whole frame is checked
    before any item is taken: a bad name is the link's protocol error (bad_fields, the name cut
    short), and no item of the frame becomes a standby session, nor reaches the service."""
    from hsb.host.sessions import STANDBY

    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        opened: list[str] = []
        real_open = b.service.open_session

        async def open_session(terminal: str, attrs: dict[str, Any], standby: bool) -> None:
            opened.append(terminal)
            await real_open(terminal, attrs, standby)

        b.service.open_session = open_session  # type: ignore[method-assign]
        downs: list[str] = []
        real_down = b.cp.on_down

        def on_down(why: str) -> None:
            downs.append(why)
            real_down(why)

        b.cp.on_down = on_down
        link = core.standby
        assert link is not None and link.name == "host-b" and not b.ha.granted
        b.sessions_ctl.expect_kept()  # as at a demotion: this host waits for the CP's standby_kept
        link.send({"t": "standby_kept", "epoch": b.ha.epoch, "items": items, "last": True})
        await until(lambda: bool(downs), "the host's link-loss handling")
        assert "bad_fields" in downs[0] and "standby_kept" in downs[0] and said in downs[0], downs
        assert len(downs[0]) < 600, downs[0]  # (the name shown cut short)
        assert opened == [] and b.sessions.table["T00001"].state != STANDBY, opened
        assert all(type(k) is str and len(k) <= 48 for k in b.sessions_ctl.kept), b.sessions_ctl.kept
        await until(lambda: core.standby is not None and core.standby is not link and b.ha.registered, "host-b registered again")
        await until(lambda: established(a, b), "hot standby again")
