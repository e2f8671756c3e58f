"""The CP's promise to a mix of terminals against a model (hypothesis, stateful; docs/protocol.md
§1, `hello`, `bye`, `reply`): cpmodel_crash.py's model (one active, CP crashes recovered from
the journal) with T00002 and T00003 terminals that do not resume (hsbterm's, resume off: a hello without
last_reply), and logoffs (tests/support/cpmodel_logoff.py): a terminal says `bye` and a new run
of it (resuming or not) logs on later under its name. The active answers in any order, and
(`answer_newest_first`) every message it owes a terminal newest first: a later run's, away by
then, before the one its earlier run sent before its bye (answered to nobody).

Checked: no terminal, run or kind, ever gets a reply twice or one it did not send the message
for, and one that does not resume reads each reply once, marked resent or not (hsbterm would
ignore a second resent one); the resuming ones get hsbterm's strict verdict; a reply the CP decided while a terminal that
does not resume was away (its connection gone before the active answered, or before the
discard was durable) whose "r" record was durable, or whose discard was durable with no CP crash
since, reaches it at its next logon, marked resent, across CP crashes too, and the CP keeps it
until then (`kept_while_away`: the answer to an earlier run's message settles none of them; it
once did, commit 05709bd); no reply of a run that logged off reaches a later run under its name (once
the bye's record is durable, or with no crash since it was read), and once its logoff is done (its
connection closed, none of its messages held) none of its messages is delivered again; a reply
lost in flight (`reply_lost_in_flight`, tests/support/cpmodel_lostreply.py: the CP wrote it to the
connection of a terminal that does not resume, its discard durable, and the connection dropped
before it arrived) never comes again, to that run or a later one, across CP crashes too, no host
is handed its message again, and it is counted lost at the end. Counted, not failed (the
promise allows them): a reply to a terminal that does not resume lost in flight at a drop or a
crash, a logoff whose record a crash lost (its replies then an earlier run's, sent to the next)."""

from __future__ import annotations

from typing import Any

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule

from tests.support.cpmodel import DOWN, MOST_SENT, TERMINALS, WELCOMED, awaited_not_resuming, mixed_terminals, mixed_verdict
from tests.support.cpmodel_crash import CPModel
from tests.support.cpmodel_logoff import Logoffs
from tests.support.cpmodel_lostreply import LostInFlight
from tests.support.keptreplies import until


class MixedModel(LostInFlight, Logoffs, CPModel):
    """CPModel's, with logoffs (`Logoffs`: the runs that logged off) and replies lost in flight
    (`LostInFlight`); per terminal that does not resume,
    the messages the active answered while it was away in this CP life (`away`), and the replies
    it must get at its next logon (`must_get`: client, id, its welcomes when that was known:
    at a `durable` step, or at the logon)."""

    def __init__(self) -> None:
        super().__init__()
        self.away: dict[str, set[int]] = {n: set() for n in TERMINALS}
        self.must_get: list[tuple[Any, int, int]] = []
        self.dropping: str | None = None
        self.bug_order = 0  # `answer_newest_first` answered an away run's message, then an earlier run's

    def _terminals(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return mixed_terminals()

    # -- the pieces ------------------------------------------------------------------------------
    async def _new_life(self) -> None:
        if self.life is not None:  # a crash: what was not durable is gone
            self._crashed(self.life.cp)
            for s in self.away.values():
                s.clear()
        await super()._new_life()
        cp = self.life.cp if self.life is not None else None
        assert cp is not None
        real = cp.host_reply

        def host_reply(host: Any, name: str, mid: int, data: Any) -> None:
            self._noting(cp, name, mid)
            real(host, name, mid, data)

        cp.host_reply = host_reply

    def _noting(self, cp: Any, name: str, mid: int) -> None:
        """The active answers `mid`: noted for a terminal that does not resume and is away (or
        is dropped in this very turn) if this reply is the one the CP makes (it holds the message,
        not answered yet)."""
        c = self.clients[name]
        held = cp.terms[name].held.get(mid)
        if c.resume or c.index(mid) < 0 or held is None or held.replying or held.early is not None:
            return
        if c.state == DOWN or self.dropping == name:
            self.away[name].add(mid)

    def _the_cp(self) -> Any:
        return None if self.life is None else self.life.cp

    async def _connect(self, name: str) -> None:
        c = self.clients[name]
        if self.life is not None:  # (not at the start)
            # answered while it was away and settled since (its discard durable, no crash since:
            # `_new_life` forgets those): kept ("r") for this logon, though no `durable` step came
            # (one still held goes to this connection once its discard is durable)
            held = self.life.cp.terms[name].held
            self.must_get.extend((c, mid, c.welcomes) for mid in sorted(self.away[name]) if mid not in held)
            self.kept_while_away()
        self.away[name].clear()
        await super()._connect(name)
        # its kept replies go once their "d" records are durable: the logon is had when they came
        # (the journal's thread may take longer for that than the turns of the loop above)
        kept = [mid for c2, mid, w in self.must_get if c2 is c and c.welcomes == w + 1]
        await self._until(lambda: all(any(i == mid for i, _, _ in c.log) for mid in kept), f"{name}'s kept replies {kept} at its logon")

    async def _durable(self) -> None:
        await super()._durable()
        for name, mids in self.away.items():
            c = self.clients[name]
            if c.state == DOWN:  # away from the answer to now, the discard and "r" durable
                self.must_get.extend((c, mid, c.welcomes) for mid in sorted(mids))
                mids.clear()

    def _serving(self) -> bool:
        return self.life is not None and self.life.cp.announced

    def _answer_one(self, key: tuple[str, int], d: Any) -> None:
        assert self.life is not None
        self.life.cp.host_reply(self.life.host, key[0], key[1], d)

    def _awaited(self, c: Any) -> Any:
        if c.resume or self.life is None:
            return c.outstanding
        return awaited_not_resuming(c, self.life.cp.terms[c.name], self.owed)

    # -- rules -----------------------------------------------------------------------------------
    @rule(pick=st.integers(0, 20), then_durable=st.booleans())
    def answer_then_drop(self, pick: int, then_durable: bool) -> None:
        """The active answers a message of a connected terminal, and in the same turn its
        connection drops (before the discard can be durable); `then_durable`: the journal is
        made durable next, the terminal still away."""
        keys = sorted(k for k in self.owed if self.clients[k[0]].state == WELCOMED and self.clients[k[0]].index(k[1]) >= 0)
        if not keys:
            return
        key = keys[pick % len(keys)]
        data = self.owed.pop(key)
        name = key[0]
        c, p = self.clients[name], self.conns[name]

        async def go() -> None:
            assert self.life is not None
            self.dropping = name
            try:
                self.life.cp.host_reply(self.life.host, name, key[1], data)
            finally:
                self.dropping = None
            p.transport.close()
            await until(lambda: c.state == DOWN and p.closed, f"{name}'s drop seen by both sides")
            await self._pump()
            if then_durable:
                await self._durable()

        self.run(go)

    @rule(name=st.sampled_from(TERMINALS), resume=st.booleans())
    def logoff_then_next_run_away(self, name: str, resume: bool) -> None:
        """The terminal says bye with a message the active still owes it (sent first if it owes
        none); its next run (`resume` or not) logs on at once, sends a message and, once that is
        with the active, leaves without a bye. (With `answer_newest_first` next: the order of
        commit 05709bd's bug, the later run's reply made while it is away and then the logoff's
        message answered, to nobody.)"""
        if not self._may_bye(name):
            return
        c = self.clients[name]

        async def send_one(c: Any) -> None:
            if c.sent < MOST_SENT:
                c.submit()
            await self._durable()  # (its "a" durable: with the active now, or soon after the bye)

        if not any(k[0] == name and c.index(k[1]) >= 0 for k in self.owed):
            self.run(lambda: send_one(c))
        self.run(lambda: self._say_bye(name))
        self._retire(name, resume)
        self.run(lambda: self._connect(name))
        c, p = self.clients[name], self.conns[name]

        async def away() -> None:
            await send_one(c)
            p.transport.close()
            await until(lambda: c.state == DOWN and p.closed, f"{name}'s drop seen by both sides")
            await self._pump()

        self.run(away)

    @rule(pick=st.integers(0, 20), durable=st.booleans())
    def answer_newest_first(self, pick: int, durable: bool) -> None:
        """The active answers every message it owes one terminal, newest first: a later run's
        before those of an earlier run that logged off (answered to nobody), the oldest last;
        `durable`: the journal made durable after each answer (so a later run away by now has
        its reply kept before the earlier run's is answered)."""
        names = sorted({n for n, _ in self.owed})
        if not names:
            return
        name = names[pick % len(names)]
        keys = sorted((k for k in self.owed if k[0] == name), reverse=True)
        c = self.clients[name]
        if c.state == DOWN and c.index(keys[0][1]) >= 0 and c.index(keys[-1][1]) < 0:
            self.bug_order += 1  # (the away run's first, then its earlier run's)

        async def go() -> None:
            for key in keys:
                self._answer_one(key, self.owed.pop(key))
                await self._pump()
                if durable:
                    await self._durable()

        self.run(go)

    def _retiring(self, name: str, c: Any) -> None:
        self.away[name].clear()

    # -- the promise -----------------------------------------------------------------------------
    @invariant()
    def kept_delivered_so_far(self) -> None:
        self.kept_delivered(final=False)

    @invariant()
    def kept_while_away(self) -> None:
        """Each reply the CP must send a terminal that does not resume at its next logon is kept
        at the CP until that logon (an answer to another message, an earlier run's say, settles
        none of them)."""
        cp = self._the_cp()
        for c, mid, w in self.must_get:
            if c is self.clients[c.name] and c.welcomes == w and not any(i == mid for i, _, _ in c.log):
                assert mid in cp.terms[c.name].replies, f"{c.name} {mid}: kept for its next logon, and the CP keeps it no more; log {c.log}"

    def kept_delivered(self, final: bool) -> None:
        """Each reply the CP kept for a terminal that does not resume, decided while it was away
        and durable, came at its next logon, marked resent (`final`: that logon was had)."""
        for c, mid, w in self.must_get:
            got = [(r, w2) for i, r, w2 in c.log if i == mid]
            if not got and not final and c.welcomes <= w:
                continue  # (not logged on since)
            assert got and got[0] == (True, w + 1), f"{c.name} {mid}: kept for its next logon (welcome {w + 1}), had {got}; log {c.log}"

    def check_at_end(self) -> None:
        self.settle()
        self.check_logoffs()
        self.repeats_marked()
        self.no_duplicate_or_unexpected()
        self.each_reply_once()
        self.kept_delivered(final=True)
        lost = mixed_verdict(self.clients, self.stats, {(n, i) for n, i, _ in self.deliveries})
        self.lost_in_flight_at_end(lost)
        event(f"crashes: {self.crashes}")
        event(f"kept for a terminal that does not resume, checked: {min(len(self.must_get), 2)}+")
        event(f"a run away answered before its earlier run that logged off: {min(self.bug_order, 1)}+")
