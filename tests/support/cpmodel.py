"""The pieces the CP's models share (tests/support/cpmodel_crash.py, one active and CP crashes;
cpmodel_flip.py, two hosts and the flip; cpmodel_mixed.py, terminals that do not resume and
logoffs (cpmodel_logoff.py); cpmodel_flipmixed.py, those over the flip; cpmodel_crashflip.py, crashes in the flip;
cpmodel_crashflipmixed.py, all of them; tests/test_cp_model*.py run them): hsbterm's
resuming terminals and the mixed models' (LoggedClient, NOT_RESUMING, with their verdict), a CP core on a real
journal in a directory in memory, and the promise checked at the end (hsbterm's strict verdict,
every acknowledged id delivered, every repeat delivery marked redelivered), the rules of a
terminal's own (TerminalRules: its connection dropped, resumed, its confirm), and a model's
TestCase with those checks as every example's last step (`model_test`)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from hsb.term.client import TerminalClient
from tests.support.keptreplies import until

TERMINALS = ("T00001", "T00002", "T00003")
MOST_SENT = 6  # messages a terminal sends at most in one example
WELCOMED = 3  # hsb.term.logon.WELCOMED
DOWN = 0
# both models' runs: deterministic in CI, no per-step deadline (a crash's recovery takes a while)
MODEL_SETTINGS = settings(max_examples=400, stateful_step_count=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


NOT_RESUMING = frozenset({"T00002", "T00003"})  # the mixed models' terminals that do not resume (a first run's)


def model_dir(prefix: str) -> Path:
    """A directory for the CP's journal, in memory where there is a tmpfs (crashes are the
    model's, not the disk's; syncs are free)."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/dev/shm" if os.path.isdir("/dev/shm") else None))


def terminal_clients() -> tuple[dict[str, Any], dict[str, Any]]:
    """hsbterm's resuming terminals (checking the data of every reply), and their stats."""
    from hsb.term.client import TerminalClient
    from hsb.term.loadstats import LoadStats

    clients: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    for name in TERMINALS:
        s = LoadStats(1)
        s.counting = True
        stats[name] = s
        clients[name] = TerminalClient(name, s, base=1000, check_data=True, keepalive=0)
    return clients, stats


class LoggedClient(TerminalClient):
    """hsbterm's terminal, noting every reply it reads: (id, marked resent, its welcomes so far),
    and the welcomes at which its connections dropped."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log: list[tuple[int, bool, int]] = []
        self.welcomes = 0
        self.drops: list[int] = []

    def _on_welcome(self, msg: dict[str, Any]) -> None:
        self.welcomes += 1
        super()._on_welcome(msg)

    def _on_reply(self, msg_id: int, data: Any, resent: bool = False) -> None:
        self.log.append((msg_id, resent, self.welcomes))
        super()._on_reply(msg_id, data, resent)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state != DOWN:
            self.drops.append(self.welcomes)
        super().connection_lost(exc)


def new_client(name: str, base: int, resume: bool) -> tuple[Any, Any]:
    from hsb.term.loadstats import LoadStats

    s = LoadStats(1)
    s.counting = True
    return LoggedClient(name, s, base=base, check_data=True, keepalive=0, resume=resume), s


def mixed_terminals() -> tuple[dict[str, Any], dict[str, Any]]:
    """The mixed models' terminals (LoggedClient): those in NOT_RESUMING do not resume."""
    clients: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    for name in TERMINALS:
        clients[name], stats[name] = new_client(name, 1000, name not in NOT_RESUMING)
    return clients, stats


def awaited_not_resuming(c: Any, term: Any, owed: Any) -> list[int]:
    """The ids whose reply a terminal `c` that does not resume still awaits at a settle (`term`:
    the CP's, `owed`: the active's by (name, id)): acknowledged, settled at the CP and no reply
    kept is a reply lost in flight (the promise allows it)."""
    from hsb.term.verdict import ACKED

    return [i for i in c.outstanding if not c.marks[c.index(i)] & ACKED or i in term.held or i in term.replies or (c.name, i) in owed]


def mixed_verdict(clients: dict[str, Any], stats: dict[str, Any], delivered: set[tuple[str, int]]) -> int:
    """`verdict` for the resuming terminals; for the others no duplicate, nothing unexpected,
    nothing unacknowledged: the replies they lost in flight (the promise allows it), counted."""
    from hsb.term.load import _report

    verdict({n: c for n, c in clients.items() if c.resume}, stats, delivered)
    lost = 0
    for name, c in clients.items():
        if c.resume or not c.sent:
            continue
        r = _report([c], stats[name], 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, [])
        assert r.duplicates == 0 and r.unexpected == 0 and r.unacked == 0, (name, r.failures)
        lost += r.lost
    return lost


def journal_cp(d: Path, cfg: Any) -> tuple[Any, Any]:
    """(journal, cp): one CP process, its core on a journal of a new generation in `d`, restored
    from what the journal holds."""
    from hsb.cp.core import CP
    from hsb.cp.journal.generation import Generations
    from hsb.cp.journal.recovery import recover
    from hsb.cp.journal.store import Journal

    gen = Generations(d).take()
    r = recover(d, truncate=False)
    journal = Journal(d, generation=gen, io="thread")
    cp = CP(cfg, journal)
    cp.follows_a_cp = gen > 1
    cp.restore(r)
    seg = journal.open(r.highest_segment + 1, cp.snapshot(), [*r.garbage, *r.paths])
    cp.repin(seg)
    return journal, cp


def repeats_marked(deliveries: Iterable[tuple[str, int, bool]]) -> None:
    """Every delivery of an id after its first is marked redelivered."""
    seen: set[tuple[str, int]] = set()
    every = list(deliveries)
    for name, mid, again in every:
        assert again or (name, mid) not in seen, f"{name} {mid} delivered again unmarked: {every}"
        seen.add((name, mid))


def no_duplicate_or_unexpected(clients: dict[str, Any]) -> None:
    for name, c in clients.items():
        assert c.unexpected == 0 and c.early == 0, f"{name}: unexpected {c.unexpected}, early {c.early}"
        dup = [c.base + i for i, m in enumerate(c.marks) if (m >> 2) > 1]
        assert not dup, f"{name}: replies to the application more than once: {dup}"


def each_reply_once(clients: dict[str, Any]) -> None:
    """Each terminal that does not resume (LoggedClient) reads each reply once, marked resent or
    not (hsbterm ignores a resent one for an id it has: its marks do not show that duplicate)."""
    for name, c in clients.items():
        ids = [i for i, _, _ in c.log]
        assert c.resume or len(ids) == len(set(ids)), f"{name} read a reply twice: {c.log}"


def replies_read(clients: dict[str, Any]) -> int:
    return sum(c.resent_ignored + sum(m >> 2 for m in c.marks) for c in clients.values())


def unanswered(clients: dict[str, Any]) -> dict[str, list[int]]:
    return {n: sorted(c.outstanding) for n, c in clients.items() if c.outstanding}


def verdict(clients: dict[str, Any], stats: dict[str, Any], delivered: set[tuple[str, int]]) -> None:
    """hsbterm's strict verdict for each terminal that sent anything, and every id it had
    acknowledged among `delivered`."""
    from hsb.term.load import _report
    from hsb.term.verdict import ACKED

    for name, c in clients.items():
        if not c.sent:
            continue  # (the verdict fails a terminal that proved nothing)
        r = _report([c], stats[name], 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, [])
        assert r.ok and r.lost == 0 and r.duplicates == 0 and r.unexpected == 0 and r.unacked == 0, (name, r.failures)
        acked = [c.base + i for i, m in enumerate(c.marks) if m & ACKED]
        assert all((name, i) in delivered for i in acked), (name, acked, sorted(delivered))


class TerminalRules(RuleBasedStateMachine):
    """A model's event loop and the rules of a terminal's own, whatever the CP's side: its
    application's sends, its connection dropped (both sides see it), its resume, its confirm. A model sets `clients`
    (hsbterm's, by name) and `conns` (the CP's side of each) and has `_connect` and `_pump`."""

    clients: dict[str, Any]
    conns: dict[str, Any]

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()

    def run(self, step: Callable[[], Awaitable[None]]) -> None:
        self.loop.run_until_complete(asyncio.wait_for(step(), 10.0))

    owed: dict[Any, Any]  # what the active was delivered and owes a reply
    deliveries: list[Any]  # every delivery, in order

    async def _connect(self, name: str) -> None:
        raise NotImplementedError

    def _host_work(self) -> None:
        """The hosts' part of a turn (the model's)."""
        raise NotImplementedError

    async def _pump(self) -> None:
        """A few turns of the loop, the hosts at work (`_host_work`) in each."""
        for _ in range(5):
            self._host_work()
            await asyncio.sleep(0)
        self._host_work()

    async def _until(self, cond: Callable[[], bool], what: str) -> None:
        """`until` with the hosts at work meanwhile (the welcome waits for the session's opening)."""

        def done() -> bool:
            self._host_work()
            return bool(cond())

        await until(done, what, within=5.0)  # (in memory: milliseconds; the bound is for a loaded CI machine)

    async def _durable(self) -> None:
        raise NotImplementedError

    def _answer_owed(self) -> None:
        """The active answers everything it owes (the same data), and owes nothing."""
        raise NotImplementedError

    def _awaited(self, c: Any) -> Any:
        """The ids whose reply terminal `c` still awaits at a settle: all it has outstanding
        (a model whose terminals may lose a reply, as the promise allows, says fewer)."""
        return c.outstanding

    async def _settle(self, cp: Any) -> None:
        """Every terminal logged on, then turns of: every terminal confirms, the journal is made
        durable, the active answers what it owes, until nothing is held at `cp`, owed or
        outstanding (five turns in a row with nothing new, or 5 s: fail, naming what is left)."""
        for name, c in self.clients.items():
            if c.state == DOWN:
                await self._connect(name)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        still = 0  # turns in a row with nothing owed and nothing new (stuck: fail at once)
        while True:
            before = (len(self.deliveries), replies_read(self.clients))
            for c in self.clients.values():
                c._confirm(force=True)  # (now, not after hsbterm's 50 ms: a terminal at its held bound waits for it)
            await self._durable()
            held = {n: sorted(t.held) for n, t in cp.terms.items() if t.held}
            if not self.owed and not held and not any(self._awaited(c) for c in self.clients.values()):
                break
            still = still + 1 if not self.owed and before == (len(self.deliveries), replies_read(self.clients)) else 0
            assert still < 5 and loop.time() - t0 < 5.0, f"never answered: {unanswered(self.clients)}, held at the CP {held}, owed {self.owed}"
            self._answer_owed()
            await self._pump()
        for c in self.clients.values():
            c._confirm(force=True)
        await self._durable()

    @rule(name=st.sampled_from(TERMINALS), n=st.integers(1, 3))
    def send(self, name: str, n: int) -> None:
        """The terminal's application sends `n` messages (queued while it is logged off)."""
        c = self.clients[name]

        async def go() -> None:
            for _ in range(min(n, MOST_SENT - c.sent)):
                c.submit()
            await self._pump()

        self.run(go)

    @rule(name=st.sampled_from(TERMINALS))
    def drop(self, name: str) -> None:
        c, p = self.clients[name], self.conns.get(name)
        if p is None or c.state == DOWN:
            return

        async def go() -> None:
            p.transport.close()
            await until(lambda: c.state == DOWN and p.closed, f"{name}'s drop seen by both sides")
            await self._pump()

        self.run(go)

    @rule(name=st.sampled_from(TERMINALS))
    def reconnect(self, name: str) -> None:
        if self.clients[name].state != DOWN:
            return
        self.run(lambda: self._connect(name))

    @rule(name=st.sampled_from(TERMINALS))
    def confirm(self, name: str) -> None:
        c = self.clients[name]

        async def go() -> None:
            c._confirm(force=True)
            await self._pump()

        self.run(go)


class Gone:
    """Where a dead CP's side of a connection was: what arrives there is read by nobody."""

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        pass


async def terminals_lose_the_cp(journal: Any, clients: dict[str, Any], conns: dict[str, Any], flushed: bool) -> list[str]:
    """A CP dies under its terminals (`journal._stopping` set already): what it wrote reaches them
    (`flushed`: their own writes reach no CP) or is lost, their connections close, the journal's
    write out completes and it closes. The terminals that were logged on, once each saw the drop."""
    if flushed:
        for c in clients.values():
            if c.transport is not None:
                c.transport.to = Gone()  # (the terminal's writes reach no CP)
        for p in conns.values():
            p.flush()
        await asyncio.sleep(0)  # one turn: what the CP wrote arrives
    for p in conns.values():
        if not p.transport.is_closing():
            p.transport.close()
    await until(lambda: journal._inflight is None, "the write out done")
    journal.close()
    was = [n for n, c in clients.items() if c.state != DOWN]
    await until(lambda: all(c.state == DOWN for c in clients.values()), "every terminal saw the drop")
    return was


def checked(model: Any) -> Any:
    """`model` with the final settle and checks (`check_at_end`) as the last step of every
    example that started (`started()`)."""

    class Checked(model):  # type: ignore[misc]
        def teardown(self) -> None:
            try:
                if self.started():
                    self.check_at_end()
            finally:
                super().teardown()

    Checked.__name__ = Checked.__qualname__ = f"{model.__name__}Checked"
    return Checked


def model_test(model: Any) -> Any:
    """`checked(model)`'s TestCase at MODEL_SETTINGS."""
    case = checked(model).TestCase
    case.settings = MODEL_SETTINGS
    return case
