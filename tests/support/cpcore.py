"""The CP's core (hsb.cp.core.CP) without sockets: made from a small config, with hosts and
terminals on stand-in transports that count what is written to them. For tests and benches
that drive the CP's own code in-process (tests/support/inproc.py runs whole daemons instead)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.support.transports import CountingTransport, RecordingTransport, stand_in


def cp_core(d: Path, terminals: int, **kw: Any) -> Any:
    """A CP on `cp_config(d, terminals, **kw)`."""
    from hsb.cp.core import CP

    return CP(cp_config(d, terminals, **kw), None)


def cp_config(d: Path, terminals: int, *, width: int = 5, standby_capable: bool = True, cp: str = "") -> Any:
    """The config of a CP with `terminals` terminals T…, memory-only journal; `cp` adds lines to
    its [cp] table."""
    from hsb.config import load
    from hsb.cp.config import CPConfig

    (d / "s").write_text("secret\n")
    (d / "s").chmod(0o600)
    p = d / "cp.toml"
    p.write_text(
        f'[cp]\nsecret_file = "s"\ndurability = "none"\n{cp}'
        f'[[terminal_groups]]\nprefix = "T"\nwidth = {width}\ncount = {terminals}\nstandby_capable = {str(standby_capable).lower()}\n'
    )
    return load(p, CPConfig)


def fake_host(cp: Any, name: str, role: str | None = None, *, keeps: bool = False, timeout: float = 5.0, batch: int = 0, record: bool = False) -> Any:
    """A host link, authenticated as `name`; registered with `role` (epoch 1) when given.
    `batch`: the deliver_batch bytes it declares (0: none); `record`: its transport keeps what
    the CP writes (`h.transport.frames()`)."""
    from hsb.cp.host_link import HostProtocol

    h = HostProtocol(cp, secret=b"s" * 32, auth_timeout=timeout, idle_timeout=None)
    h.connection_made(stand_in(RecordingTransport(name) if record else CountingTransport(name)))
    h.deliver_batch_bytes = batch
    h.clear_deadline()
    h.authed = True
    h.set_idle_timeout(None)  # (as authenticating sets it: else the auth timeout's stays, and closes a link silent that long)
    h.decoder.first_done()  # (authenticated without an auth frame)
    h.name = name
    h.keeps_standby = keeps
    if role is not None:
        cp.host_register(h, role, 1)
    return h


def adopting_active(d: Path, record: bool = True) -> tuple[Any, Any]:
    """A CP core of 3 terminals (resume_window 30 s) whose active, host-a, registered at epoch 1
    and adopts the sessions that outlived a CP restart (hsb.cp.adopt): (cp, host-a)."""
    cp = cp_core(d, 3, cp="resume_window = 30\n")
    a = fake_host(cp, "host-a", record=record)
    a.adopts = True
    cp.host_register(a, "active", 1)
    return cp, a


def recording_terminal(cp: Any, name: str, last_reply: int | None = 0, first: int | None = None) -> Any:
    """A terminal connection that has said hello as `name` (`last_reply` None: one that does not
    resume; `first`: its hello's, the run's first id); its transport keeps what the CP writes
    (`p.flush(); p.transport.frames()`)."""
    from hsb.cp.terminal_link import TerminalProtocol

    p = TerminalProtocol(cp, hello_timeout=5.0, idle_after_hello=None)
    p.connection_made(stand_in(RecordingTransport(name)))
    p.clear_deadline()
    p.decoder.first_done()  # (logged on without a hello frame)
    p.first = first
    cp.terminal_hello(p, name, last_reply)
    return p


def pair_with_sessions(d: Path, terminals: int = 2) -> tuple[Any, Any, Any, Any]:
    """A CP core whose host-a is active and host-b the standby (both recording), T00001 connected
    (recording) with a session at each: (cp, host-a, host-b, T00001's connection)."""
    cp = cp_core(d, terminals)
    a = fake_host(cp, "host-a", "active", record=True)
    b = fake_host(cp, "host-b", "standby", record=True)
    p = recording_terminal(cp, "T00001")
    cp.host_open(a, "T00001", "active", {})
    cp.host_open(b, "T00001", "standby", {})
    return cp, a, b, p


def fake_terminal(cp: Any, name: str, *, timeout: float = 5.0) -> Any:
    """A terminal connection that has said hello as `name` (resuming, nothing received yet)."""
    from hsb.cp.terminal_link import TerminalProtocol

    p = TerminalProtocol(cp, hello_timeout=timeout, idle_after_hello=None)
    p.connection_made(stand_in(CountingTransport(name)))
    p.clear_deadline()
    p.decoder.first_done()  # (logged on without a hello frame)
    cp.terminal_hello(p, name, 0)
    return p


def journalled_cp(tmp_path: Path, d: Path, terminals: int, recovered: Any = None, cp: str = "") -> Any:
    """A CP of `terminals` terminals (`cp`: lines for its [cp] table) on a real journal in `d`, of
    a new generation: restored from `recovered` and its takeover snapshot written (as
    hsb.cp.taking_over does), or a new one."""
    from hsb.cp.core import CP
    from hsb.cp.journal.generation import Generations
    from hsb.cp.journal.store import Journal

    j = Journal(d, generation=Generations(d).take(), segment_bytes=2048)
    core = CP(cp_config(tmp_path, terminals, cp=cp), j)
    if recovered is None:
        j.open(1, [], [])
    else:
        core.restore(recovered)
        core.repin(j.open(recovered.highest_segment + 1, core.snapshot(), [*recovered.garbage, *recovered.paths]))
    return core


class HeldJournal:
    """Holds the callbacks of chosen record kinds until `release()` (their group commit)."""

    def __init__(self, cp: Any, kinds: tuple[str, ...] = ("e",)) -> None:
        self.held: list[Any] = []
        self.kinds = kinds
        real = cp.journal.append

        def append(payload: list[Any], done: Any = None, lazy: bool = False) -> int:
            if payload[0] in self.kinds and done is not None:
                self.held.append(done)
                return 0
            return int(real(payload, done, lazy))

        cp.journal.append = append

    def release(self) -> int:
        n = 0
        while self.held:  # what a callback appends is held too, and let go in turn
            n += self.release_one()
        return n

    def release_one(self) -> int:
        """The oldest held record's group commit only (what it appends stays held)."""
        if not self.held:
            return 0
        self.held.pop(0)()
        return 1


# -- a grant's flip (hsb.cp.flip), shared by the flip's tests -----------------------------------


def flip_pair(d: Path, terminals: int, keeps: bool, attrs: dict[str, Any]) -> tuple[Any, Any, Any, list[str], dict[str, Any]]:
    """`terminals` terminals with sessions at A (active) and B (standby), flips of 4 per turn;
    B records what it is sent."""
    cp = cp_core(d, terminals, width=2, cp="flip_slice = 4\n")
    a = fake_host(cp, "host-a", "active", keeps=keeps)
    b = fake_host(cp, "host-b", "standby", batch=64 * 1024, record=True)
    names = sorted(cp.terms)
    conns = {}
    for name in names:
        conns[name] = fake_terminal(cp, name)
        cp.host_open(a, name, "active", attrs)
        cp.host_open(b, name, "standby", attrs)
    return cp, a, b, names, conns


def switch(cp: Any, a: Any, b: Any, planned: bool) -> None:
    """A planned switchover from A to B (A keeps its sessions as standby ones), or A lost and B
    granted the role: the flip's first slice runs inside the grant."""
    if planned:
        cp.host_release(a)
        cp.host_handover(a, wait=False)
    else:
        a.connection_lost(None)
        cp.host_switchover(b, "test", False, "failover", peer_closed=True)


async def flipped(cp: Any) -> None:
    """Until the flip going has ended (5 s at most)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while cp.flipping is not None:
        assert loop.time() - t0 < 5.0, "the flip never finished"
        await asyncio.sleep(0)


def agree_counts(cp: Any) -> None:
    """The totals are what a walk over the terminals counts."""
    assert cp.counts.active == sum(t.active is not None for t in cp.terms.values())
    assert cp.counts.standby == sum(t.standby is not None for t in cp.terms.values())


def journal_kinds(cp: Any) -> list[str]:
    """The kinds of the records `cp` appends to its journal from now on, in order."""
    kinds: list[str] = []
    real = cp.journal.append

    def append(payload: list[Any], done: Any = None, lazy: bool = False) -> int:
        kinds.append(payload[0])
        return int(real(payload, done, lazy))

    cp.journal.append = append
    return kinds
