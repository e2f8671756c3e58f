"""A reply lost in flight to a terminal that does not resume, in a model of the CP (docs/protocol.md
§1, `hello` without last_reply): the CP writes the reply to its connection (the discard, "d",
durable first) and the connection drops before the reply arrives. The promise allows the loss;
the discard settled the message, so the reply never comes again, to that run or a later one, and
no host is handed the message again. Mixed into tests/support/cpmodel_mixed.py's model (CP
crashes) and cpmodel_flipmixed.py's (the flip, which adds a failover or switchover at once after
the cut; and so cpmodel_crashflipmixed.py's)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule

from tests.support.cpmodel import DOWN, MOST_SENT, WELCOMED
from tests.support.cpmodel_logoff import delivered
from tests.support.keptreplies import until


class LostInFlight:
    """The rule `reply_lost_in_flight` and its checks, for a model with `clients`, `conns`,
    `owed`, `deliveries`, the CP of the moment (`_the_cp`), `_serving` (an active takes answers)
    and its own way to answer an owed message (`_answer_one`): the replies lost in flight
    (`cut`: client, id, the deliveries there were then)."""

    clients: dict[str, Any]
    conns: dict[str, Any]
    owed: dict[tuple[str, int], Any]
    deliveries: list[Any]
    _the_cp: Callable[[], Any]
    _serving: Callable[[], bool]
    _host_work: Callable[[], None]
    _until: Callable[..., Any]
    _pump: Callable[[], Any]
    _connect: Callable[[str], Any]
    run: Callable[..., None]

    def __init__(self) -> None:
        super().__init__()
        self.cut: list[tuple[Any, int, int]] = []  # replies lost in flight: client, id, deliveries then

    def _answerable(self, d: Any) -> bool:
        """Whether the active of the moment may answer owed `d` (and the CP take that answer)."""
        return True

    def _answer_one(self, key: tuple[str, int], d: Any) -> None:
        """The active answers the owed message `key` (`d`: what `owed` has for it)."""
        raise NotImplementedError

    def _cut_coming(self) -> None:
        """Just before the active answers the message whose reply is cut (a model may note the moment)."""

    @rule(pick=st.integers(0, 20), back=st.booleans())
    def reply_lost_in_flight(self, pick: int, back: bool) -> None:
        """A terminal that does not resume loses a reply in flight (`_lose_reply_in_flight`);
        `back`: it logs on again at once."""
        self._lose_reply_in_flight(pick, back)

    def _lose_reply_in_flight(self, pick: int, back: bool, then: Callable[[], None] | None = None) -> None:
        """A terminal that does not resume (it sends a message first if the active owes it none)
        loses a reply in flight: the active answers, the discard is durable, the CP writes the
        reply to its connection, and the connection drops before the reply arrives (both sides
        see it). `then`: what comes at once after that cut; `back`: the terminal logs on again
        after that."""
        self._host_work()
        cp = self._the_cp()
        names = [n for n, c in self.clients.items() if not c.resume and c.state == WELCOMED]
        if not names:
            return

        def keys() -> list[tuple[str, int]]:
            out = []
            for k, d in self.owed.items():
                held = cp.terms[k[0]].held.get(k[1])
                if (
                    k[0] in names
                    and self.clients[k[0]].index(k[1]) >= 0
                    and self._answerable(d)
                    and held is not None
                    and not held.replying
                    and held.early is None
                ):
                    out.append(k)
            return sorted(out)

        if not keys():
            c = self.clients[names[pick % len(names)]]
            if c.sent >= MOST_SENT:
                return

            async def send() -> None:
                c.submit()
                await self._until(lambda: bool(keys()) or c.state == DOWN or not self._serving(), f"{c.name}'s message delivered")
                await self._pump()

            self.run(send)
            if not keys():
                return
        key = keys()[pick % len(keys())]
        d = self.owed.pop(key)
        name, mid = key
        c, p = self.clients[name], self.conns[name]
        held = cp.terms[name].held[mid]
        fired: list[bool] = []
        self._cut_coming()
        real = p.send

        def send_then_drop(msg: dict[str, Any]) -> None:
            real(msg)
            if msg.get("t") == "reply" and msg.get("id") == mid and not fired:
                fired.append(True)
                p.transport.close()  # (the reply written, not arrived: the connection drops)

        async def go() -> None:
            p.send = send_then_drop
            try:
                self._answer_one(key, d)
                if not held.replying and held.early is None:
                    self.owed[key] = d  # (not taken: still owed)
                    return
                await self._until(lambda: bool(fired) or p.closed or c.state == DOWN, f"{name} {mid}: the reply written")
                await until(lambda: c.state == DOWN and p.closed, f"{name}'s drop seen by both sides")
            finally:
                del p.send
            if fired:
                self.cut.append((c, mid, len(self.deliveries)))
            await self._pump()

        self.run(go)
        if not fired:
            return
        if then is not None:
            then()
        if back and c is self.clients[name] and c.state == DOWN:
            self.run(lambda: self._connect(name))

    @invariant()
    def lost_in_flight_not_again(self) -> None:
        """A reply lost in flight (`reply_lost_in_flight`) never came since, and no host was handed its message again."""
        for c, mid, n in self.cut:
            assert not any(i == mid for i, _, _ in c.log), f"{c.name} {mid}: lost in flight, its discard durable, and sent again; log {c.log}"
            again = [d for d in self.deliveries[n:] if delivered(d) == (c.name, mid)]
            assert not again, f"{c.name} {mid}: lost in flight, its discard durable, and delivered again: {again}"

    def lost_in_flight_at_end(self, lost: int) -> None:
        """At the end (`lost`: the replies the verdict counted lost in flight): none of the cut
        came, and each of the current runs' is still awaited and among those counted."""
        self.lost_in_flight_not_again()
        cut = [(c, mid) for c, mid, _ in self.cut if c is self.clients[c.name]]
        assert all(mid in c.outstanding for c, mid in cut), f"a reply lost in flight not awaited at the end: {cut}"
        assert lost >= len(cut), f"replies lost in flight {cut}, counted lost {lost}"
        event(f"replies lost in flight to a terminal that does not resume: {min(lost, 2)}+")
        event(f"... of those the model's own (a drop with the reply written): {min(len(self.cut), 2)}+")
