"""hsb.ports: free ports below the ephemeral range, and $HSB_PORT_RANGE, which gives processes
that pick ports at once (the suite's two workers) disjoint slices."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hsb import ports
from hsb.ctl.sandbox_files import SandboxError, prepare


def test_without_the_variable_ports_come_from_below_the_ephemeral_range(monkeypatch: pytest.MonkeyPatch) -> None:
    mine = ports.port_range()  # (this worker's slice, under xdist: draws stay in it)
    monkeypatch.delenv(ports.ENV, raising=False)
    floor = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert ports.port_range() == ports.default_range() == (10000 if floor > 12001 else 1024, floor - 1)
    low, high = mine
    monkeypatch.setenv(ports.ENV, f"{low}-{high}")
    for _ in range(20):
        assert low <= ports.free_port() <= high


def _own(monkeypatch: pytest.MonkeyPatch, width: int) -> tuple[int, int]:
    """Draws narrowed to the first `width` ports of this worker's slice (none handed out yet):
    they bind nothing the other worker could be about to bind."""
    low, high = ports.port_range()
    assert high - low + 1 >= width
    high = low + width - 1
    monkeypatch.setenv(ports.ENV, f"{low}-{high}")
    ports._given.difference_update(range(low, high + 1))
    return low, high


def test_the_variable_narrows_the_draw_and_no_port_is_given_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    low, high = _own(monkeypatch, 64)
    got = [ports.free_port() for _ in range(30)]
    assert all(low <= p <= high for p in got)
    assert len(set(got)) == 30


def test_a_port_something_listens_on_is_never_given(monkeypatch: pytest.MonkeyPatch) -> None:
    low, high = _own(monkeypatch, 16)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports.free_port()))
        s.listen()
        taken = s.getsockname()[1]
        ports._given.difference_update(range(low, high + 1))
        assert taken not in {ports.free_port() for _ in range(10)}


@pytest.mark.parametrize("spec", ["20000", "20000-", "a-b", "20000-20010", "900-5000", "30000-70000", "30000-20000"])
def test_a_bad_range_names_itself_and_the_fix(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    monkeypatch.setenv(ports.ENV, spec)
    with pytest.raises(ports.PortRangeError, match=rf"HSB_PORT_RANGE='{spec}' is not LOW-HIGH .*write it like 20000-24999, or unset it"):
        ports.free_port()


def test_a_range_with_no_free_port_left_says_so_rather_than_leaving_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ports.ENV, "20000-20015")
    ports._given.update(range(20000, 20016))
    try:
        with pytest.raises(ports.PortRangeError, match="no free port found in HSB_PORT_RANGE=20000-20015 after 200 tries: widen it"):
            ports.free_port()
    finally:
        ports._given.difference_update(range(20000, 20016))


def test_slices_are_disjoint_and_cover_the_range() -> None:
    slices = [ports.split_range(i, 3, (10000, 32767)) for i in range(3)]
    assert slices == ["10000-17588", "17589-25177", "25178-32766"]
    with pytest.raises(ports.PortRangeError, match="too narrow for 3 slices"):
        ports.split_range(0, 3, (20000, 20040))


def test_the_sandbox_reports_a_bad_range_as_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ports.ENV, "nonsense")
    with pytest.raises(SandboxError, match="HSB_PORT_RANGE='nonsense' is not LOW-HIGH"):
        prepare(tmp_path / "sb", tls=False, service="echo", dsn=None, terminals=2, conventional=False)


def test_each_worker_of_the_suite_gets_a_slice_of_its_own(tmp_path: Path) -> None:
    """What made stop 63's CI fail: both workers drew from one range, and one picked a port the
    other had handed to a daemon that had not bound it yet."""
    (tmp_path / "test_show.py").write_text(
        "import os, pathlib\n"
        "def _note():\n"
        "    w = os.environ['PYTEST_XDIST_WORKER']\n"
        f"    (pathlib.Path({str(tmp_path)!r}) / ('seen-' + w)).write_text(os.environ.get('HSB_PORT_RANGE', 'unset'))\n"
        "def test_a(): _note()\n"
    )
    conftest = Path(__file__).parent / "conftest.py"
    (tmp_path / "conftest.py").write_text(f"exec(compile(open({str(conftest)!r}).read(), {str(conftest)!r}, 'exec'))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", ports.ENV))}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist", "each", str(tmp_path)],
        cwd=Path(__file__).parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    seen = {p.name.removeprefix("seen-"): p.read_text() for p in tmp_path.glob("seen-*")}
    whole = ports.default_range()
    assert seen == {"gw0": ports.split_range(0, 2, whole), "gw1": ports.split_range(1, 2, whole)}, out.stdout
