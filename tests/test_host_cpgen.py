"""A host's CP generation file (hsb.host.cpgen): the highest CP journal generation it has seen,
kept across its restarts. Round trip, a missing file (generation 0), a damaged one (an error
naming it and the fix, at the start and from --check-config), and writes that fail or hang
(said, and the host goes on). The real-process test of a restarted host refusing an older CP
is in test_cp_generations."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from hsb.host import cpgen
from hsb.host.cpgen import GenerationFile, GenerationFileError, generation_path, read_generation, write_generation
from tests.support.procs import create_takeover_file, host_config

pytestmark = pytest.mark.timeout(60)


def test_the_file_round_trips_beside_the_takeover_file_and_a_missing_one_is_generation_0(tmp_path: Path) -> None:
    path = generation_path(tmp_path / "takeover.dat", "host-a")
    assert path == tmp_path / "host-a.cp-generation"
    assert read_generation(path, "host-a") == 0  # a host's first start
    write_generation(path, "host-a", 7)
    assert read_generation(path, "host-a") == 7
    write_generation(path, "host-a", 9)
    assert read_generation(path, "host-a") == 9
    assert json.loads(path.read_text()) == {"host": "host-a", "cp_generation": 9}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host-a.cp-generation"]  # no temporary file left
    # the other host of the pair beside it, on the same folder: its own file
    write_generation(generation_path(tmp_path / "takeover.dat", "host-b"), "host-b", 3)
    assert read_generation(path, "host-a") == 9
    # a host name is any text: the file stays in the folder
    odd = generation_path(tmp_path / "takeover.dat", "../a/b")
    assert odd.parent == tmp_path and "/" not in odd.name


@pytest.mark.parametrize(
    "raw, why",
    [
        (b"", "empty"),
        (b"\x00\x00\x00\x00", "not JSON"),
        (b'{"host": "host-a", "cp_generation": 7', "not JSON"),  # cut short
        (b"[7]", "not a JSON object"),
        (b'{"host": "host-a", "cp_generation": -1}', "not a generation"),
        (b'{"host": "host-a", "cp_generation": true}', "not a generation"),
        (b'{"host": "host-a"}', "not a generation"),
        (b'{"host": "host-b", "cp_generation": 7}', "written for host 'host-b'"),
        (b" " * 5000, "over 4096 bytes"),
    ],
)
def test_a_damaged_file_is_an_error_naming_it_and_the_fix(tmp_path: Path, raw: bytes, why: str) -> None:
    path = tmp_path / "host-a.cp-generation"
    path.write_bytes(raw)
    with pytest.raises(GenerationFileError) as err:
        read_generation(path, "host-a")
    msg = str(err.value)
    assert str(path) in msg and why in msg and "remove it and start hsbd again" in msg and "\n" not in msg, msg


def test_a_directory_in_its_place_is_an_error_too(tmp_path: Path) -> None:
    path = tmp_path / "host-a.cp-generation"
    path.mkdir()
    with pytest.raises(GenerationFileError, match="is a directory; remove it"):
        read_generation(path, "host-a")


async def test_a_write_that_fails_is_said_and_the_next_one_succeeds(tmp_path: Path) -> None:
    folder = tmp_path / "not-mounted"
    mem = GenerationFile(folder / "host-a.cp-generation", "host-a", timeout=2.0)
    try:
        assert await mem.load() == 0
        assert await mem.save(4) is False
        st = mem.status()
        assert st["remembered"] == 0 and st["save_error"] is not None and "No such file" in st["save_error"], st
        folder.mkdir()
        assert await mem.save(4) is True
        assert mem.status() == {"remembered": 4, "file": str(folder / "host-a.cp-generation"), "save_error": None}
        assert read_generation(folder / "host-a.cp-generation", "host-a") == 4
    finally:
        mem.close()


async def test_a_write_that_hangs_is_given_up_at_its_deadline_and_not_queued_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hung mount: the save gives up at storage_timeout (the host registers all the same), and
    a save while that write is still out fails at once rather than wait behind it."""
    release = threading.Event()
    real = cpgen.write_generation

    def hung(path: Path, host: str, generation: int, journal: str | None = None, takeover: str | None = None) -> None:
        release.wait(10)
        real(path, host, generation, journal, takeover)

    monkeypatch.setattr(cpgen, "write_generation", hung)
    mem = GenerationFile(tmp_path / "host-a.cp-generation", "host-a", timeout=0.2)
    loop = asyncio.get_running_loop()
    try:
        t0 = loop.time()
        assert await mem.save(5) is False
        assert loop.time() - t0 < 2.0
        assert "did not return within 0.2 s" in (mem.error or "")
        t0 = loop.time()
        assert await mem.save(6) is False
        assert loop.time() - t0 < 0.1 and "has not returned" in (mem.error or "")
        release.set()
        monkeypatch.setattr(cpgen, "write_generation", real)
        await asyncio.wait_for(_freed(mem), 5)
        assert await mem.save(6) is True and read_generation(mem.path, "host-a") == 6
    finally:
        release.set()
        mem.close()


async def _freed(mem: GenerationFile) -> None:
    while mem._busy:
        await asyncio.sleep(0.01)


async def test_the_generation_is_durable_before_the_link_is_up_for_registering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Raised, durable, then registered: a host that crashed between its registration and the
    write would have registered with the newer CP and started again below it."""
    from hsb.host.cplink import CPLink
    from hsb.host.lease import Lease
    from tests.support.procs import SECRET, start_cp

    order: list[str] = []
    real = cpgen.write_generation

    def write(path: Path, host: str, generation: int, journal: str | None = None, takeover: str | None = None) -> None:
        real(path, host, generation, journal, takeover)
        order.append(f"written {generation}")

    monkeypatch.setattr(cpgen, "write_generation", write)
    cp = start_cp(tmp_path / "cp", terminals=2)
    mem = GenerationFile(tmp_path / "host-a.cp-generation", "host-a", timeout=2.0)
    up = asyncio.Event()

    def on_up() -> None:
        order.append("up")
        up.set()

    link = CPLink(
        name="host-a", addr=cp.info["host"], secret=SECRET, interval=0.1, timeout=0.5, max_frame=1 << 20,
        on_up=on_up, on_frame=lambda m: None, on_down=lambda why: None, lease=Lease(), on_answer=lambda n: None, memory=mem,
    )  # fmt: skip
    link.start()
    try:
        await asyncio.wait_for(up.wait(), 10)
        assert order == ["written 1", "up"], order
        assert read_generation(mem.path, "host-a") == 1 and link.generation_status()["remembered"] == 1
    finally:
        await link.close()
        mem.close()
        cp.stop()


def _host_setup(tmp_path: Path) -> Path:
    create_takeover_file(tmp_path / "takeover.dat", 16)
    return host_config(
        tmp_path, "host-a", cp="127.0.0.1:1", peer_listen="127.0.0.1:0", peer="127.0.0.1:1", takeover=tmp_path / "takeover.dat", records=16
    )


def test_hsbd_with_a_damaged_file_does_not_start_and_check_config_says_so(tmp_path: Path) -> None:
    cfg = _host_setup(tmp_path)
    (tmp_path / "host-a.cp-generation").write_bytes(b"\x00" * 16)  # zeros where a write was lost

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hsb.host", "--config", str(cfg), *args], capture_output=True, text=True, timeout=30)

    r = run("--role", "active")
    assert r.returncode == 78, r.stderr
    lines = [line for line in r.stderr.splitlines() if not line.startswith("{")]  # (the log's JSON lines go to stderr too)
    assert len(lines) == 1 and lines[0].startswith("config error: the CP generation file"), r.stderr
    assert str(tmp_path / "host-a.cp-generation") in lines[0] and "remove it and start hsbd again" in lines[0]
    # --check-config says the start's line, with the same status (the start said it as 'error: …')
    r = run("--check-config")
    assert r.returncode == 78 and r.stderr.splitlines() == lines and "damaged (not JSON)" in r.stderr, (r.stderr, lines)
    (tmp_path / "host-a.cp-generation").unlink()
    r = run("--check-config")
    assert r.returncode == 0, r.stderr


def test_check_config_reads_the_file_within_storage_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--check-config read the file without a deadline (the start has one): a hung mount held the
    check for as long. It reads it within storage_timeout now and, past it, says so as a warning
    (the start then stops on the same deadline, or reads the file)."""
    import time

    from click.testing import CliRunner

    from hsb.host.main import main

    cfg = _host_setup(tmp_path)
    cfg.write_text(cfg.read_text().replace("record_size = 4096\n", "record_size = 4096\nstorage_timeout = 0.3\n", 1))
    hung = threading.Event()

    def read(path: Path, host: str) -> int:  # a read on a hung mount (let go at the end of the test)
        hung.wait(20)
        return 0

    monkeypatch.setattr(cpgen, "read_generation", read)
    try:
        began = time.monotonic()
        r = CliRunner().invoke(main, ["--config", str(cfg), "--check-config"])
        took = time.monotonic() - began
    finally:
        hung.set()
    assert r.exit_code == 0 and "config OK" in r.stdout, r.output
    assert took < 10, took
    path = tmp_path / "host-a.cp-generation"
    assert f"config warning: the CP generation file {path} was not read within storage_timeout (0.3 s)" in r.stderr, r.stderr


def test_a_new_sandbox_in_an_earlier_ones_folder_forgets_its_hosts_generations(tmp_path: Path) -> None:
    """`hsbctl sandbox up` starts its CP on an empty journal (generation 1): the hosts' files of
    the sandbox before in the folder (a higher generation) would have it refused."""
    from hsb.ctl import sandbox_files

    d = tmp_path / "sb"
    plan = sandbox_files.prepare(d, tls=False, service="echo", dsn=None, terminals=2, conventional=False)
    for name in sandbox_files.HOSTS:
        write_generation(generation_path(plan["takeover"], name), name, 5)
    plan = sandbox_files.prepare(d, tls=False, service="echo", dsn=None, terminals=2, conventional=False)
    assert [read_generation(generation_path(plan["takeover"], n), n) for n in sandbox_files.HOSTS] == [0, 0]


async def test_the_remembered_generation_is_a_metric_beside_the_seen_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The generation a host keeps in its file (what a restart starts from, below which it
    refuses a CP) was in its status only: a write that kept failing left a host that would,
    once restarted, trust a superseded CP, with nothing for an alert to see. The metrics have it
    as hsb_cp_generation_remembered, beside hsb_cp_generation_seen."""
    from hsb.host.server import HostServer
    from hsb.ops.metrics import HostCollector
    from hsb.service.builtin import EchoService
    from tests.support.inproc import pair_in_hot_standby

    real = cpgen.write_generation

    def write(path: Path, host: str, generation: int, journal: str | None = None, takeover: str | None = None) -> None:
        if host == "host-a":  # (host-a's storage refuses the write; host-b's takes it)
            raise OSError(5, "Input/output error", str(path))
        real(path, host, generation, journal, takeover)

    monkeypatch.setattr(cpgen, "write_generation", write)

    def metrics(h: HostServer) -> dict[str, float]:
        return {s.name: s.value for m in HostCollector(h.status).collect() for s in m.samples if not s.labels}

    async with pair_in_hot_standby(tmp_path, EchoService) as (_, a, b, _tasks):
        gen = b.status()["cp_generation"]["seen"]
        assert gen >= 1 and read_generation(b.cp_memory.path, "host-b") == gen
        m = metrics(b)
        assert m["hsb_cp_generation_remembered"] == gen and m["hsb_cp_generation_seen"] == gen, m
        m = metrics(a)
        assert m["hsb_cp_generation_seen"] == gen and m["hsb_cp_generation_remembered"] == 0, m


async def test_a_host_link_takes_each_higher_generation_and_refuses_only_a_lower_one(tmp_path: Path) -> None:
    """In-process CPs at one address: generation 1, the same CP again after its link dropped (taken
    again, not refused), a newer one (2: raised, not only the first seen), then a CP of another
    journal at generation 1 (below 2: refused, never up)."""
    from hsb.config import load
    from hsb.cp.config import CPConfig
    from hsb.cp.server import CPServer
    from hsb.host.cplink import CPLink
    from hsb.host.lease import Lease
    from hsb.ports import free_port
    from tests.support.inproc import until
    from tests.support.procs import SECRET, cp_config

    ports: dict[str, Any] = {k: f"127.0.0.1:{free_port()}" for k in ("terminal_listen", "host_listen", "admin_listen")}

    def cp(journal: str) -> CPServer:
        d = tmp_path / journal
        d.mkdir(exist_ok=True)
        return CPServer(load(cp_config(d, terminals=2, journal=str(tmp_path / f"{journal}-j"), **ports), CPConfig), SECRET, str(d / "cp.toml"))

    ups: list[int] = []
    link = CPLink(
        name="host-a", addr=ports["host_listen"], secret=SECRET, interval=0.1, timeout=0.5, max_frame=1 << 20,
        on_up=lambda: ups.append(link.cp_generation), on_frame=lambda m: None, on_down=lambda why: None, lease=Lease(),
        on_answer=lambda n: None,
    )  # fmt: skip
    s = cp("a")
    try:
        await s.startup()
        link.start()
        await until(lambda: ups == [1] and s.hosts, "the link up at generation 1", timeout=5)
        for h in list(s.hosts):
            h.abort()  # the link drops; the same CP (generation 1) is taken again
        await until(lambda: len(ups) == 2, "the link up again at the same CP", timeout=5)
        await s.shutdown()
        s = cp("a")  # the journal's next generation: 2
        await s.startup()
        await until(lambda: len(ups) == 3, "the link up at generation 2", timeout=5)
        assert ups == [1, 1, 2] and link.generation_refusals == 0, ups
        await s.shutdown()
        s = cp("b")  # another journal, at generation 1: older than one seen
        await s.startup()
        await until(lambda: link.generation_refusals >= 1, "the older CP refused", timeout=5)
        assert ups == [1, 1, 2] and link.cp_generation == 2, ups
    finally:
        await link.close()
        await s.shutdown()
