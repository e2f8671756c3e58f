"""The CP's flip against a model (hypothesis, stateful; docs/design.md §5.6, §5.7): hsbterm's real
terminals (resuming) wired in memory to a CP core on a real journal, and TWO hosts the test
drives, host-a and host-b, one active and one standby with standby sessions open for the
terminals. In any order: messages sent, answered in any order by whichever host is active,
connections dropped and resumed, confirms; the standby following the active's sessions; the
active lost (its link closed, as the CP sees a SIGKILL of hsbd: the standby, told `active_lost`,
asks for the role and the CP flips to it), the standby lost, a lost host coming back as the new
standby; a planned switchover (release, the active finishing its work or not, handover); and
the late answers of a host that is no longer the active (lost, on its dead link or on the link it
came back on, or demoted), which the CP must refuse or ignore: they reach no terminal.

After a final settle, as in tests/support/cpmodel_crash.py: hsbterm's strict verdict is clean, every
acknowledged id reached a host, every delivery of an id after its first is marked redelivered;
and also: every delivery went to the host that was the announced, unreleased active at that
moment (the CP's `_taking` and the flip after its announcement: docs/design.md §5.6, 3.), and
every terminal has a session at the active."""

from __future__ import annotations

import shutil
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, rule

from tests.support.cpcore import cp_config, fake_host
from tests.support.cpmodel import (
    TERMINALS,
    WELCOMED,
    TerminalRules,
    journal_cp,
    model_dir,
    no_duplicate_or_unexpected,
    repeats_marked,
    terminal_clients,
    verdict,
)
from tests.support.keptreplies import connect_hsbterm, until

HOSTS = ("host-a", "host-b")
BATCH = 64 * 1024  # the deliver_batch bytes the hosts read (hsbd's: the flip's re-delivery in batches)


class Delivery:
    """One message as a host's link was handed it, and what the CP was at that moment."""

    __slots__ = ("name", "mid", "data", "again", "link", "epoch", "was_active")

    def __init__(self, name: str, mid: int, data: Any, again: bool, link: Any, epoch: int, was_active: bool) -> None:
        self.name, self.mid, self.data, self.again = name, mid, data, again
        self.link, self.epoch, self.was_active = link, epoch, was_active

    def __repr__(self) -> str:
        return f"{self.link.name}@{self.epoch}:{self.name}/{self.mid}{'R' if self.again else ''}{'' if self.was_active else '!NOT-ACTIVE'}"


class FlipModel(TerminalRules):
    """Model: what each terminal's application sent (hsbterm's marks), every delivery a host had
    (in order, with its mark and whether that host was the active then), the deliveries the
    active owes a reply, and those owed by a host that is no longer the active (late answers)."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = model_dir("hsb-cpflip-")
        self.cp: Any = None
        self.journal: Any = None

    def started(self) -> bool:
        return self.cp is not None

    async def _released(self, a: Any, follow_first: bool, finish: bool) -> None:
        """A planned switchover's start: (`follow_first`) the standby sessions opened first, the
        active `a` releases, and (`finish`) answers all it owes."""
        from hsb.wire.framing import encode

        if follow_first:
            self._follow()
        a.data_received(encode({"t": "release", "epoch": self.cp.epoch}))
        await self._pump()
        if finish:
            for key in sorted(self.owed):
                d = self.owed.pop(key)
                self._answer(d, d.data, self.cp.epoch)
            await self._pump()

    @initialize()
    def start(self) -> None:
        # flips of one terminal a slice: rules run in the middle of a flip
        self.cfg = cp_config(self.dir, len(TERMINALS), cp="flip_slice = 1\n")
        self.deliveries: list[Delivery] = []
        self.owed: dict[tuple[str, int], Delivery] = {}  # delivered to the active, not answered yet
        self.stale: dict[tuple[str, int, str], Delivery] = {}  # owed by a host no longer the active
        self.links: dict[str, Any] = {}  # each host's newest link
        self.seen: dict[int, int] = {}  # id(link): its frames read so far
        self.starts = 0
        self.instances: dict[str, tuple[int, str]] = {}  # each host's process: (startup_id, instance)
        self.registers_as: dict[str, str] = {}  # the role each host's process last registered as
        self.clients, self.stats = self._terminals()
        self.conns: dict[str, Any] = {}
        self.counted = {"failover": 0, "switchover": 0, "late_answers": 0, "classic": 0}

        async def go() -> None:
            self.journal, self.cp = journal_cp(self.dir, self.cfg)
            self._watch()
            await self._join("host-a", "active")
            await self._join("host-b", "standby")
            for name in TERMINALS:
                await self._connect(name)
            self._follow()
            await self._pump()

        self.run(go)

    def teardown(self) -> None:
        try:
            if self.journal is not None:
                self.journal._stopping = True
                self.journal.close()
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- the pieces ------------------------------------------------------------------------------
    def _terminals(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The model's terminals, by name, and their stats (hsbterm's, resuming)."""
        return terminal_clients()

    def _watch(self) -> None:
        """What a model notes of the new CP (`self.cp`) before any host registers: nothing."""

    def _verdict(self, delivered: set[tuple[str, int]]) -> None:
        """The terminals' verdict at the end (hsbterm's strict one, `delivered`: every id a host had)."""
        verdict(self.clients, self.stats, delivered)

    async def _join(self, host: str, role: str, *, again: bool = False) -> None:
        """A new hsbd process of `host` (a new instance) registers as `role` on a new link, as
        hsbd does (keeping its sessions as standby ones when demoted, reading deliver_batch).
        `again`: the same process registers again (a CP restarted), and may be refused."""
        from hsb.wire.framing import encode

        if not again:
            self.starts += 1
            self.instances[host] = (self.starts, f"{host}-{self.starts}")
        self.registers_as[host] = role
        startup_id, instance = self.instances[host]
        h = fake_host(self.cp, host, record=True)
        real = h.send_raw

        def send_raw(data: bytes, h: Any = h) -> None:
            if not h.closed:
                self._sent(h, data)
            real(data)

        h.send_raw = send_raw
        self.links[host] = h
        self.seen[id(h)] = 0
        reg = {
            "t": "register",
            "role": role,
            "startup_id": startup_id,
            "instance": instance,
            "deliver_batch": BATCH,
            "keep_standby": True,
        }
        h.data_received(encode(reg))
        if role == "active":
            await self._until(lambda: (again and h.closed) or (self.cp.active is h and self.cp.announced), f"{host} registered as the active")
        else:
            await self._until(lambda: h.closed or h.role is not None, f"{host} registered as the standby")
        await self._pump()

    def _sent(self, h: Any, data: bytes) -> None:
        """What the CP hands a host's link, noted as it is handed: its deliveries, and whether
        that host was then the announced, unreleased active."""
        from hsb.wire.framing import Decoder

        cp = self.cp
        active = cp.active is h and cp.announced and h.role == "active" and not h.released
        for m in Decoder().feed(data):
            if m.get("t") == "deliver":
                items = [(m["terminal"], m["id"], m["data"], bool(m.get("redelivered")))]
            elif m.get("t") == "deliver_batch":
                items = [(it[0], it[1], it[2], bool(it[3])) for it in m["items"]]
            else:
                continue
            for name, mid, payload, again in items:
                d = Delivery(name, mid, payload, again, h, cp.epoch, active)
                self.deliveries.append(d)
                if active:
                    self.owed[(name, mid)] = d

    async def _connect(self, name: str) -> None:
        c = self.clients[name]
        self.conns[name] = connect_hsbterm(self.cp, c)
        await self._until(lambda: c.state == WELCOMED, f"{name} welcomed")
        await self._pump()

    def _host_work(self) -> None:
        """The active opens a session for every terminal logged on without one, a standby told
        `active_lost` asks for the role."""
        from hsb.wire.framing import encode

        cp = self.cp
        if cp.quiet_until is not None or cp.kept_for is not None:
            # the CP waits for a lost active to register again (hsb.cp.alone); no host here does
            # but through a rule: the wait runs out (its clock moved on), and it tells the standby
            cp.quiet_until = None if cp.quiet_until is None else time.monotonic() - 1.0
            cp.kept_for = None if cp.kept_for is None else (cp.kept_for[0], time.monotonic() - 1.0)
            cp._last_tick = time.monotonic()
            cp.tick()
        a = cp.active
        if a is not None and a.usable and cp.announced and not a.released and a.role == "active":
            for name, term in cp.terms.items():
                if term.conn is not None and not term.conn.closed and term.active is None and not term.leaving:
                    cp.host_open(a, name, "active", {})
        # what the active owed and is no longer the active for: owed by nobody now (late answers)
        for key, d in list(self.owed.items()):
            if d.link is not cp.active or d.epoch != cp.epoch:
                del self.owed[key]
                self.stale[(d.name, d.mid, d.link.name)] = d
        for h in list(self.links.values()):
            h.flush()
            frames = h.transport.frames()
            new, self.seen[id(h)] = frames[self.seen[id(h)] :], len(frames)
            for m in new:
                if m.get("t") == "active_lost" and h is cp.standby and not h.closed:
                    h.data_received(encode({"t": "switchover", "reason": "active_lost", "req": self.starts, "peer_closed": True}))

    def _follow(self) -> None:
        """The standby, reading the ring: a standby session for every session at the active."""
        cp = self.cp
        sb = cp.standby
        if sb is None or not sb.usable:
            return
        for name, term in cp.terms.items():
            if term.active is not None and term.active.host is cp.active and term.standby is None and not term.leaving:
                cp.host_open(sb, name, "standby", {})

    def _serving(self) -> bool:
        cp = self.cp
        a = cp.active
        return a is not None and a.usable and cp.announced and a.role == "active" and cp.granting is None

    def _answer(self, d: Delivery, data: Any, epoch: int) -> None:
        from hsb.wire.framing import encode

        d.link.data_received(encode({"t": "reply", "terminal": d.name, "id": d.mid, "data": data, "epoch": epoch}))

    # -- rules -----------------------------------------------------------------------------------
    @rule(pick=st.integers(0, 20))
    def answer(self, pick: int) -> None:
        """The active answers one of the messages it was delivered and owes (any of them)."""
        self._host_work()
        if not self.owed:
            return
        key = sorted(self.owed)[pick % len(self.owed)]
        d = self.owed.pop(key)

        async def go() -> None:
            self._answer(d, d.data, self.cp.epoch)
            await self._pump()

        self.run(go)

    @rule(pick=st.integers(0, 20), on_new_link=st.booleans())
    def late_answer(self, pick: int, on_new_link: bool) -> None:
        """A host no longer the active answers (with other data) a message it was handed when it
        was: on the link it was handed it on (closed, if it was lost), or on its newest link (the
        standby it came back as, or became when demoted). The CP takes none of it: no terminal
        gets a reply, and what was held stays held."""
        cp = self.cp
        cands = sorted(k for k, d in self.stale.items() if not (on_new_link and self.links[d.link.name] is cp.active))
        if not cands:
            return
        d = self.stale.pop(cands[pick % len(cands)])
        link = self.links[d.link.name] if on_new_link else d.link
        if link is cp.active:
            return  # (its current link is the active's: a stale epoch there fences it, a real active's own doing)
        self.counted["late_answers"] += 1
        event("late answer on " + ("a closed link" if link.closed else f"the {link.role}'s link"))
        term = cp.terms[d.name]
        held = term.held.get(d.mid)
        waiting = held is not None and not held.replying and held.early is None  # (the late answer's only chance)

        async def go() -> None:
            late = Delivery(d.name, d.mid, "late", d.again, link, d.epoch, False)
            self._answer(late, late.data, d.epoch)  # (other data: taken, hsbterm's check_data would see it)
            await self._pump()

        self.run(go)
        if waiting:
            now = term.held.get(d.mid)
            assert now is held and not held.replying and held.early is None, f"a late answer of {d} was taken"

    @rule()
    def follow(self) -> None:
        """The standby reads the ring: it opens the standby sessions it lacks."""

        async def go() -> None:
            self._follow()
            await self._pump()

        self.run(go)

    @rule(role=st.sampled_from(("active", "standby")))
    def lose(self, role: str) -> None:
        """A host's process dies (SIGKILL): the CP sees its link closed by the other end. The
        active lost: the standby, told `active_lost`, asks for the role, and the flip (one
        terminal a slice) goes on in the rules after this one."""
        cp = self.cp
        h = cp.active if role == "active" else cp.standby
        if h is None or h.closed or (role == "active" and not self._serving()):
            return
        sb = cp.standby
        takes_over = role == "active" and sb is not None and sb.usable

        async def go() -> None:
            h.transport.close()
            h.connection_lost(None)
            if takes_over:
                self.counted["failover"] += 1
                await self._until(lambda: cp.active is sb and self._serving(), f"{sb.name} granted the role")
            await self._pump()

        self.run(go)

    @rule(host=st.sampled_from(HOSTS))
    def come_back(self, host: str) -> None:
        """A lost host's hsbd starts again and registers as the standby (with no active serving,
        it is told `active_lost` and takes over)."""
        cp = self.cp
        if host in self.links and not self.links[host].closed:
            return
        if cp.standby is not None and cp.standby.usable:
            return  # (the other host is the standby: it is lost first, or it waits)

        async def go() -> None:
            await self._join(host, "standby")
            if not self._serving():
                self.counted["failover"] += 1
                await self._until(self._serving, f"{host} granted the role")
            await self._pump()

        self.run(go)

    @rule(finish=st.booleans(), follow_first=st.booleans())
    def switchover(self, finish: bool, follow_first: bool) -> None:
        """A planned switchover (hsbctl switchover): the active releases, answers what it owes
        (`finish`; else its wait ran out), and hands over. `follow_first`: the standby opened
        every standby session first and the handover (its frame, waiting for none) grants at
        once; else the handover does not wait (the CP's own API, as tests/support/cpcore.switch),
        and a terminal without a standby session takes the classic path."""
        self._switchover(finish, follow_first)

    def _switchover(self, finish: bool, follow_first: bool, released: Callable[[], Awaitable[None]] | None = None) -> bool:
        """`switchover`'s steps, `released` run between the release and the handover; False: no
        switchover can be made now (nothing done)."""
        from hsb.wire.framing import encode

        cp = self.cp
        a, sb = cp.active, cp.standby
        if not self._serving() or sb is None or not sb.usable:
            return False
        self.counted["switchover"] += 1

        async def go() -> None:
            await self._released(a, follow_first, finish)
            if released is not None:
                await released()
            if follow_first:
                a.data_received(encode({"t": "handover", "epoch": cp.epoch}))
            else:
                cp.host_handover(a, wait=False)
            await self._until(lambda: cp.active is sb and self._serving(), f"{sb.name} granted the role")
            await self._pump()

        self.run(go)
        return True

    # -- the promise -----------------------------------------------------------------------------
    @invariant()
    def repeats_marked(self) -> None:
        repeats_marked((d.name, d.mid, d.again) for d in self.deliveries)

    @invariant()
    def delivered_to_the_active_only(self) -> None:
        wrong = [d for d in self.deliveries if not d.was_active]
        assert not wrong, f"delivered to a host that was not the announced active then: {wrong}"

    @invariant()
    def no_duplicate_or_unexpected(self) -> None:
        no_duplicate_or_unexpected(self.clients)
        bad = {n: c.bad_data_ids for n, c in self.clients.items() if c.bad_data}
        assert not bad, f"a reply with data not the message's (a late answer taken?): {bad}"

    def settle(self) -> None:
        """A host serving as the active (a lost one back), every terminal logged on, the journal
        durable, and the active answers everything it is delivered (again, too) with the same
        data, until every message is answered."""

        async def go() -> None:
            cp = self.cp
            if not self._serving():
                for host in HOSTS:
                    if not self._serving() and (host not in self.links or self.links[host].closed):
                        if cp.standby is None or not cp.standby.usable:
                            await self._join(host, "standby")
                await self._until(self._serving, "a host serving as the active")
            await self._until(lambda: cp.flipping is None, "the flip done")
            await self._settle(cp)

        self.run(go)

    def _answer_owed(self) -> None:
        for key in sorted(self.owed):
            d = self.owed.pop(key)
            self._answer(d, d.data, self.cp.epoch)

    async def _durable(self) -> None:
        j = self.journal
        await until(lambda: j.pending == 0 and j._inflight is None, "the journal durable")
        await self._pump()

    def check_at_end(self) -> None:
        self.settle()
        self.repeats_marked()
        self.delivered_to_the_active_only()
        cp = self.cp
        for name, term in cp.terms.items():
            assert term.conn is not None and not term.conn.closed, f"{name} not logged on after the settle"
            assert term.active is not None and term.active.host is cp.active, f"{name} has no session at the active {cp.active.name}"
        event(f"failovers: {min(self.counted['failover'], 2)}+")
        event(f"switchovers: {min(self.counted['switchover'], 2)}+")
        event(f"late answers: {min(self.counted['late_answers'], 2)}+")
        event(f"terminals on the classic path: {min(sum(r['classic'] for r in cp.switchovers), 2)}+")
        event(f"deliveries marked redelivered: {min(sum(d.again for d in self.deliveries), 3)}+")
        event(f"messages sent: {min(sum(c.sent for c in self.clients.values()) // 4 * 4, 12)}+")
        self._verdict({(d.name, d.mid) for d in self.deliveries})
