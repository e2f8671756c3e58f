"""The fault campaign's load (tests.support.campaign): hsb.term's run_load, with progress
snapshots that also carry the drops the CP-restart verdict fails (hsb.term.report's
`disconnects_cp_present`: a terminal dropped and welcomed again by the same CP process, a drop
during a logon included), so that each round is judged on its own share of them. The load's
own report has them only as a total over the run, which mixes the rounds that may drop a
terminal with the CP there (a host's crash while the standby restarts) with those that may not."""

from __future__ import annotations

import asyncio
from typing import Any

import hsb.term.load as term_load
from hsb.term.client import TerminalClient
from hsb.term.loadstats import LoadStats
from hsb.term.report import LoadReport


class CountingStats(LoadStats):
    """LoadStats whose snapshot adds `disconnects_cp_present`, summed over the terminals (each
    counts its own, hsb.term.client, as the report does)."""

    def __init__(self, *args: Any, **kw: Any) -> None:  # (LoadStats's, whatever they become)
        super().__init__(*args, **kw)
        self.seen: list[TerminalClient] = []  # every terminal welcomed at least once

    def on_welcome(self, c: TerminalClient, first: bool) -> None:
        if first:
            self.seen.append(c)
        super().on_welcome(c, first)

    def snapshot(self, phase: str, elapsed: float) -> dict[str, Any]:
        s = super().snapshot(phase, elapsed)
        s["disconnects_cp_present"] = sum(c.cp_present_drops for c in self.seen)
        return s


async def start_load(cp: str, **kw: Any) -> asyncio.Future[LoadReport]:
    """run_load(cp, **kw) in a task of its own, with CountingStats as its stats. run_load makes
    its stats before its first await, so hsb.term.load's LoadStats is CountingStats for that one
    step only (a check says so if that ever changes)."""
    made: list[CountingStats] = []

    def factory(*args: Any, **k: Any) -> CountingStats:
        s = CountingStats(*args, **k)
        made.append(s)
        return s

    saved = term_load.LoadStats  # type: ignore[attr-defined]  # (imported there: patched where run_load looks it up)
    term_load.LoadStats = factory  # type: ignore[attr-defined, assignment]
    try:
        task = asyncio.ensure_future(term_load.run_load(cp, **kw))
        await asyncio.sleep(0)  # its first step, up to its first await
    finally:
        term_load.LoadStats = saved  # type: ignore[attr-defined]
    if not made:
        if task.done():
            task.result()  # (its own error, if it stopped on one)
        task.cancel()
        raise RuntimeError(
            "run_load made no LoadStats in its first step: the campaign cannot count drops with the CP present;"
            " give CountingStats to run_load another way (tests/support/campaignload.py)"
        )
    return task
