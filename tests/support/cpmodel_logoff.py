"""Logoffs in a model of the CP (docs/protocol.md §1, `bye`): a terminal says `bye` and a new run
of it (resuming or not, its ids above) logs on later under its name. Mixed into
tests/support/cpmodel_mixed.py's model (CP crashes) and cpmodel_flipmixed.py's (the flip; and so
cpmodel_crashflipmixed.py's, both).

Checked: no run, current or logged off, gets a reply twice or one it did not send the message
for, and one that does not resume reads each reply once; no reply of a run that logged off
reaches a later run under its name (once the bye's record is durable, or with no crash since it
was read); once a logoff is done (its connection closed, none of its messages held at the CP)
none of that run's messages is delivered to any host again. Counted, not failed (the promise
allows them): a logoff whose record a crash lost (its replies then an earlier run's, sent to the
next)."""

from __future__ import annotations

from typing import Any

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule

from tests.support.cpmodel import TERMINALS, WELCOMED, each_reply_once, new_client
from tests.support.keptreplies import until

RUN_STRIDE = 100  # a later run's ids start this far above its predecessor's first


def delivered(d: Any) -> tuple[str, int]:
    """(terminal, id) of a model's delivery: a tuple (cpmodel_crash.py) or a Delivery (cpmodel_flip.py)."""
    return (d[0], d[1]) if isinstance(d, tuple) else (d.name, d.mid)


class Logoffs:
    """The rule `logoff` and its bookkeeping, for a model with `clients`, `stats`, `conns`,
    `deliveries` and the CP of the moment (`_the_cp`): the runs that logged off (`retired`:
    name, client, the CP's side of its connection), the byes not known durable (`bye_unsettled`)
    and those a crash came first to (`bye_lost`), and per logged-off run whose logoff is done the
    deliveries of its messages there were then (`done`)."""

    clients: dict[str, Any]
    stats: dict[str, Any]
    conns: dict[str, Any]
    deliveries: list[Any]

    def __init__(self) -> None:
        super().__init__()
        self.retired: list[tuple[str, Any, Any]] = []
        self.bye_unsettled: set[str] = set()  # a bye read whose "o" record is not known durable
        self.bye_lost: set[str] = set()  # ... and a crash came first: its run's replies may go to the next
        self.logoffs = 0
        self.after_logoff = 0  # replies_after_logoff over the CP's lives
        self.done: dict[int, int] = {}  # index in `retired`: its deliveries when its logoff was done

    def _the_cp(self) -> Any:
        """The CP of the moment (None before the first)."""
        raise NotImplementedError

    def _retiring(self, name: str, c: Any) -> None:
        """A model's own bookkeeping for run `c` of `name` that logged off (before its next run)."""

    def _all_clients(self) -> dict[str, Any]:
        every = {f"{n} run {i}": c for i, (n, c, _) in enumerate(self.retired)}
        every.update(self.clients)
        return every

    async def _connect(self, name: str) -> None:
        p = self.conns.get(name)
        if p is not None and not p.transport.is_closing():  # its run that logged off still connected: it closes now
            p.transport.close()
            await until(lambda: p.closed, f"{name}'s old run's connection closed")
        await super()._connect(name)  # type: ignore[misc]

    async def _durable(self) -> None:
        await super()._durable()  # type: ignore[misc]
        self.bye_unsettled.clear()

    def _crashed(self, cp: Any) -> None:
        """`cp` died: a bye whose record was not known durable may be lost with it."""
        self.after_logoff += cp.counters["replies_after_logoff"]
        self.bye_lost |= self.bye_unsettled
        self.bye_unsettled.clear()

    def _may_bye(self, name: str) -> bool:
        c = self.clients[name]
        return c.state == WELCOMED and c.logged_on and not c.bye_said

    async def _say_bye(self, name: str) -> None:
        """The terminal says bye, and the CP reads it."""
        term = self._the_cp().terms[name]
        self.clients[name].bye()
        await self._until(lambda: term.leaving or term.conn is None, f"{name}'s bye read")  # type: ignore[attr-defined]
        await self._pump()  # type: ignore[attr-defined]

    def _retire(self, name: str, resume: bool) -> None:
        """After `_say_bye`: that run logged off, a new one (`resume` or not) logs on later."""
        c = self.clients[name]
        # the bye's record is not known durable until the next `durable` step: a crash before it
        # may lose it, and with it what settled that run's replies (a confirmation is dropped from
        # memory at once, its record made durable later), so a kept reply of this run comes back
        # and goes to the next run, as the promise allows
        self.bye_unsettled.add(name)
        self.logoffs += 1
        self.retired.append((name, c, self.conns.get(name)))
        self._retiring(name, c)
        self.clients[name], self.stats[name] = new_client(name, c.base + RUN_STRIDE, resume)

    # -- rules -----------------------------------------------------------------------------------
    @rule(name=st.sampled_from(TERMINALS), resume=st.booleans(), back=st.booleans())
    def logoff(self, name: str, resume: bool, back: bool) -> None:
        """The terminal says bye (what it sent before is still answered: to this connection
        while it is open, to nobody after); a new run of it (resuming or not, its ids above)
        logs on later (`back`: at once, before the hosts did anything more about the bye)."""
        if not self._may_bye(name):
            return
        self.run(lambda: self._say_bye(name))  # type: ignore[attr-defined]
        self._retire(name, resume)
        if back:
            self.run(lambda: self._connect(name))  # type: ignore[attr-defined]

    # -- the promise -----------------------------------------------------------------------------
    @invariant()
    def no_duplicate_or_unexpected(self) -> None:
        for name, c in self._all_clients().items():
            assert c.unexpected == 0 and c.early == 0, f"{name}: unexpected {c.unexpected}, early {c.early}"
            dup = [c.base + i for i, m in enumerate(c.marks) if (m >> 2) > 1]
            assert not dup, f"{name}: replies to the application more than once: {dup}; {c.log}"
        bad = {n: c.bad_data_ids for n, c in self._all_clients().items() if c.bad_data}
        assert not bad, f"a reply with data not the message's (a late answer taken?): {bad}"

    @invariant()
    def each_reply_once(self) -> None:
        each_reply_once(self._all_clients())

    @invariant()
    def nothing_delivered_after_logoff(self) -> None:
        """A logoff done (its connection closed, none of its messages held at the CP): none of
        its messages is delivered again, to any host."""
        cp = self._the_cp()
        if cp is None:
            return
        for i, (name, c, p) in enumerate(self.retired):
            n = sum(1 for d in self.deliveries if (k := delivered(d))[0] == name and c.index(k[1]) >= 0)
            if i in self.done:
                assert n <= self.done[i], f"{name}'s run {i} logged off, its logoff done, and delivered again: {self.deliveries}"
            elif (p is None or p.closed) and not any(c.index(m) >= 0 for m in cp.terms[name].held):
                self.done[i] = n

    def check_logoffs(self) -> None:
        """At the end (the final CP `_the_cp()` settled): no reply of a run that logged off went
        to a later one, unless a crash may have lost its bye."""
        self.after_logoff += self._the_cp().counters["replies_after_logoff"]
        self.nothing_delivered_after_logoff()
        for name in TERMINALS:
            if name not in self.bye_lost:  # every bye of it known: no run got an earlier one's reply
                runs = [c for n, c, _ in self.retired if n == name] + [self.clients[name]]
                assert all(c.earlier_run_replies == 0 for c in runs), f"{name}: a logged-off run's reply went to a later run: {[c.log for c in runs]}"
        event(f"logoffs: {min(self.logoffs, 2)}+")
        event(f"logoffs done: {min(len(self.done), 2)}+")
        event(f"replies after a logoff: {min(self.after_logoff, 2)}+")
        event(f"logoffs lost with a crash: {min(len(self.bye_lost), 1)}")
