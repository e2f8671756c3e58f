"""The flip with terminals that do not resume and logoffs, against a model (hypothesis, stateful;
docs/protocol.md §1, docs/design.md §5.6, §5.7): cpmodel_flip.py's model (two hosts, the active
lost and the standby flipped to, planned switchovers, late answers) with T00002 and T00003 not
resuming (hsbterm's, resume off: a hello without last_reply), and logoffs, as in cpmodel_mixed.py
(tests/support/cpmodel_logoff.py): a terminal says `bye` (at any point of the flip: the active
lost, in the middle of the flip, between a planned switchover's release and its handover) and a
new run of it, resuming or not, logs on later or at once. The hosts' sessions are followed by
the frames the CP sends them (opened, refused, closed; demoted, those the flip keeps): the
standby, reading the ring, closes the standby sessions of a run that logged off.

Beyond the flip model's promise (no duplicate, nothing unexpected, deliveries only to the
announced unreleased active, every delivery of an id after its first marked redelivered): the
resuming terminal gets hsbterm's strict verdict, the others its verdict less the replies lost in
flight at a dropped connection (counted, the promise allows them), and read each reply once,
marked resent or not (hsbterm would ignore a second resent one); a reply the active decided
while a terminal that does not resume was away (both sides saw its drop, or the CP had closed
it) reaches it at a later logon, marked resent, the first time it comes (or it was lost in flight
at a drop since); the CP closes a terminal's connection only on the classic path: at a grant,
the terminal had a session at the host that lost the role and no standby session at the one
granted it (docs/design.md §5.6, 4.; so a terminal with a standby session is not disconnected by
a failover or a switchover), and each of those is closed by the end of the flip. Logoffs:
cpmodel_logoff.py's promise (no reply of a run that logged off reaches a later run; once its
logoff is done none of its messages is delivered again); a host is never told a session is
opened for a terminal while it still holds one of a run that logged off (the CP closes that
run's sessions at whichever host holds them, the flip's new active too), and at the end each
terminal's session at the active is its current run's. A reply lost in flight
(`reply_lost_in_flight`, tests/support/cpmodel_lostreply.py: the CP wrote it to the connection of
a terminal that does not resume, its discard durable, and the connection dropped before it
arrived; in a flip, or with one next, too) never comes again, to that run or a later one, no host
is handed its message again, and it is counted lost at the end."""

from __future__ import annotations

from typing import Any

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule

from tests.support.cpmodel import DOWN, TERMINALS, WELCOMED, awaited_not_resuming, each_reply_once, mixed_terminals, mixed_verdict
from tests.support.cpmodel_flip import FlipModel
from tests.support.cpmodel_logoff import Logoffs
from tests.support.cpmodel_lostreply import LostInFlight
from tests.support.keptreplies import until


class FlipMixedModel(LostInFlight, Logoffs, FlipModel):
    """FlipModel's, with logoffs (`Logoffs`), the sessions each host holds by run (`sessions`), and: the replies a terminal that does not resume must get at a later logon
    (`must_get`: client, id, its welcomes when the active answered), the connections a grant may
    close (`classic`: by terminal, the CP's side), and those the CP did close (`closed_by_cp`)."""

    def __init__(self) -> None:
        super().__init__()
        self.must_get: list[tuple[Any, int, int, bool]] = []  # (and whether it comes marked resent)
        self.classic: dict[str, Any] = {}
        self.closed_by_cp: list[tuple[str, Any]] = []
        self.classic_closed = 0
        self.sessions: dict[Any, dict[str, Any]] = {}  # by link (a new one may reuse a dead one's id()): the run of each session there
        self.demoted: dict[Any, tuple[set[str], set[str]]] = {}  # by link: its sessions at its demotion, those kept
        self.old_sessions = 0  # standby sessions of a run that logged off closed by their host (the ring)
        self.cut_in_flip = 0  # replies lost in flight (`reply_lost_in_flight`) in a flip, or with one next
        self.in_flip = False  # (a flip under way as the active answered the one being cut)

    def _terminals(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return mixed_terminals()

    def _watch(self) -> None:
        cp = self.cp
        reply, granted = cp.host_reply, cp._granted

        def host_reply(host: Any, name: str, mid: int, data: Any) -> None:
            self._noting(host, name, mid)
            reply(host, name, mid, data)

        def _granted(host: Any, *args: Any, **kwargs: Any) -> Any:
            self._granting(host)
            return granted(host, *args, **kwargs)

        cp.host_reply, cp._granted = host_reply, _granted

    def _the_cp(self) -> Any:
        return self.cp

    def _sent(self, h: Any, data: bytes) -> None:
        """And the sessions the host holds, by the run they are for: one opened (a session of a
        run that logged off there, never closed: a failure), one refused or closed gone; demoted,
        it keeps those the flip names (`standby_kept`) of the ones it had then."""
        from hsb.wire.framing import Decoder

        super()._sent(h, data)
        held = self.sessions.setdefault(h, {})
        for m in Decoder().feed(data):
            t = m.get("t")
            if t in ("open_failed", "session_closed"):
                held.pop(m["terminal"], None)
            elif t == "demoted":
                self.demoted[h] = (set(held), set())
                if not m.get("keeps"):
                    held.clear()
            elif t == "standby_kept" and h in self.demoted:
                had, kept = self.demoted[h]
                kept.update(m["items"])
                if m.get("last"):
                    del self.demoted[h]
                    for name in had - kept:
                        held.pop(name, None)
            elif t in ("opened", "opened_batch"):
                for name in m["terminals"] if t == "opened_batch" else [m["terminal"]]:
                    old = held.get(name)
                    assert old is None or old is self.clients[name], (
                        f"{h.name} opened a session of {name}, still holding one of a run that logged off"
                    )
                    held[name] = self.clients[name]

    def _follow(self) -> None:
        """The standby reads the ring: it closes the standby sessions of runs that logged off,
        and opens those it lacks."""
        cp = self.cp
        sb = cp.standby
        if sb is not None and sb.usable:
            sb.flush()
            for name, run in list(self.sessions.get(sb, {}).items()):
                if run is not self.clients[name]:
                    del self.sessions[sb][name]
                    cp.host_close(sb, name, "standby")
                    self.old_sessions += 1
        super()._follow()

    def _noting(self, host: Any, name: str, mid: int) -> None:
        """The active answers `mid`: noted if this reply is the one the CP makes (it holds the
        message, not answered yet) and its terminal does not resume and is away."""
        cp, c = self.cp, self.clients[name]
        held = cp.terms[name].held.get(mid)
        if c.resume or c.index(mid) < 0 or held is None or held.replying or held.early is not None or host is not cp.active:
            return
        p = self.conns.get(name)
        if c.state == DOWN or (p is not None and p.transport.is_closing()):
            self.must_get.append((c, mid, c.welcomes, True))

    def _granting(self, host: Any) -> None:
        """A grant to `host`: the connections it may close (the classic path), with those of a
        flip still going on (which it completes first)."""
        cp = self.cp
        if cp.flipping is None:
            self.classic = {}
        for name, term in cp.terms.items():
            a, sb = term.active, term.standby
            if term.conn is not None and not term.conn.closed and a is not None and a.host is not host and (sb is None or sb.host is not host):
                self.classic[name] = term.conn

    async def _connect(self, name: str) -> None:
        await super()._connect(name)
        p, c = self.conns[name], self.clients[name]
        close = p.close

        def closed_by_the_cp() -> None:
            if not p.transport.is_closing() and not c.bye_said:  # (after its bye: the CP's to close)
                self.closed_by_cp.append((name, p))
            close()

        p.close = closed_by_the_cp

    def _awaited(self, c: Any) -> Any:
        if c.resume:
            return c.outstanding
        return awaited_not_resuming(c, self.cp.terms[c.name], self.owed)

    # -- rules -----------------------------------------------------------------------------------
    @rule(pick=st.integers(0, 20), drop_first=st.booleans(), back=st.booleans())
    def answer_around_drop(self, pick: int, drop_first: bool, back: bool) -> None:
        """The active answers a message of a connected terminal that does not resume, its
        connection dropped (both sides see it) just before (`drop_first`), or in the same turn
        (before the discard can be durable: the reply then goes at a later logon, marked or not,
        as that logon may come before the discard is durable); `back`: it logs on again at once."""
        self._host_work()
        a = self.cp.active  # (a host lost or demoted answers nothing the CP takes: `late_answer`)
        keys = sorted(
            k
            for k, d in self.owed.items()
            if not self.clients[k[0]].resume
            and self.clients[k[0]].state == WELCOMED
            and self.clients[k[0]].index(k[1]) >= 0
            and a is not None
            and d.link is a
            and a.usable
        )
        if not keys:
            return
        key = keys[pick % len(keys)]
        d = self.owed.pop(key)
        c, p = self.clients[key[0]], self.conns[key[0]]

        async def go() -> None:
            if drop_first:
                p.transport.close()
                await until(lambda: c.state == DOWN and p.closed, f"{c.name}'s drop seen by both sides")
            elif self.cp.terms[c.name].held.get(key[1]) is not None:
                self.must_get.append((c, key[1], c.welcomes, False))
            self._answer(d, d.data, self.cp.epoch)
            if not drop_first:
                p.transport.close()
                await until(lambda: c.state == DOWN and p.closed, f"{c.name}'s drop seen by both sides")
            await self._pump()
            if back:
                await self._connect(c.name)

        self.run(go)

    def _answerable(self, d: Any) -> bool:
        a = self.cp.active  # (a host lost or demoted answers nothing the CP takes: `late_answer`)
        return a is not None and d.link is a and a.usable

    def _answer_one(self, key: tuple[str, int], d: Any) -> None:
        self._answer(d, d.data, self.cp.epoch)

    def _cut_coming(self) -> None:
        self.in_flip = self.cp.flipping is not None or self.cp.granting is not None

    @rule(pick=st.integers(0, 20), back=st.booleans(), then=st.sampled_from(("nothing", "failover", "switchover", "switchover_followed")))
    def reply_lost_in_flight(self, pick: int, back: bool, then: str) -> None:
        """A terminal that does not resume loses a reply in flight (`LostInFlight`); `then`: the
        active lost (the flip) or a planned switchover (its standby sessions opened first, or not)
        at once; `back`: the terminal logs on again after that."""

        def flip() -> None:
            flips = self.counted["failover"] + self.counted["switchover"]
            if then == "failover":
                self.lose("active")
            elif then != "nothing":
                self._switchover(False, then == "switchover_followed")
            self.cut_in_flip += self.in_flip or self.counted["failover"] + self.counted["switchover"] > flips

        self._lose_reply_in_flight(pick, back, flip)

    @rule(name=st.sampled_from(TERMINALS), resume=st.booleans(), finish=st.booleans(), follow_first=st.booleans())
    def logoff_in_switchover(self, name: str, resume: bool, finish: bool, follow_first: bool) -> None:
        """A planned switchover (as `switchover`) with the terminal's bye read between the
        active's release and its handover; a new run of it logs on later."""
        if self._may_bye(name) and self._switchover(finish, follow_first, lambda: self._say_bye(name)):
            self._retire(name, resume)

    @rule()
    def durable(self) -> None:
        """The journal made durable (and turns of the loop): each reply a terminal must get at a
        later logon it has had by now, if it is logged on again (or was lost in flight at a drop
        since): its "d" record durable, it is written."""
        self.run(self._durable)

        def unsent() -> list[str]:
            return [
                f"{c.name} {mid}: logged on again since welcome {w}, durable, and not sent; log {c.log}"
                for c, mid, w, _ in self.must_get
                if c.state == WELCOMED and c.welcomes > w and not any(i == mid for i, _, _ in c.log) and not any(d > w for d in c.drops)
            ]

        # (its "d" record may go to the writer only now: a logon the active's session let through
        # in the turns above; the journal's thread may take longer than those turns)
        try:
            self.run(lambda: self._until(lambda: not unsent(), "each kept reply sent at a logon since"))
        except AssertionError:
            raise AssertionError("; ".join(unsent())) from None

    # -- the promise -----------------------------------------------------------------------------
    @invariant()
    def closed_on_the_classic_path_only(self) -> None:
        for name, p in self.closed_by_cp:
            assert self.classic.get(name) is p, (
                f"{name}'s connection closed by the CP, not on the classic path of a grant (a standby session, or no grant)"
            )
        self.classic_closed += len(self.closed_by_cp)
        self.closed_by_cp.clear()
        if self.cp is not None and self.cp.flipping is None:
            left = [n for n, p in self.classic.items() if not p.transport.is_closing()]
            assert not left, f"the flip is done and {left} on the classic path still connected"
            self.classic = {}

    @invariant()
    def kept_delivered_so_far(self) -> None:
        self.kept_delivered(final=False)

    def kept_delivered(self, final: bool) -> int:
        """Each reply decided while its terminal (not resuming) was away came at a later logon,
        marked resent, the first time it came; `final`: it came, or was lost in flight at a drop
        since its next logon (their number)."""
        lost = 0
        for c, mid, w, marked in self.must_get:
            got = [(r, w2) for i, r, w2 in c.log if i == mid]
            if got:
                assert (got[0][0] or not marked) and got[0][1] > w, (
                    f"{c.name} {mid}: kept for a logon after welcome {w}, marked resent; had {got}; log {c.log}"
                )
            elif final:
                assert any(d > w for d in c.drops), f"{c.name} {mid}: decided while it was away (welcome {w}), never came, no drop since; log {c.log}"
                lost += 1
        return lost

    def _verdict(self, delivered: set[tuple[str, int]]) -> None:
        lost = mixed_verdict(self.clients, self.stats, delivered)
        each_reply_once(self._all_clients())  # (the final settle's replies too)
        self.check_logoffs()
        cp = self.cp
        own = {n: self.sessions.get(cp.active, {}).get(n) is c for n, c in self.clients.items()}
        assert all(own.values()), f"a terminal's session at the active {cp.active.name} not its own run's: {own}"
        kept_lost = self.kept_delivered(final=True)
        self.closed_on_the_classic_path_only()
        self.lost_in_flight_at_end(lost)
        event(f"... of those in a flip or with one next: {min(self.cut_in_flip, 1)}+")
        event(f"kept for a terminal that does not resume, checked: {min(len(self.must_get), 2)}+")
        event(f"... of those lost in flight at a later drop: {min(kept_lost, 1)}+")
        event(f"closed on the classic path: {min(self.classic_closed, 2)}+")
        event(f"standby sessions of a logged-off run closed by their host: {min(self.old_sessions, 1)}+")
