"""A host's memory of the highest CP generation it has seen (hsb/host/cpgen.py, docs/protocol.md
"The CP's generation", docs/design.md "The hosts") and the host link's use of it
(hsb/host/cplink.py): the file's bounds, the durable write, what a load and a failed save leave in
the status, the worker let go at the close, a write only when a CP raised the generation, and a
link given up cleanly when the host stops during that write. Each test names a behaviour that a
mutation audit of the modules found no test for."""

from __future__ import annotations

import asyncio
import errno
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from hsb.host import cpgen
from hsb.host.cpgen import MAX_BYTES, GenerationFile, read_generation, write_generation

pytestmark = pytest.mark.timeout(30)


def test_a_file_of_exactly_max_bytes_and_generation_0_are_taken(tmp_path: Path) -> None:
    """The file's limit is MAX_BYTES itself (over it: not this file), and generation 0 (what a
    CP with durability "none" says) is a generation. (Kills `> MAX_BYTES` -> `>=` and `< 0` ->
    `< 1`.)"""
    path = tmp_path / "host-a.cp-generation"
    doc = json.dumps({"host": "host-a", "cp_generation": 7}).encode()
    path.write_bytes(doc + b" " * (MAX_BYTES - len(doc)))
    assert path.stat().st_size == MAX_BYTES
    assert read_generation(path, "host-a") == 7
    write_generation(path, "host-a", 0)
    assert read_generation(path, "host-a") == 0


def test_the_file_is_written_durably(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The generation is written by hsb.fsutil.replace_durably (a new file synced, renamed over
    the old one, the folder synced): a crash or a full disk mid-write leaves the generation
    before, never a torn file that would stop the next start. (Kills a plain write_bytes.)"""
    calls: list[tuple[Path, bytes]] = []
    from hsb.fsutil import replace_durably as real

    def durable(path: Path, data: bytes) -> None:
        calls.append((path, data))
        real(path, data)

    monkeypatch.setattr(cpgen, "replace_durably", durable)
    path = tmp_path / "host-a.cp-generation"
    write_generation(path, "host-a", 5)
    assert calls == [(path, b'{"host": "host-a", "cp_generation": 5}\n')]
    assert read_generation(path, "host-a") == 5


async def test_a_load_is_what_a_restart_starts_from_in_the_status(tmp_path: Path) -> None:
    """The generation read at the start is the one `remembered` says (and the one a failed save
    says a restart would start from). (Kills the load's result not kept in `saved`.)"""
    path = tmp_path / "host-a.cp-generation"
    write_generation(path, "host-a", 7)
    mem = GenerationFile(path, "host-a", timeout=5.0)
    try:
        assert await mem.load() == 7
        assert mem.status() == {"remembered": 7, "file": str(path), "save_error": None}
    finally:
        mem.close()


async def test_the_storages_own_timeout_is_said_as_its_error_not_as_a_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write the storage itself fails at once with ETIMEDOUT (an NFS server gone) is said with
    the storage's words, not as a write that did not return within storage_timeout. (Kills the
    `if not deadline.expired(): raise` dropped.)"""

    def timed_out(path: Path, host: str, generation: int, journal: str | None = None, takeover: str | None = None) -> None:
        raise TimeoutError(errno.ETIMEDOUT, "Connection timed out", str(path))

    monkeypatch.setattr(cpgen, "write_generation", timed_out)
    mem = GenerationFile(tmp_path / "host-a.cp-generation", "host-a", timeout=10.0)
    try:
        assert await mem.save(3) is False
        assert mem.error == "Connection timed out", mem.error
    finally:
        mem.close()


async def test_the_close_lets_the_files_worker_thread_go(tmp_path: Path) -> None:
    """The process ends: the thread the file's reads and writes ran on ends too. (Kills the
    worker's shutdown skipped.)"""
    mem = GenerationFile(tmp_path / "host-a.cp-generation", "host-a", timeout=5.0)
    assert await mem.load() == 0
    worker = mem._worker
    assert worker is not None
    mem.close()
    worker._thread.join(10)
    assert not worker._thread.is_alive()


# ---------------------------------------------------------------------- the host link (in-process CP)


def _cp_maker(tmp_path: Path) -> tuple[str, Any]:
    """The host address and a maker of in-process CPs on it, one journal per name."""
    from hsb.config import load
    from hsb.cp.config import CPConfig
    from hsb.cp.server import CPServer
    from hsb.ports import free_port
    from tests.support.procs import SECRET, cp_config

    ports: dict[str, Any] = {k: f"127.0.0.1:{free_port()}" for k in ("terminal_listen", "host_listen", "admin_listen")}

    def cp(journal: str) -> CPServer:
        d = tmp_path / journal
        d.mkdir(exist_ok=True)
        return CPServer(load(cp_config(d, terminals=2, journal=str(tmp_path / f"{journal}-j"), **ports), CPConfig), SECRET, str(d / "cp.toml"))

    return ports["host_listen"], cp


def _link(addr: str, mem: GenerationFile, on_up: Any) -> Any:
    from hsb.host.cplink import CPLink
    from hsb.host.lease import Lease
    from tests.support.procs import SECRET

    return CPLink(
        name="host-a", addr=addr, secret=SECRET, interval=0.1, timeout=0.5, max_frame=1 << 20,
        on_up=on_up, on_frame=lambda m: None, on_down=lambda why: None, lease=Lease(), on_answer=lambda n: None, memory=mem,
    )  # fmt: skip


async def test_the_file_is_written_only_when_a_cp_raised_the_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first link to a CP at generation 1 writes it; the links made again to the same CP
    write nothing (each write is a durable one, and on a hung mount one that holds the
    registration up to storage_timeout). (Kills `> self.memory.saved` -> `>=`.)"""
    from tests.support.inproc import until

    writes: list[int] = []
    real = cpgen.write_generation

    def write(path: Path, host: str, generation: int, journal: str | None = None, takeover: str | None = None) -> None:
        writes.append(generation)
        real(path, host, generation, journal, takeover)

    monkeypatch.setattr(cpgen, "write_generation", write)
    addr, make = _cp_maker(tmp_path)
    mem = GenerationFile(tmp_path / "host-a.cp-generation", "host-a", timeout=5.0)
    ups: list[int] = []
    link = _link(addr, mem, lambda: ups.append(1))
    s = make("a")
    try:
        await s.startup()
        assert await mem.load() == 0
        link.start()
        await until(lambda: ups == [1] and s.hosts, "the link up at generation 1", timeout=10)
        assert writes == [1]
        for _ in range(2):
            n = len(ups)
            await until(lambda: bool(s.hosts), "the CP has the host's link", timeout=10)
            for h in list(s.hosts):
                h.abort()  # the link drops; the same CP (generation 1) is taken again
            await until(lambda: len(ups) > n, "the link up again at the same CP", timeout=10)  # noqa: B023
        assert writes == [1] and mem.saved == 1 and link.cp_generation == 1
    finally:
        await link.close()
        await s.shutdown()
        mem.close()


async def test_a_stop_during_the_generations_write_closes_the_new_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host stops (its link task cancelled) while the raised generation is being written,
    before it registers: the link just authenticated with the CP is closed, not left open to it.
    (Kills the `fs.close()` before the cancellation goes on.)"""
    from hsb.wire.client import FrameStream
    from tests.support.inproc import until

    began = threading.Event()
    release = threading.Event()
    real = cpgen.write_generation

    def hung(path: Path, host: str, generation: int, journal: str | None = None, takeover: str | None = None) -> None:
        began.set()
        release.wait(20)
        real(path, host, generation, journal, takeover)

    monkeypatch.setattr(cpgen, "write_generation", hung)
    closed: list[int] = []
    real_close = FrameStream.close

    def close(self: FrameStream) -> None:
        closed.append(id(self))
        real_close(self)

    monkeypatch.setattr(FrameStream, "close", close)
    addr, make = _cp_maker(tmp_path)
    mem = GenerationFile(tmp_path / "host-a.cp-generation", "host-a", timeout=20.0)
    ups: list[int] = []
    link = _link(addr, mem, lambda: ups.append(1))
    s = make("a")
    try:
        await s.startup()
        link.start()
        await until(began.is_set, "the generation's write begun", timeout=10)
        assert closed == [] and link.fs is None
        task = link.task
        await link.close()
        await asyncio.gather(task, return_exceptions=True)
        assert len(closed) == 1 and ups == [], closed
    finally:
        release.set()
        await link.close()
        await s.shutdown()
        mem.close()


async def test_a_cp_below_the_generation_seen_is_tried_again_after_a_backoff(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A superseded CP still answering (its generation below the one seen) is refused and tried
    again with a backoff (docs/protocol.md: 50 ms up to 0.25 s), not in a tight loop of links
    and handshakes against it. (Kills the backoff's wait after a refusal skipped.)"""
    from hsb.backoff import Backoff
    from hsb.host import cplink
    from tests.support.inproc import until

    waits: list[float] = []

    class Counted(Backoff):
        __slots__ = ()

        def next(self) -> float:
            w = super().next()
            waits.append(w)
            return w

    monkeypatch.setattr(cplink, "Backoff", Counted)
    addr, make = _cp_maker(tmp_path)
    mem = GenerationFile(tmp_path / "host-a.cp-generation", "host-a", timeout=5.0)
    ups: list[int] = []
    link = _link(addr, mem, lambda: ups.append(1))
    link.cp_generation = 5  # (seen before: this CP's journal, at generation 1, is older)
    s = make("a")
    try:
        await s.startup()
        link.start()
        await until(lambda: link.generation_refusals >= 3, "the older CP refused three times", timeout=10)
        refusals = link.generation_refusals
        assert len(waits) >= refusals - 1 and all(0 < w <= 0.375 for w in waits), (refusals, waits)
        assert ups == [] and mem.saved == 0
    finally:
        await link.close()
        await s.shutdown()
        mem.close()
