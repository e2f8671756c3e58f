"""A CP on a durable journal acknowledges nothing before a host has registered with it
(hsb.cp.first_host), in process: the records are written, the acks wait (as behind a slow group
commit: a reconnect's welcome does not count them), and a host's registration sends them all,
in order; a memory-only CP acknowledges as before. A CP on a stale copy of its journal, which
every host refuses, in real processes: tests/test_cp_stale_copy.py."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.support.cpcore import cp_config, cp_core, fake_host, recording_terminal
from tests.support.cpmodel import journal_cp
from tests.support.keptreplies import until

pytestmark = pytest.mark.timeout(30)


def frames(p: Any) -> list[dict[str, Any]]:
    p.flush()
    return list(p.transport.frames())


def acks(p: Any) -> list[int]:
    return [m["id"] for m in frames(p) if m["t"] == "ack"]


@contextlib.contextmanager
def cp_life(d: Path, cfg: Any) -> Iterator[tuple[Any, Any]]:
    """(journal, cp): one CP process on the journal in `d` (hsbcpd's takeover), its journal closed after."""
    journal, cp = journal_cp(d, cfg)
    try:
        yield journal, cp
    finally:
        journal._stopping = True
        journal.close()


def welcomed(cp: Any) -> tuple[Any, int]:
    """T00001 logged on to `cp`, resuming: (its connection, its welcome's last_acked)."""
    p = recording_terminal(cp, "T00001")
    [welcome] = [m for m in frames(p) if m["t"] == "welcome"]
    return p, welcome["last_acked"]


async def test_acks_wait_for_the_first_host_and_then_go_in_order(tmp_path: Path) -> None:
    journal, cp = journal_cp(tmp_path, cp_config(tmp_path, 2))
    try:
        with structlog.testing.capture_logs() as logs:
            p = recording_terminal(cp, "T00001")
            for i in (1, 2, 3):
                cp.terminal_msg(cp.terms["T00001"], i, f"m{i}")
            await until(lambda: journal.pending == 0 and journal._inflight is None and journal.records_written >= 3, "the records durable")
            assert acks(p) == [] and cp.counters["acks"] == 0
            term = cp.terms["T00001"]
            assert term.durable_acked == 0 and term.last_acked == 3
            assert cp.status()["journal"]["acks_waiting_for_host"]["messages"] == 3
            # the terminal reconnects meanwhile: its welcome counts none of them acknowledged
            p.connection_lost(None)
            p2 = recording_terminal(cp, "T00001")
            [welcome] = [m for m in frames(p2) if m["t"] == "welcome"]
            assert welcome["last_acked"] == 0, welcome
            for i in (1, 2, 3):  # sent again: taken as the same messages, not acknowledged yet
                cp.terminal_msg(cp.terms["T00001"], i, f"m{i}", resent=True)
            assert acks(p2) == [] and not [m for m in frames(p2) if m["t"] == "error"]
            # a host registers (the standby): every waiting ack goes, in order, once, as soon as
            # the journal says so durably
            fake_host(cp, "host-b", "standby")
            await until(lambda: acks(p2) == [1, 2, 3], "the acks that waited")
            assert term.durable_acked == 3 and cp.counters["acks"] == 3
            assert cp.status()["journal"]["acks_waiting_for_host"] is None
            # and from now on at once, as before
            cp.terminal_msg(term, 4, "m4")
            await until(lambda: 4 in acks(p2), "the ack of a message after the host came")
        waits = [e for e in logs if e["event"] == "acks_wait_for_a_host"]
        assert len(waits) == 1 and waits[0]["terminal"] == "T00001" and waits[0]["log_level"] == "warning", waits
        [released] = [e for e in logs if e["event"] == "journal_accepted_by_host"]
        assert released["host"] == "host-b" and released["acks_released"] == 3, released
    finally:
        journal._stopping = True
        journal.close()


async def test_a_memory_only_cp_acknowledges_without_a_host(tmp_path: Path) -> None:
    cp = cp_core(tmp_path, 2)
    p = recording_terminal(cp, "T00001")
    cp.terminal_msg(cp.terms["T00001"], 1, "m1")
    await until(lambda: acks(p) == [1], "the ack")
    assert cp.status()["journal"]["acks_waiting_for_host"] is None


async def test_a_cp_restarted_before_any_host_came_counts_none_of_the_waiting_acks_sent(tmp_path: Path) -> None:
    """Its journal says whose acks waited (a checkpoint's `acks_waiting`, and the "f" written at
    the first host's registration): a CP restarted on it (hsbcpd again on a stale copy of the
    journal, the next worker of --supervise) welcomes the terminal with none of those messages
    acknowledged and re-acknowledges none of them sent again, twice restarted as once, until a
    host registers; one restarted after that counts them all acknowledged. (It welcomed with
    last_acked 3 and acknowledged the repeats at once: a stale copy's CP, restarted, told its
    terminals that messages no serving CP would read were acknowledged.)"""
    d = tmp_path / "j"
    d.mkdir()
    cfg = cp_config(tmp_path, 2)

    def durable(journal: Any) -> bool:
        return journal.pending == 0 and journal._inflight is None

    async def run(check: Any) -> None:
        journal, cp = journal_cp(d, cfg)
        try:
            await check(journal, cp)
            await until(lambda: durable(journal), "the journal written")
        finally:
            journal._stopping = True
            journal.close()

    async def first(journal: Any, cp: Any) -> None:
        p = recording_terminal(cp, "T00001")
        for i in (1, 2, 3):
            cp.terminal_msg(cp.terms["T00001"], i, f"m{i}")
        await until(lambda: durable(journal) and journal.records_written >= 3, "the records durable")
        assert acks(p) == []

    async def restarted_before_a_host(journal: Any, cp: Any) -> None:
        p = recording_terminal(cp, "T00001")
        [welcome] = [m for m in frames(p) if m["t"] == "welcome"]
        assert welcome["last_acked"] == 0, welcome
        for i in (1, 2, 3):  # sent again: the same messages, still not acknowledged
            cp.terminal_msg(cp.terms["T00001"], i, f"m{i}", resent=True)
        assert acks(p) == [] and not [m for m in frames(p) if m["t"] == "error"]
        assert cp.status()["journal"]["acks_waiting_for_host"]["messages"] == 3

    async def a_host_comes(journal: Any, cp: Any) -> None:
        await restarted_before_a_host(journal, cp)
        p = cp.terms["T00001"].conn
        fake_host(cp, "host-b", "standby")
        await until(lambda: acks(p) == [1, 2, 3], "the acks that waited")
        assert cp.status()["journal"]["acks_waiting_for_host"] is None

    async def after_a_host(journal: Any, cp: Any) -> None:
        p = recording_terminal(cp, "T00001")
        [welcome] = [m for m in frames(p) if m["t"] == "welcome"]
        assert welcome["last_acked"] == 3, welcome
        assert cp.status()["journal"]["acks_waiting_for_host"] == {"messages": 0, "since": None}

    await run(first)
    await run(restarted_before_a_host)
    await run(restarted_before_a_host)  # (its takeover snapshot's checkpoint says it again)
    await run(a_host_comes)
    await run(after_a_host)


async def test_the_acks_that_waited_go_only_once_the_first_hosts_registration_is_durable(tmp_path: Path) -> None:
    """The first host's registration is written ("f") before the acks that waited go: a CP that
    dies before that record is durable (here: its group commits held, then closed) sent none of
    them, and the next CP on the journal still counts them waiting, a checkpoint written meanwhile
    included. (Released at once, the terminal held acks of ids the next CP welcomed it below:
    hsbterm's "acks forgotten".)"""
    d = tmp_path / "j"
    d.mkdir()
    cfg = cp_config(tmp_path, 2)
    with cp_life(d, cfg) as (journal, cp):
        p = recording_terminal(cp, "T00001")
        for i in (1, 2, 3):
            cp.terminal_msg(cp.terms["T00001"], i, f"m{i}")
        await until(lambda: journal.pending == 0 and journal._inflight is None and journal.records_written >= 3, "the records durable")
        journal.hold()  # (no group commit starts: the registration's record stays in memory)
        fake_host(cp, "host-b", "standby")
        journal.append(cp._checkpoint())  # (a checkpoint after it, as a new segment's would be)
        assert acks(p) == [] and cp.status()["journal"]["acks_waiting_for_host"]["messages"] == 3
    with cp_life(d, cfg) as (journal, cp):
        p, last_acked = welcomed(cp)
        assert last_acked == 0
        assert cp.status()["journal"]["acks_waiting_for_host"]["messages"] == 3
        fake_host(cp, "host-b", "standby")
        journal.append(cp._checkpoint())  # (written after the "f": read after it, it waits no more)
        await until(lambda: acks(p) == [1, 2, 3], "the acks that waited, the registration durable")
        await until(lambda: journal.pending == 0 and journal._inflight is None, "the journal written")
    with cp_life(d, cfg) as (journal, cp):
        assert welcomed(cp)[1] == 3
