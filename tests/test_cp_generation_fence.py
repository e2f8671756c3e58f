"""Fencing by generation, in-process (SPEC §5.8, docs/cp-journal.md "Generations"): what a
mutation audit of hsb.cp's generation code found no test failing without. A takeover makes its
generation file durable (the file and its name) before it reads the journal; a group in flight
when the heartbeat's check finds a newer CP is never acknowledged, and a superseded CP renews no
lease; a superseded CP aborts every connection at once and tells its master the exit it means
(75) before anything of its stop (tests/test_cp_generations.py has the same with real processes)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from hsb import uring
from hsb.config import load
from hsb.cp import supervise, taking_over
from hsb.cp.config import CPConfig
from hsb.cp.journal import generation as genmod
from hsb.cp.journal.generation import Superseded, gen_name
from hsb.cp.journal.store import boot_now
from hsb.cp.server import CPServer
from tests.support.hostclient import FakeHost, FakeTerminal
from tests.support.inproc import until
from tests.support.journal import durable, open_journal
from tests.support.procs import SECRET, cp_config

pytestmark = pytest.mark.timeout(30)

IOS = ["thread"] + (["io_uring"] if uring.available() is None else [])


def server(tmp_path: Path) -> CPServer:
    return CPServer(load(cp_config(tmp_path, terminals=2, host_timeout=0.5), CPConfig), SECRET, str(tmp_path / "cp.toml"))


async def test_a_takeover_makes_its_generation_durable_before_it_reads_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gen- file synced, then its directory, then the recovery: a crash (or a power loss of
    the NFS server) between them must not leave a CP reading a journal under a generation that an
    older CP, still running, cannot see. The journal's identity is made between them (a new
    journal's: written whole and synced, linked into place, the directory synced)."""
    seen: list[tuple[str, str]] = []
    real_fsync, real_dir, real_recover = os.fsync, genmod.fsync_dir, taking_over.recover  # type: ignore[attr-defined]  # (imported there: patched there below)

    def fsync(fd: int) -> None:
        seen.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")).name))
        real_fsync(fd)

    def fsync_dir(d: Any) -> None:
        seen.append(("fsync_dir", Path(d).name))
        real_dir(d)

    def recover(d: Path, **kw: Any) -> Any:
        seen.append(("recover", Path(d).name))
        return real_recover(d, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(genmod, "fsync_dir", fsync_dir)
    monkeypatch.setattr(taking_over, "recover", recover)
    s = server(tmp_path)
    try:
        await s.startup()
        assert s.cp is not None and s.took_over["generation"] == 1
    finally:
        await s.shutdown()
    seen = [e for e in seen if e != ("fsync", "cp-journal")]  # (fsync_dir's own)
    assert seen[:2] == [("fsync", gen_name(1)), ("fsync_dir", "cp-journal")], seen
    read = seen.index(("recover", "cp-journal"))
    assert seen[2:read] == [("fsync", f"journal-id.{gen_name(1)}"), ("fsync_dir", "cp-journal"), ("fsync_dir", "cp-journal")], seen


@pytest.mark.parametrize("io", IOS)
async def test_a_group_in_flight_when_the_heartbeat_finds_a_newer_cp_is_never_acknowledged(tmp_path: Path, io: str) -> None:
    """The heartbeat's check stops the CP while a group commit is out: that group's completion,
    its own check clean (it looked before the newer CP's file was there), acknowledges nothing."""
    j = open_journal(tmp_path, io=io)
    stopped: list[Superseded] = []
    j.on_superseded = stopped.append
    try:
        await durable(j, ["a", "T1", 1, "x"])
        done: list[int] = []
        j.append(["a", "T1", 2, "x"], lambda: done.append(2))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while j._inflight is None:  # the group goes out on a later turn of the loop
            assert loop.time() - t0 < 5.0 and not done, "the group never went out"
            await asyncio.sleep(0)
        j._stop_superseded(Superseded(j.gen, j.gen + 1))  # (as the heartbeat's check does)
        while j._inflight is not None:
            assert loop.time() - t0 < 5.0, "the group never came back"
            await asyncio.sleep(0.001)
        assert len(stopped) == 1 and not done, "a group of a superseded CP was acknowledged"
        assert j.pending == 0
    finally:
        j.close()


async def test_a_superseded_cp_renews_no_lease_even_with_a_fresh_check(tmp_path: Path) -> None:
    j = open_journal(tmp_path)
    try:
        now = boot_now()
        assert j.vouches(now)  # (its snapshot's check is fresh)
        j._stop_superseded(Superseded(j.gen, j.gen + 1))
        assert not j.vouches(now), "a superseded CP renewed a host's lease"
    finally:
        j.close()


async def test_a_superseded_cp_aborts_every_connection_at_once_and_tells_its_master_its_exit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Superseded: every terminal and host connection is aborted right away (nothing more goes out,
    not at the stop's turn of the loop), and the stop's first act tells the master (the pipe of
    hsb.cp.supervise) the exit it means, 75: killed during the stop, it must not be forked again."""
    r, w = os.pipe()
    monkeypatch.setattr(supervise, "END_FD", w)
    s = server(tmp_path)
    try:
        await s.startup()
        assert s.cp is not None
        t = await FakeTerminal.connect(s.bound["terminal"], "T00001")
        h = await FakeHost.connect(s.bound["host"], "host-a")
        cp = s.cp
        await until(lambda: cp.terms["T00001"].conn is not None and s.hosts, "the terminal and the host connected")
        conns = [cp.terms["T00001"].conn, *s.hosts]
        s._superseded(Superseded(cp.journal.gen, cp.journal.gen + 1))
        assert all(c is not None and c.transport is not None and c.transport.is_closing() for c in conns), "a connection left open"
        assert s.exit_code == 75 and s.should_exit.is_set()
        await s.shutdown()
        os.close(w)
        monkeypatch.setattr(supervise, "END_FD", None)
        assert os.read(r, 16) == bytes([75])
        await until(lambda: t.closed and h.closed, "the terminal and the host saw their link end")
    finally:
        os.close(r)
        if supervise.END_FD is not None:
            os.close(w)
        await s.shutdown()
