"""The CP's promise across its crashes with an active that behaves as hsbd does (docs/cp-journal.md
"Early delivery", docs/protocol.md §3 "Adoption"): cpmodel_crash.py's model, with `[cp]
resume_window` > 0 and an active that registers with `adopt` and `marks_repeats`, so the CP hands
it a message while its record is still being made durable (a `stall` rule holds the group
commits back until the next `durable`, so that a crash loses records of messages the active has
processed). The host keeps, per terminal, the highest id it handed to its service, and marks a
repeat redelivered itself (hsb.host.delivery); it opens a session when the CP asks for one; at a
CP crash it drops what it was delivering (its link is gone) and, registered again, names what it
handed and its open sessions in `adopt` frames, the last one marked (hsb.host.sessions_ctl). At a
crash hypothesis chooses whether hsbd is the same process (it remembers) or was restarted
meanwhile (it names nothing), and whether it names its sessions before or after the terminals'
hellos. T00003 is a terminal of before, which does not mark what it sends again `resent`.

Checked: the service (whose memory outlives the host's processes) processes every id at most
once without a redelivered mark, the CP's or the host's; the one exception, counted, is the
double fault docs/cp-journal.md allows: T00003's message processed only by an hsbd since
restarted, its record lost with the CP. The CP marks every message up to the handed id the active
named at its adoption; no terminal gets a reply before its ack, nor a reply twice; after a final
settle hsbterm's strict verdict is clean and every acknowledged id reached the service. Counted:
early deliveries, records of those lost with a crash, adoptions carrying handed floors, repeats
that only the host marked."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import invariant, rule

from hsb.wire.framing import Decoder
from tests.support.cpcore import cp_config, fake_host
from tests.support.cpmodel import TERMINALS, WELCOMED, journal_cp, no_duplicate_or_unexpected, terminal_clients, verdict
from tests.support.cpmodel_crash import MOST_CRASHES, CPModel, Life
from tests.support.keptreplies import connect_hsbterm

UNMARKED_RESENDS = frozenset({"T00003"})  # a terminal of before: what it sends again is not marked `resent`


class HostMemory:
    """What one hsbd process knows: each terminal's highest id handed to its service
    (Delivery.handed) and the terminals whose session is open at it."""

    def __init__(self) -> None:
        self.handed: dict[str, int] = {}
        self.sessions: set[str] = set()


class AdoptingLife(Life):
    """One CP process, its active registered as hsbd registers (adopt, marks_repeats); its
    journal starts no group commit while `stalled()` (a slow disk)."""

    def __init__(self, d: Path, cfg: Any, stalled: Callable[[], bool]) -> None:
        self.journal, self.cp = journal_cp(d, cfg)
        j, flush = self.journal, self.journal._flush

        def gated() -> None:
            if stalled():
                j._flush_scheduled = False  # (the next append, or `_durable`, starts it)
                return
            flush()

        j._flush = gated
        self.host = fake_host(self.cp, "host-a", record=True)
        self.seen = 0  # bytes of what the CP wrote to the host decoded so far
        self.decoder = Decoder()
        self.epoch = 0  # its `registered` said it
        self.to_adopt = False  # told `adopt` in its `registered`, its frames not sent yet
        self.named: dict[str, int] = {}  # the handed ids it named in its adoption
        self.host._handle({"t": "register", "role": "active", "startup_id": 0, "adopt": True, "marks_repeats": True})


class AdoptModel(CPModel):
    """CPModel's, with the host's memory (`mem`, a new one when hsbd restarts) and what the
    service processed, in order, with its mark (`service`)."""

    def __init__(self) -> None:
        super().__init__()
        self.mem = HostMemory()
        self.service: list[tuple[str, int, bool, int]] = []  # (terminal, id, marked, the host process's number)
        self.adopt_later = False  # the host names its sessions only once this is False again
        self.early = 0  # delivered_early, over the CP's lives before this one
        self.handed_adoptions = 0  # adoptions whose first frame carried `handed`
        self.host_marked = 0  # repeats the CP delivered unmarked and the host marked
        self.restarts = 0
        self.stalled = False  # the disk is slow: no group commit starts until the next `durable`
        self.stalls = 0
        self.allowed_repeats: set[tuple[str, int]] = set()
        self.below_floor: list[tuple[str, int]] = []  # delivered unmarked, up to a handed id named at the adoption
        self.early_lost = 0  # messages with the active whose records a crash lost

    def _config(self) -> Any:
        return cp_config(self.dir, len(TERMINALS), cp="resume_window = 30\n")

    # -- the pieces ------------------------------------------------------------------------------
    def _terminals(self) -> tuple[dict[str, Any], dict[str, Any]]:
        clients, stats = terminal_clients()
        for name in UNMARKED_RESENDS:
            clients[name].mark_resent = False
        return clients, stats

    async def _new_life(self) -> None:
        if self.life is not None:
            self.early += self.life.cp.counters["delivered_early"]
        self.owed.clear()  # (hsbd drops what it was delivering when its CP link goes: Delivery.cancel)
        self.life = AdoptingLife(self.dir, self.cfg, lambda: self.stalled)
        cp = self.life.cp
        await self._until(lambda: cp.announced, "the active registered (its epoch durable)")
        await self._pump()

    def _host_work(self) -> None:
        """The active reads what the CP sent: its registration (then it names its sessions,
        unless `adopt_later`), session requests (it opens them), closed sessions, deliveries
        (handed to the service, marked if it handed that id or a higher one before)."""
        life = self.life
        assert isinstance(life, AdoptingLife)
        h = life.host
        h.flush()
        data = h.transport.data
        if len(data) == life.seen and not life.to_adopt:
            return  # (nothing new: this runs at every turn while a step waits)
        fresh, life.seen = life.decoder.feed(bytes(data[life.seen :])), len(data)
        for m in fresh:
            t = m.get("t")
            if t == "registered":
                life.epoch = m["epoch"]
                life.to_adopt = m.get("adopt") is True
                if not life.to_adopt:  # (hsbd's close_unkept: the CP keeps none of its sessions)
                    self.mem.sessions.clear()
            elif t == "session_request":
                self.mem.sessions.add(m["terminal"])
                h._handle({"t": "open", "terminal": m["terminal"], "kind": "active", "attrs": {}, "epoch": life.epoch})
            elif t == "session_closed":
                self.mem.sessions.discard(m["terminal"])
            elif t == "deliver":
                self._hand(m["terminal"], m["id"], bool(m.get("redelivered")), m["data"])
        if life.to_adopt and not self.adopt_later:
            life.to_adopt = False
            self._adopt(life)

    def _hand(self, name: str, mid: int, again: bool, data: Any) -> None:
        """A deliver, handed to the service at once (hsb.host.delivery's marking)."""
        self.deliveries.append((name, mid, again))
        assert isinstance(self.life, AdoptingLife)
        if not again and mid <= self.life.named.get(name, 0):
            self.below_floor.append((name, mid))
        marked = again or mid <= self.mem.handed.get(name, 0)
        if marked and not again:
            self.host_marked += 1
        if mid > self.mem.handed.get(name, 0):
            self.mem.handed[name] = mid
        self.service.append((name, mid, marked, self.restarts))
        self.owed[(name, mid)] = data

    def _adopt(self, life: AdoptingLife) -> None:
        """hsbd's adopt frames (SessionsCtl._adopt): what it handed, its open sessions, the last."""
        h, e = life.host, life.epoch
        if self.mem.handed:
            self.handed_adoptions += 1
            life.named = dict(self.mem.handed)
            h._handle({"t": "adopt", "items": [], "handed": dict(self.mem.handed), "epoch": e, "last": False})
        if self.mem.sessions:
            h._handle({"t": "adopt", "items": [[n, {}] for n in sorted(self.mem.sessions)], "epoch": e, "last": False})
        h._handle({"t": "adopt", "items": [], "epoch": e, "last": True})

    async def _durable(self) -> None:
        self.stalled = False
        assert self.life is not None
        self.life.journal._flush()
        await super()._durable()

    # -- rules -----------------------------------------------------------------------------------
    @rule()
    def stall(self) -> None:
        """The disk stalls: what is appended from now on stays off it until the next `durable`
        (or is lost with a crash); meanwhile messages go to the active early, their acks wait."""
        self.stalled = True
        self.stalls += 1

    @rule(flushed=st.booleans(), restarted=st.booleans(), mid_group=st.booleans(), late=st.booleans())
    def crash(self, flushed: bool, restarted: bool, mid_group: bool = False, late: bool = False) -> None:
        """The CP dies (CPModel's crash: `flushed`, `mid_group`); the active drops what it was
        delivering, registers again and names its sessions (`late`: only once the terminals that
        were logged on are back). `restarted`: hsbd restarted meanwhile, it forgets what it handed
        and its sessions (the service does not)."""
        if self.crashes >= MOST_CRASHES:
            return
        self.crashes += 1

        async def go() -> None:
            life = self.life
            assert life is not None
            self.early_lost += sum(h.delivered_epoch != 0 and m > t.durable_acked for t in life.cp.terms.values() for m, h in t.held.items())
            was = await self._die(flushed, mid_group)  # (a stalled disk: no group in flight to die in)
            self.stalled = False  # (the next CP's disk)
            if restarted:
                self.mem = HostMemory()
                self.restarts += 1
            self.adopt_later = late
            await self._new_life()
            if late:  # their hellos read first, then the adopt frames: the welcomes wait for those
                await self._back_before_adoption(was)
            else:
                for name in was:
                    await self._connect(name)

        self.run(go)
        if currently_in_test_context():
            event(f"crash: host restarted {restarted}, names its sessions after the terminals are back {late}")

    async def _back_before_adoption(self, names: list[str]) -> None:
        """`names` log on (hsbterm's, resuming) and the CP reads their hellos, then the active
        names its sessions; until they are welcomed."""
        assert self.life is not None
        cp = self.life.cp
        for name in names:
            self.conns[name] = connect_hsbterm(cp, self.clients[name])
        await self._until(lambda: all(cp.terms[n].conn is not None for n in names), f"{names}' hellos read")
        self.adopt_later = False
        await self._until(lambda: all(self.clients[n].state == WELCOMED for n in names), f"{names} welcomed")
        await self._pump()

    # -- the promise -----------------------------------------------------------------------------
    @invariant()
    def repeats_marked(self) -> None:
        """The service processed each id at most once unmarked (the CP's mark or the host's)."""
        procs: dict[tuple[str, int], set[int]] = {}  # the host processes that processed it
        for name, mid, marked, proc in self.service:
            by = procs.setdefault((name, mid), set())
            if by and not marked:
                # a terminal that marks no resend, its message processed only by host processes
                # gone since: the double fault docs/cp-journal.md allows (nobody knows of it)
                assert name in UNMARKED_RESENDS and proc not in by, f"{name} {mid} processed again unmarked: {self.service}"
                self.allowed_repeats.add((name, mid))
            by.add(proc)

    @invariant()
    def floor_marked(self) -> None:
        """The CP marks a message up to the handed id the active named (docs/protocol.md §3)."""
        assert not self.below_floor, f"delivered unmarked up to the handed floor named at the adoption: {self.below_floor}"

    def check_at_end(self) -> None:
        self.settle()
        assert self.life is not None
        self.repeats_marked()
        self.floor_marked()
        no_duplicate_or_unexpected(self.clients)
        early = self.early + self.life.cp.counters["delivered_early"]
        event(f"delivered early: {early > 0}")
        event(f"adoptions carrying handed floors: {min(self.handed_adoptions, 2)}+")
        event(f"crashes: {self.crashes}, host restarts: {self.restarts}")
        event(f"delivered early, its record lost with a crash: {min(self.early_lost, 2)}+")
        event(f"disk stalls: {min(self.stalls, 2)}+")
        event(f"repeats only the host marked: {min(self.host_marked, 1)}+")
        event(f"service processed a repeat: {len(self.service) > len({(n, i) for n, i, _, _ in self.service})}")
        event(f"repeats unmarked after a host restart, allowed: {min(len(self.allowed_repeats), 1)}+")
        verdict(self.clients, self.stats, {(n, i) for n, i, _, _ in self.service})
