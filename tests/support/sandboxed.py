"""A sandbox under test (hsb.ctl.sandbox's info, as conftest's `sb` returns it), as the end-to-end
tests drive and check it: its hosts' pids, HTTP addresses and status (status_all, and waits on it:
which hosts are active, every terminal back), hsbctl run against it in a subprocess, load from
hsb.term while an action runs, and the checks of the run: the strict verdict spelled out
(assert_clean) and the hosts' journals (check_journals)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

from hsb.ctl import sandbox
from hsb.ctl.gather import status_all
from hsb.term.load import background_load
from hsb.term.verdict import ids
from tests.support.hostjournal import Journals, read_host_journal, unmarked_repeats


def pid_of(info: dict[str, Any], name: str) -> int:
    st = sandbox.load_state(Path(info["dir"]))
    return int(st["hosts"][name]["pid"])


async def status(info: dict[str, Any]) -> dict[str, Any]:
    st = sandbox.load_state(Path(info["dir"]))
    return await status_all(st["cp"]["admin"], [h["admin"] for h in st["hosts"].values()], info["secret_file"], timeout=1.0)


async def wait_status(info: dict[str, Any], pred: Any, timeout: float = 20.0, what: str = "status") -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    last: dict[str, Any] = {}
    while True:
        last = await status(info)
        if pred(last):
            return last
        if asyncio.get_running_loop().time() > deadline:
            brief = [(h.get("name"), h.get("role"), h.get("state"), h.get("last_error")) for h in last["hosts"]]
            raise TimeoutError(f"timed out waiting for {what}; hosts {brief}")
        await asyncio.sleep(0.05)


def active_names(st: dict[str, Any]) -> list[str]:
    return [h["name"] for h in st["hosts"] if h.get("reachable") and h.get("role") == "active"]


def journals(info: dict[str, Any]) -> Journals:
    """{host: {(terminal, id): [each line's redelivered mark and epoch, in the file's order]}} from the journal files."""
    out: Journals = {}
    for path in info["journals"]:
        p = Path(path)
        host = p.stem.removeprefix("journal-")
        out[host] = read_host_journal(p, host)
    return out


def check_journals(info: dict[str, Any], report: Any, order: list[str]) -> None:
    """Every acknowledged id is in a journal; an id processed again (on the same host or a later
    one) is marked redelivered every time after its first."""
    j = journals(info)
    acked = acked_ids(report)
    assert acked, "the load acknowledged nothing"
    seen = set().union(*(set(e) for e in j.values()))
    missing = acked - seen
    assert not missing, f"{len(missing)} acknowledged ids are in no journal, e.g. {sorted(missing)[:5]}"
    again = unmarked_repeats(j)
    assert not again, f"{len(again)} ids processed again without the redelivered mark: {again[:5]}"
    for earlier, later in zip(order, order[1:], strict=False):
        both = set(j.get(earlier, {})) & set(j.get(later, {}))
        bad = [k for k in both if not j[later][k][0].redelivered]
        assert not bad, f"ids processed by {earlier} and again by {later} without the redelivered mark: {bad[:5]}"


def acked_ids(report: Any) -> set[tuple[str, int]]:
    return {(t, i) for t, rec in report.ids.items() for i in ids(rec["acked"], rec["step"])}


def assert_clean(report: Any, *, disconnects_allowed: bool = False) -> None:
    """The strict verdict, and the counts it rests on spelled out."""
    d = report.to_dict()
    assert report.ok, report.failures
    assert d["acked"] > 0 and d["lost"] == 0 and d["duplicates"] == 0 and d["unexpected"] == 0, d
    assert d["unacked"] == 0 and d["bad_data"] == 0, d
    assert d["replied"] == d["acked"] == d["sent"], d
    if not disconnects_allowed:
        assert d["disconnects"] == 0 and d["session_closed"] == 0, d


async def load_with(
    info: dict[str, Any],
    action: Any,
    *,
    terminals: int,
    rate: float,
    duration: float | None = None,
    settle: float = 20.0,
    expect_disconnects: bool | str = False,
    marks: list[tuple[str, float]] | None = None,
) -> Any:
    """Run the load; call `action()` once sending has started; return the report.

    With `duration=None` the load sends until `action()` returns (plus one second)."""
    task, stop = await background_load(
        info["cp"]["terminal"],
        terminals=terminals,
        rate=rate,
        duration=duration or 3600,
        settle=settle,
        record_ids=True,
        expect_disconnects=expect_disconnects,
        marks=marks,
    )
    try:
        await action()
    except BaseException:
        stop.set()
        task.cancel()
        raise
    if duration is None:
        await asyncio.sleep(1.0)
        stop.set()
    return await task


def ctl(info: dict[str, Any], *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hsb.ctl", *info["ctl"], *args], capture_output=True, text=True, timeout=timeout)


def http_of(info: dict[str, Any], name: str) -> str:
    return cast(str, next(h["http"] for h in info["hosts"] if h["name"] == name))


def all_back(s: dict[str, Any], n: int) -> bool:
    """Every terminal connected again with its session (the new CP keeps the active's sessions
    before their terminals return: the session count alone says so too early)."""
    t = (s.get("cp") or {}).get("terminals") or {}  # none while the CP is away
    return t.get("active_sessions") == t.get("connected") == n
