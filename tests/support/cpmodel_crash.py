"""The CP's promise to terminals against a model (hypothesis, stateful; docs/protocol.md §1,
docs/cp-journal.md): hsbterm's real terminals (resuming) wired in memory to a CP core on a real
journal, an active the test drives, and in any order: messages sent, answered in any order,
connections dropped and resumed, confirms, group commits, and CP crashes (between two group
commits or inside one) recovered from the journal. After a final settle, hsbterm's own strict verdict is clean (nothing acknowledged lost,
no second reply to the application, nothing unexpected), every acknowledged id reached the active,
and every delivery of an id after its first is marked redelivered."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
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
    terminals_lose_the_cp,
    verdict,
)
from tests.support.keptreplies import connect_hsbterm, until

MOST_CRASHES = 3  # CP crashes in one example at most


class Life:
    """One CP process: its core on a journal of a new generation in `d`, restored from what the
    journal holds, and its active host (registered, announced)."""

    def __init__(self, d: Path, cfg: Any) -> None:
        self.journal, self.cp = journal_cp(d, cfg)
        self.host = fake_host(self.cp, "host-a", "active", record=True)
        self.seen = 0  # frames of the host's read so far


class CPModel(TerminalRules):
    """Model: what each terminal's application sent (hsbterm's marks), every delivery the active
    had (in order, with its mark), and the deliveries the active still owes a reply."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = model_dir("hsb-cpmodel-")
        self.life: Life | None = None

    def started(self) -> bool:
        return self.life is not None

    @initialize()
    def start(self) -> None:
        self.cfg = self._config()
        self.deliveries: list[tuple[str, int, bool]] = []  # every deliver, in order, across CP lives
        self.owed: dict[tuple[str, int], Any] = {}  # delivered to the active, not answered yet
        self.clients, self.stats = self._terminals()
        self.conns: dict[str, Any] = {}
        self.crashes = 0

        async def go() -> None:
            await self._new_life()
            for name in TERMINALS:
                await self._connect(name)

        self.run(go)

    def teardown(self) -> None:
        try:
            if self.life is not None:
                self.life.journal._stopping = True
                self.life.journal.close()
        finally:
            self.loop.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- the pieces ------------------------------------------------------------------------------
    def _config(self) -> Any:
        """The CP's config (a model's own adds [cp] lines)."""
        return cp_config(self.dir, len(TERMINALS))

    def _terminals(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The model's terminals, by name, and their stats (hsbterm's, resuming)."""
        return terminal_clients()

    async def _new_life(self) -> None:
        self.owed.clear()  # (before the registration: a logoff's messages are delivered at it)
        self.life = Life(self.dir, self.cfg)
        cp = self.life.cp
        await self._until(lambda: cp.announced, "the active registered (its epoch durable)")
        await self._pump()

    async def _connect(self, name: str) -> None:
        assert self.life is not None
        c = self.clients[name]
        self.conns[name] = connect_hsbterm(self.life.cp, c)
        await self._until(lambda: c.state == WELCOMED, f"{name} welcomed")
        await self._pump()

    def _host_work(self) -> None:
        """The active opens a session for every terminal logged on without one, and takes note
        of what it is delivered."""
        life = self.life
        assert life is not None
        cp, h = life.cp, life.host
        for name, term in cp.terms.items():
            if term.conn is not None and not term.conn.closed and term.active is None and not term.leaving and cp.announced:
                cp.host_open(h, name, "active", {})
        h.flush()
        frames = h.transport.frames()
        for m in frames[life.seen :]:
            if m.get("t") == "deliver":
                self.deliveries.append((m["terminal"], m["id"], bool(m.get("redelivered"))))
                self.owed[(m["terminal"], m["id"])] = m["data"]
        life.seen = len(frames)

    async def _durable(self) -> None:
        assert self.life is not None
        j = self.life.journal
        await until(lambda: j.pending == 0 and j._inflight is None, "the journal durable")
        await self._pump()

    # -- rules -----------------------------------------------------------------------------------
    @rule(pick=st.integers(0, 20))
    def answer(self, pick: int) -> None:
        """The active answers one of the messages it was delivered and owes (any of them)."""
        if not self.owed:
            return
        key = sorted(self.owed)[pick % len(self.owed)]
        data = self.owed.pop(key)

        async def go() -> None:
            assert self.life is not None
            self.life.cp.host_reply(self.life.host, key[0], key[1], data)
            await self._pump()

        self.run(go)

    @rule()
    def durable(self) -> None:
        self.run(self._durable)

    @rule(flushed=st.booleans(), remembers=st.booleans(), mid_group=st.booleans())
    def crash(self, flushed: bool, remembers: bool, mid_group: bool = False) -> None:
        """The CP dies between two group commits: what was appended and not written is lost; a
        new CP recovers the journal, the active registers again and every terminal that was
        logged on reconnects (resuming). `flushed`: what the CP had written to a terminal's
        socket still reaches it (else it is lost with the connection); `remembers`: the active
        still answers, on its new link, what it was given on the old one (else it forgets it);
        `mid_group`: it dies inside a group commit (what is pending goes to the writer first): the
        group lands durable, and what waited on it (acks, replies settled) never goes out."""
        if self.crashes >= MOST_CRASHES:
            return
        self.crashes += 1

        async def go() -> None:
            was = await self._die(flushed, mid_group)
            owed = dict(self.owed)
            await self._new_life()
            if remembers:
                self.owed.update(owed)
            for name in was:
                await self._connect(name)

        self.run(go)

    async def _die(self, flushed: bool, mid_group: bool) -> list[str]:
        """The CP process dies (`crash`'s `flushed` and `mid_group`): its terminals and its active
        lose it. The terminals that were logged on."""
        life = self.life
        assert life is not None
        j = life.journal
        if mid_group and j.pending and j._inflight is None:
            j._flush()  # (a lazy record's group starts now, not LAZY_S later)
        if currently_in_test_context():  # (not when a test drives the model's steps itself)
            event(f"crash: inside a group commit {j._inflight is not None}")
        j._stopping = True  # no group commit starts from now on: what is pending is lost
        was = await terminals_lose_the_cp(j, self.clients, self.conns, flushed)
        life.host.transport.close()
        return was

    # -- the promise -----------------------------------------------------------------------------
    @invariant()
    def repeats_marked(self) -> None:
        repeats_marked(self.deliveries)

    @invariant()
    def no_duplicate_or_unexpected(self) -> None:
        no_duplicate_or_unexpected(self.clients)

    def settle(self) -> None:
        """Every terminal logged on, the journal durable, and the active answers everything it
        is delivered (again, too) with the same data, until every message is answered."""
        life = self.life
        assert life is not None
        self.run(lambda: self._settle(life.cp))

    def _answer_owed(self) -> None:
        assert self.life is not None
        for (name, mid), data in sorted(self.owed.items()):
            self.life.cp.host_reply(self.life.host, name, mid, data)
        self.owed.clear()

    def check_at_end(self) -> None:
        self.settle()
        self.repeats_marked()
        event(f"crashes: {self.crashes}")
        event(f"deliveries marked redelivered: {min(sum(d[2] for d in self.deliveries), 3)}+")
        event(f"resent replies ignored by a terminal: {min(sum(c.resent_ignored for c in self.clients.values()), 3)}+")
        event(f"messages sent: {min(sum(c.sent for c in self.clients.values()) // 4 * 4, 12)}+")
        verdict(self.clients, self.stats, {(n, i) for n, i, _ in self.deliveries})
