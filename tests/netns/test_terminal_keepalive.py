"""A terminal's connection that died without a word to the CP (its reset lost in a partition) is
found by TCP keepalive (`[cp] terminal_keepalive`), so the terminal can log on again; without it
the CP would refuse the terminal as `already_connected` for as long as the dead connection
stays. Real hsbcpd in its namespace, the terminal in another, the link between them cut."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.netns.harness import Daemon, Lab, skip_reason

pytestmark = [
    pytest.mark.skipif(skip_reason() is not None, reason=f"netns lab: {skip_reason()}"),
]

KEEPALIVE_S = 2.0


def _logon(lab: Lab, name: str, tries: int) -> Daemon:
    argv = [sys.executable, "-m", "tests.netns.logon_client", "--cp", lab.cp_terminal, "--terminal", "T00001", "--tries", str(tries)]
    dm = lab.spawn(name, "t", argv, stdout=subprocess.PIPE)
    lab.daemons[name] = dm
    return dm


async def _answer(dm: Daemon, timeout: float) -> dict[str, Any]:
    assert dm.proc.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(dm.proc.stdout.readline), timeout)
    assert line, f"{dm.name} ended without an answer: {dm.tail()}"
    out: dict[str, Any] = json.loads(line)
    return out


async def _dead_connection_then_retries(lab: Lab, idle_s: float = 0.0) -> tuple[list[dict[str, Any]], float]:
    """T00001 logged on, then its machine forgets the connection and its one reset is lost on the
    way; after `idle_s` more (the old connection idle), it logs on again, trying every 0.25 s: the
    answers until its welcome, and how long that took."""
    first = _logon(lab, "logon-1", 1)
    assert (await _answer(first, 10))["t"] == "welcome"
    lab.cut_one_way("out", "t")
    first.proc.kill()
    first.proc.wait(5)
    deadline = time.monotonic() + 10
    while lab.dropped("out", "t") < 1:
        assert time.monotonic() < deadline, "the terminal's reset never reached the cut"
        await asyncio.sleep(0.05)
    lab.heal_one_way()
    if idle_s:
        await asyncio.sleep(idle_s)
    t0 = time.monotonic()
    second = _logon(lab, "logon-2", 120)  # 0.25 s apart: 30 s at most
    answers = [await _answer(second, 10)]
    while answers[-1]["t"] != "welcome":
        answers.append(await _answer(second, 10))
    return answers, time.monotonic() - t0


async def test_a_terminal_whose_connection_died_in_a_partition_logs_on_again(tmp_path: Path) -> None:
    with Lab(tmp_path / "lab", terminals=2, cp_options={"terminal_keepalive": KEEPALIVE_S}) as lab:
        lab.start_cp()
        await lab.wait(lambda s: s["cp"].get("reachable"), 20, "hsbcpd to answer on its admin link")
        answers, took = await _dead_connection_then_retries(lab)
    # the dead connection was there (the test shows what it claims), and keepalive ended it
    assert answers[0] == {"t": "error", "code": "already_connected"}, answers[:3]
    assert took < KEEPALIVE_S + 3 + 3, f"logged on again only after {took:.1f} s: {answers[-3:]}"


async def test_a_terminal_back_on_a_new_connection_gets_its_dead_one_probed_at_once(tmp_path: Path) -> None:
    """The same, with the default keepalive (10 s idle): the CP that refuses the terminal as
    `already_connected` asks the kernel to probe the old connection's peer now; the terminal's
    machine, which forgot it, answers with a reset, and the terminal's next try is welcomed in a
    second or two, not after the keepalive's idle time and three probes (13 s; the two-CP
    walk-through saw refusals for 7 s and once 31 s after a VRRP flap reset terminals' connections
    at the wrong machine)."""
    with Lab(tmp_path / "lab", terminals=2) as lab:
        lab.start_cp()
        await lab.wait(lambda s: s["cp"].get("reachable"), 20, "hsbcpd to answer on its admin link")
        # (the old connection idle past the probe's 1 s, as a rebooted terminal's is)
        answers, took = await _dead_connection_then_retries(lab, idle_s=1.2)
    assert answers[0] == {"t": "error", "code": "already_connected"}, answers[:3]
    assert took < 3.0, f"logged on again only after {took:.1f} s ({len(answers) - 1} refusals): {answers[-3:]}"
