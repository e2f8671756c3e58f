"""The CP's crashes and the flip together, against a model (hypothesis, stateful; docs/design.md
§5.6, §5.7, §9): the flip model of tests/test_cp_model_flip.py (two hosts, the active lost and
the standby flipped to, planned switchovers, late answers of a host no longer the active), and
CP crashes recovered from the journal as in tests/support/cpmodel_crash.py, anywhere in it: right after a
flip before the new active answers (the flip maybe still going), while a failover's grant is made
durable (the standby asked, the active lost), during a planned switchover (released; handed over,
the grant not durable; granted), when the lost host is back as the new standby.

At a crash what the CP had written to the hosts and terminals reaches them, or is lost with the
links (`flushed`); the journal keeps only what was written. The hosts' processes live on and
register again as hsbd does (hsb.host.ha_cp: the role they last heard of, the same instance),
in either order: one refused (`active_exists`: the role is another's) exits, as hsbd does past
its start; a host lost before stays down until it comes back as the standby. With the recorded
active not back, the CP's wait for it (`restart_lease_s`) runs out (its clock is moved on, no
sleep) and the standby takes the role.

Beyond the flip model's promise: every grant of the role (`registered` as the active,
`switch_granted`) is at an epoch above every one before, across CP lives; a recovered CP's epoch
is at least the last one announced, and at that epoch its recorded active is the host it was
announced to; and a host fenced (a late answer at an old epoch) stays fenced after recovery."""

from __future__ import annotations

import time
from typing import Any

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, rule

from tests.support import cpmodel_flip as flip
from tests.support.cpmodel import journal_cp, terminals_lose_the_cp

MOST_CRASHES = 3  # CP crashes in one example at most


class CrashFlipModel(flip.FlipModel):
    """The flip model, and CP crashes: what each host was announced (the grants' epochs, in
    order) across CP lives."""

    @initialize()
    def start(self) -> None:  # (the flip model's, with what crashes need first)
        self.crashes = 0
        self.grants: list[tuple[int, str]] = []  # (epoch, host) of every grant of the role, in order
        self.wrong: list[str] = []  # what the CP announced wrongly (found as it was handed)
        self.rejoined = True  # every live host registered again after the last crash
        super().start()

    # -- the pieces ------------------------------------------------------------------------------
    def _sent(self, h: Any, data: bytes) -> None:
        from hsb.wire.framing import Decoder

        super()._sent(h, data)
        for m in Decoder().feed(data):
            if (m.get("t") == "registered" and m.get("role") == "active") or m.get("t") == "switch_granted":
                top = self.grants[-1][0] if self.grants else 0
                if m["epoch"] <= top:
                    self.wrong.append(f"{h.name} granted the role at epoch {m['epoch']}, not above {top} (grants so far: {self.grants})")
                self.grants.append((m["epoch"], h.name))

    def _host_work(self) -> None:
        cp = self.cp
        if self.rejoined and cp.active is None and cp.recorded_active is not None and cp.recovered_at is not None:
            # the active recorded before the crash did not register again: the CP's wait for it
            # runs out (its clock moved on), and it tells the standby
            cp.recovered_at = time.monotonic() - cp.restart_lease_s - 1.0
            cp.tick()
        super()._host_work()

    def _believed(self, h: Any) -> str | None:
        """The role `h`'s host holds as far as it heard (hsb.host.ha_cp), None if it exits."""
        role: str | None = self.registers_as[h.name]
        for m in h.transport.frames():
            t = m.get("t")
            if t == "registered":
                role = m["role"]
            elif t == "switch_granted":
                role = "active"
            elif t == "demoted" or (t == "error" and m.get("code") == "handed_over"):
                role = "standby"
            elif t in ("fenced", "error"):
                return None
        return role

    def _unsent(self, h: Any) -> None:
        """What the CP had queued for `h` and not written is lost with the CP: not delivered."""
        from hsb.wire.framing import Decoder

        for m in Decoder().feed(b"".join(h._out)):
            if m.get("t") == "deliver":
                items = [(m["terminal"], m["id"])]
            elif m.get("t") == "deliver_batch":
                items = [(it[0], it[1]) for it in m["items"]]
            else:
                continue
            for name, mid in items:
                for i in range(len(self.deliveries) - 1, -1, -1):
                    d = self.deliveries[i]
                    if d.link is h and (d.name, d.mid) == (name, mid):
                        del self.deliveries[i]
                        if self.owed.get((name, mid)) is d:
                            del self.owed[(name, mid)]
                        break
        h._out.clear()

    async def _crash(self, flushed: bool, standby_first: bool, mid_group: bool = False) -> None:
        """The CP dies (called with nothing appended since made durable but a grant's record): a
        new one recovers the journal; every live host registers again, every terminal that was
        logged on too. `mid_group`: inside the group commit of what is pending (a grant's
        record lands durable, and its announcement never goes out)."""
        j = self.journal
        if mid_group and j.pending and j._inflight is None:
            j._flush()
            event(f"crash inside a group commit: {j._inflight is not None}")
        j._stopping = True  # no group commit starts from now on: what is pending is lost (before any await)
        self.crashes += 1
        event(f"crash {'flipping' if self.cp.flipping is not None else 'granting' if self.cp.granting is not None else 'settled'}")
        for h in self.links.values():
            if flushed:
                h.flush()
            else:
                self._unsent(h)
        roles = {host: self._believed(h) for host, h in self.links.items() if not h.closed}
        for h in self.links.values():
            h.abort()  # (closed for the dead CP: it acts on nothing more)
        was = await terminals_lose_the_cp(j, self.clients, self.conns, flushed)

        self.rejoined = False
        self.journal, self.cp = journal_cp(self.dir, self.cfg)
        self._watch()
        cp = self.cp
        if self.grants:
            epoch, holder = self.grants[-1]
            assert cp.epoch >= epoch, f"recovered at epoch {cp.epoch}, below {epoch} announced to {holder}"
            if cp.epoch == epoch:
                assert cp.recorded_active == holder, f"recovered {cp.recorded_active} as the active at epoch {epoch}, announced to {holder}"
        for host in sorted((h for h, r in roles.items() if r is not None), key=lambda h: (roles[h] == "active") == standby_first):
            await self._join(host, roles[host] or "standby", again=True)  # (refused as the active: it exits)
        self.rejoined = True
        if any(not h.closed for h in self.links.values()):
            await self._until(self._serving, "a host serving as the active after the restart")
        for name in was:
            await self._connect(name)
        self._follow()
        await self._pump()

    def _may_crash(self) -> bool:
        return self.crashes < MOST_CRASHES

    # -- rules -----------------------------------------------------------------------------------
    @rule(flushed=st.booleans(), standby_first=st.booleans())
    def crash(self, flushed: bool, standby_first: bool) -> None:
        """The CP dies between two group commits (after a flip before the new active answered,
        with the flip still going, with the lost host back as the standby, or at rest)."""
        if not self._may_crash():
            return

        self.run(lambda: self._crash(flushed, standby_first))

    @rule(flushed=st.booleans(), standby_first=st.booleans(), mid_group=st.booleans())
    def crash_in_failover(self, flushed: bool, standby_first: bool, mid_group: bool) -> None:
        """The active lost, the standby told and asking for the role: the CP dies before the
        grant's epoch is durable (`mid_group`: as it becomes durable, unannounced). After
        recovery the lost active is not back, and the standby takes the role (once the CP's wait
        for it runs out)."""
        cp = self.cp
        h, sb = cp.active, cp.standby
        if not self._may_crash() or not self._serving() or sb is None or not sb.usable:
            return

        async def go() -> None:
            h.transport.close()
            h.connection_lost(None)
            self._host_work()  # (the standby reads `active_lost` and asks: the grant's record appended)
            self.counted["failover"] += 1
            await self._crash(flushed, standby_first, mid_group)

        self.run(go)

    @rule(
        at=st.sampled_from(("released", "handed_over", "granted")),
        finish=st.booleans(),
        follow_first=st.booleans(),
        flushed=st.booleans(),
        standby_first=st.booleans(),
        mid_group=st.booleans(),
    )
    def crash_in_switchover(self, at: str, finish: bool, follow_first: bool, flushed: bool, standby_first: bool, mid_group: bool) -> None:
        """A planned switchover (as the flip model's: `follow_first`, the standby sessions opened
        first and the handover's frame; else the CP's own handover, not waiting) and the CP dies
        in it: after the release, after the handover (its grant not durable), or right after the
        grant."""
        from hsb.wire.framing import encode

        cp = self.cp
        a, sb = cp.active, cp.standby
        if not self._may_crash() or not self._serving() or sb is None or not sb.usable:
            return
        self.counted["switchover"] += 1
        event(f"crash in a switchover: {at}")

        async def go() -> None:
            await self._released(a, follow_first, finish)
            if at != "released":
                if follow_first:
                    a.data_received(encode({"t": "handover", "epoch": cp.epoch}))
                else:
                    cp.host_handover(a, wait=False)
                if at == "granted":
                    await self._until(lambda: cp.active is sb and self._serving(), f"{sb.name} granted the role")
            await self._crash(flushed, standby_first, mid_group)

        self.run(go)

    # -- the promise -----------------------------------------------------------------------------
    @invariant()
    def epochs_only_rise(self) -> None:
        assert not self.wrong, self.wrong

    def check_at_end(self) -> None:
        event(f"crashes: {self.crashes}")
        super().check_at_end()
        self.epochs_only_rise()
