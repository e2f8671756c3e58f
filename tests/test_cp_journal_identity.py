"""The CP journal's identity (hsb.cp.journal.generation `journal-id`; docs/cp-journal.md): made once,
at the first takeover, stable across takeovers, a racing CP reads the winner's, kept by
--set-journal-aside and not taken for damage or garbage; said to the hosts beside the generation
(none by a memory-only CP). The host's side: its CP generation file keeps it (`cp_journal`), and
its CP link takes the first one said and refuses a CP on another journal whatever its generation.
The real-process test (a second CP on another journal refused) is in test_cp_generations."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections import deque
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hsb.config import load
from hsb.cp.config import CPConfig
from hsb.cp.journal import generation as genmod
from hsb.cp.journal.aside import AsideRefused, set_aside
from hsb.cp.journal.generation import JOURNAL_ID, Generations, gen_name, read_journal_id
from hsb.cp.journal.recovery import recover
from hsb.cp.server import CPServer
from hsb.host import cplink as cplink_mod
from hsb.host.cpgen import GenerationFile, GenerationFileError, read_generation, read_kept, read_memory, write_generation
from hsb.host.cplink import CPLink
from hsb.host.lease import Lease
from hsb.ops import refusals
from hsb.wire.client import FrameStream, LinkClosed
from tests.support.logrec import RecordingLog
from tests.support.procs import SECRET, cp_config

pytestmark = pytest.mark.timeout(30)

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def test_the_id_is_made_once_and_kept_across_takeovers_and_an_older_journal_gets_one(tmp_path: Path) -> None:
    d = tmp_path / "j"
    g = Generations(d)
    first = g.identity(g.take())
    assert HEX32.match(first) and (d / JOURNAL_ID).read_text() == f"{first}\n"
    for _ in range(3):  # later takeovers: the same id
        assert g.identity(g.take()) == first
    assert sorted(os.listdir(d)) == sorted([JOURNAL_ID, *(gen_name(n) for n in range(1, 5))])  # nothing of the making left
    (d / JOURNAL_ID).unlink()  # a journal of an older hsbcpd: none, until its next takeover
    assert read_journal_id(d) is None
    made = g.identity(g.take())
    assert HEX32.match(made) and made != first and read_journal_id(d) == made


def test_a_cp_losing_the_race_to_make_it_takes_the_winners(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two CPs taking a journal that has none: the one whose id lands second takes the first's,
    and the file is never overwritten (each says the same id to the hosts)."""
    d = tmp_path / "j"
    g = Generations(d)
    own = g.take()
    real = genmod._durable_file

    def durable(path: Path, content: bytes, flags: int = 0) -> None:
        real(path, content, flags)
        if path.name.startswith(f"{JOURNAL_ID}."):  # meanwhile the other CP's is linked into place
            (d / JOURNAL_ID).write_text("f" * 32 + "\n")

    monkeypatch.setattr(genmod, "_durable_file", durable)
    assert g.identity(own) == "f" * 32
    assert (d / JOURNAL_ID).read_text() == "f" * 32 + "\n" and sorted(os.listdir(d)) == sorted([JOURNAL_ID, gen_name(own)])


def test_set_aside_keeps_the_id_with_the_generations_and_counts_it_no_record(tmp_path: Path) -> None:
    d = tmp_path / "j"
    g = Generations(d)
    ident = g.identity(g.take())
    with pytest.raises(AsideRefused, match="holds no records"):  # its generation files and its id only
        set_aside(d, watch=0.0)
    (d / "seg-00000001-00000001.hsbj").write_bytes(b"\xff" * 64)  # (forced: not recovered)
    to, _, newest = set_aside(d, watch=0.0, force=True)
    assert newest == 1 and sorted(os.listdir(d)) == sorted([JOURNAL_ID, gen_name(1)])
    assert read_journal_id(d) == ident == read_journal_id(to)
    assert g.identity(g.take()) == ident  # the next CP: the same journal's lineage


def server(tmp_path: Path, **kw: Any) -> CPServer:
    return CPServer(load(cp_config(tmp_path, terminals=2, **kw), CPConfig), SECRET, str(tmp_path / "cp.toml"))


async def said_to_a_host(s: CPServer) -> dict[str, Any]:
    """The auth answer a host gets from CP `s`."""
    host, port = s.cfg.cp.host_listen.rsplit(":", 1)
    fs = await FrameStream.connect(host, int(port), timeout=5)
    try:
        await fs.authenticate(SECRET, "host", "host-a", timeout=5)
        return dict(fs.auth_ok)
    finally:
        await fs.aclose()


async def test_a_cp_says_its_journals_id_which_recovery_and_compaction_keep(tmp_path: Path) -> None:
    """Two takeovers of one journal (the second recovers the first's, snapshots, deletes the
    older generation's segments and prunes): the same id, said beside the generation, the file
    neither damage nor garbage."""
    ids = []
    for gen in (1, 2):
        s = server(tmp_path)
        try:
            await s.startup()
            assert s.cp is not None
            ok = await said_to_a_host(s)
            assert ok["generation"] == gen and HEX32.match(ok["journal"]), ok
            ids.append(ok["journal"])
        finally:
            await s.shutdown()
    j = Path(s.cfg.cp.journal)
    assert ids[0] == ids[1] == read_journal_id(j)
    assert recover(j, truncate=False).head_generation == 2


async def test_a_memory_only_cp_says_no_journal(tmp_path: Path) -> None:
    s = server(tmp_path, durability="none")
    try:
        await s.startup()
        ok = await said_to_a_host(s)
        assert ok["generation"] == 0 and "journal" not in ok, ok
    finally:
        await s.shutdown()


def test_the_hosts_file_keeps_the_journal_and_one_without_reads_as_none(tmp_path: Path) -> None:
    path = tmp_path / "host-a.cp-generation"
    write_generation(path, "host-a", 7, "a" * 32)
    assert read_kept(path, "host-a") == (7, "a" * 32) and read_generation(path, "host-a") == 7
    path.write_text('{"host": "host-a", "cp_generation": 5}\n')  # an older hsbd's
    assert read_kept(path, "host-a") == (5, None)
    write_generation(path, "host-a", 6)
    assert read_kept(path, "host-a") == (6, None)
    for bad in ('"cp_journal": 7', '"cp_journal": ""', f'"cp_journal": "{"x" * 65}"'):
        path.write_text(f'{{"host": "host-a", "cp_generation": 5, {bad}}}\n')
        with pytest.raises(GenerationFileError, match="not a journal id"):
            read_kept(path, "host-a")


class CPAnswer:
    """A CP link's stream whose auth answer is `ok`: the link is up until told to end (eof)."""

    def __init__(self, ok: dict[str, Any]) -> None:
        self.auth_ok = ok
        self.end = asyncio.Event()
        self.writer = SimpleNamespace(transport=SimpleNamespace(abort=self.end.set))

    async def authenticate(self, *_: Any, **__: Any) -> str:
        return "ok"

    async def recv(self, timeout: float | None = None) -> dict[str, Any]:
        await self.end.wait()
        raise LinkClosed("eof")

    def send(self, msg: Any) -> None:
        pass

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        self.end.set()

    async def aclose(self) -> None:
        self.end.set()


class LinkRig:
    """A host's CP link (made by `link()`, as many as asked) whose CP answers the test queues in
    `answers`, its generation file `mem`, and `ups`: (the link's generation, what `kept` reads of
    the file) each time a link comes up; refusals said into `rec`."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kept: Any) -> None:
        self.rec = RecordingLog()
        monkeypatch.setattr(refusals, "log", self.rec)  # (a refusal is said through hsb.ops.refusals)
        self.answers: deque[CPAnswer] = deque()
        self.ups: list[tuple[int, str | None]] = []
        self.kept = kept

        async def connect(*_: Any, **__: Any) -> CPAnswer:
            while not self.answers:
                await asyncio.sleep(0.01)
            return self.answers.popleft()

        monkeypatch.setattr(cplink_mod, "FrameStream", SimpleNamespace(connect=connect))
        self.mem = GenerationFile(tmp_path / "host-a.cp-generation", "host-a", timeout=5.0)

    def link(self) -> CPLink:
        link = CPLink(
            name="host-a", addr="127.0.0.1:1", secret=SECRET, interval=0.1, timeout=5.0, max_frame=1 << 20,
            on_up=lambda: self.ups.append((link.cp_generation, self.kept(self.mem.path))), on_frame=lambda m: None,
            on_down=lambda why: None, lease=Lease(), on_answer=lambda n: None, memory=self.mem,
        )  # fmt: skip
        return link


async def until(cond: Any, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not cond():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.01)


async def test_a_host_takes_the_first_journal_and_refuses_a_cp_on_another_whatever_its_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CPs answering in turn at the host's CP address: journal A at generation 1 (taken, saved
    before the link is up), journal B at generation 5 (refused, never up, said), a CP that says
    no journal at 6 (an older hsbcpd, memory-only: judged by generation, up), A again at 7 (up).
    A new link (a restarted host) reading the file refuses B too."""
    rig = LinkRig(tmp_path, monkeypatch, lambda path: read_kept(path, "host-a")[1])
    rec, answers, ups, mem, link_of = rig.rec, rig.answers, rig.ups, rig.mem, rig.link
    a, b = "a" * 32, "b" * 32

    link = link_of()
    link.start()
    try:
        first = CPAnswer({"generation": 1, "journal": a})
        answers.append(first)
        await until(lambda: ups == [(1, a)], "journal A taken, saved before the link is up")
        assert link.generation_status()["journal"] == a and read_kept(mem.path, "host-a") == (1, a)
        first.end.set()
        answers.append(CPAnswer({"generation": 5, "journal": b}))
        await until(lambda: link.journal_refusals >= 1, "journal B refused")
        assert ups == [(1, a)] and link.cp_generation == 1 and link.generation_refusals >= 1
        assert read_kept(mem.path, "host-a") == (1, a)
        (ev,) = rec.events("cp_journal_refused")[:1]
        assert ev["level"] == "error" and f"serves journal {b}" in ev["reason"] and f"not journal {a}" in ev["reason"], ev
        assert "two CPs on different journals" in ev["msg"] and str(mem.path) in ev["msg"] and "\n" not in ev["msg"], ev
        none = CPAnswer({"generation": 6})
        answers.append(none)
        await until(lambda: len(ups) == 2, "a CP saying no journal, judged by its generation")
        assert ups[1] == (6, a) and link.generation_status()["journal"] == a
        none.end.set()
        answers.append(CPAnswer({"generation": 7, "journal": a}))
        await until(lambda: len(ups) == 3, "journal A again")
    finally:
        await link.close()
    # a restarted host: the journal read from its file
    assert await mem.load() == 7 and mem.saved_journal == a
    again = link_of()
    again.cp_generation, again.cp_journal = mem.saved, mem.saved_journal
    again.start()
    try:
        answers.append(CPAnswer({"generation": 9, "journal": b}))
        await until(lambda: again.journal_refusals >= 1, "journal B refused after a restart")
        assert len(ups) == 3
    finally:
        await again.close()
        mem.close()


async def test_each_takeover_has_an_id_of_its_own_in_its_generation_file_said_to_the_hosts(tmp_path: Path) -> None:
    """A CP on a copy of the journal can take the same generation number as the real one, each in
    its own directory: the takeover's own id (random, in its gen-N file) tells them apart."""
    d = tmp_path / "j"
    g1 = Generations(d)
    assert g1.take() == 1 and g1.takeover is not None and re.fullmatch(r"[0-9a-f]{16}", g1.takeover)
    copy = tmp_path / "copy"
    g2 = Generations(d)
    assert g2.take() == 2
    shutil.copytree(d, copy)
    assert g2.takeover != g1.takeover and f"takeover {g2.takeover}" in (d / gen_name(2)).read_text()
    (copy / gen_name(2)).unlink()  # (a copy made before the second takeover)
    g3 = Generations(copy)
    assert g3.take() == 2 and g3.takeover not in (None, g2.takeover)  # the same number, another takeover
    (tmp_path / "cp").mkdir()
    s = server(tmp_path / "cp")
    try:
        await s.startup()
        ok = await said_to_a_host(s)
        assert ok["generation"] == 1 and ok["takeover"] == s.gens.takeover and s.gens.takeover is not None, ok  # type: ignore[union-attr]
        st = s.cp.status()["journal"]  # type: ignore[union-attr]
        assert st["takeover"] == s.gens.takeover  # type: ignore[union-attr]
    finally:
        await s.shutdown()


def test_the_hosts_file_keeps_the_takeover_and_one_without_reads_as_none(tmp_path: Path) -> None:
    path = tmp_path / "host-a.cp-generation"
    write_generation(path, "host-a", 7, "a" * 32, "t" * 16)
    assert read_memory(path, "host-a") == (7, "a" * 32, "t" * 16) and read_kept(path, "host-a") == (7, "a" * 32)
    write_generation(path, "host-a", 7, "a" * 32)  # (an older hsbcpd's generation: none said)
    assert read_memory(path, "host-a") == (7, "a" * 32, None)
    for bad in ('"cp_takeover": 7', '"cp_takeover": ""', f'"cp_takeover": "{"x" * 65}"'):
        path.write_text(f'{{"host": "host-a", "cp_generation": 5, {bad}}}\n')
        with pytest.raises(GenerationFileError, match="not a takeover id"):
            read_memory(path, "host-a")


async def test_a_host_refuses_the_generation_it_has_seen_from_another_takeover(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CPs in turn at the host's CP address, journal A: generation 3 of takeover X (taken, saved);
    generation 3 of takeover Y (a CP on a copy of the journal: refused, said, never up); X again
    (up); generation 4 of Z (up, Z saved); a CP saying no takeover at 4 (an older hsbcpd: up). A
    restarted host reading its file refuses generation 4 of another takeover too."""
    rig = LinkRig(tmp_path, monkeypatch, lambda path: read_memory(path, "host-a")[2])
    rec, answers, ups, mem, link_of = rig.rec, rig.answers, rig.ups, rig.mem, rig.link
    a = "a" * 32

    x, y, z = "1" * 16, "2" * 16, "3" * 16
    link = link_of()
    link.start()
    try:
        first = CPAnswer({"generation": 3, "journal": a, "takeover": x})
        answers.append(first)
        await until(lambda: ups == [(3, x)], "generation 3 of takeover X taken, saved before the link is up")
        first.end.set()
        answers.append(CPAnswer({"generation": 3, "journal": a, "takeover": y}))
        await until(lambda: link.generation_refusals >= 1, "generation 3 of takeover Y refused")
        assert ups == [(3, x)] and link.generation_status()["takeover"] == x and read_memory(mem.path, "host-a")[2] == x
        (ev,) = rec.events("cp_journal_copy_refused")[:1]
        assert ev["level"] == "error" and f"generation 3 of takeover {y}" in ev["reason"] and f"takeover {x}" in ev["reason"], ev
        assert "a CP on a copy of the journal" in ev["reason"] and "stop the CP whose journal directory is the copy" in ev["msg"], ev
        again = CPAnswer({"generation": 3, "journal": a, "takeover": x})
        answers.append(again)
        await until(lambda: len(ups) == 2, "takeover X again")
        again.end.set()
        newer = CPAnswer({"generation": 4, "journal": a, "takeover": z})
        answers.append(newer)
        await until(lambda: ups[-1] == (4, z), "generation 4 of takeover Z taken")
        newer.end.set()
        answers.append(CPAnswer({"generation": 4, "journal": a}))
        await until(lambda: len(ups) == 4, "a CP that says no takeover, judged by its generation")
    finally:
        await link.close()
    assert await mem.load() == 4 and mem.saved_takeover == z
    restarted = link_of()
    restarted.cp_generation, restarted.cp_journal, restarted.cp_takeover = mem.saved, mem.saved_journal, mem.saved_takeover
    restarted.start()
    try:
        answers.append(CPAnswer({"generation": 4, "journal": a, "takeover": y}))
        await until(lambda: restarted.generation_refusals >= 1, "generation 4 of another takeover refused after a restart")
        assert len(ups) == 4
    finally:
        await restarted.close()
        mem.close()
