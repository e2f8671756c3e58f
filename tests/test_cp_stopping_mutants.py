"""The CP's stop (hsb/cp/stopping.py; docs/operations.md "Stopping"), each test naming a behaviour
that a mutation audit of the module found no test for: systemd told STOPPING=1, the takeover's
beat ended, the listening servers closed, by the stop itself, and the documented half second a
stop gives a journal write still out. Driven on the stand-in of CPServer that
tests/test_cp_links_mutants.py builds (`_Stopper`).

The audit (session 63): 34 hand-made mutants of stopping.py (one a duplicate); 28 were killed
by tests/test_cp_links_mutants.py, test_cp_address.py and test_cp_journal_storage.py; 4 are
killed here; 2 are equivalent (connections frozen after a superseded stop aborted them all
already: an aborted connection reads nothing anyway; the 1 s wait for the listeners to close
made 0: the listeners are closed either way, the stop only goes on sooner).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.test_cp_links_mutants import _Stopper

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def no_listeners(monkeypatch: pytest.MonkeyPatch) -> None:
    from hsb import cli
    from hsb.cp import supervise

    monkeypatch.setattr(supervise, "LISTENERS", {})
    monkeypatch.setattr(cli, "MEANT_EXIT", cli.MEANT_EXIT)


async def test_a_stop_tells_systemd_it_is_stopping(tmp_path: Path, no_listeners: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """`STOPPING=1` goes to systemd at the stop's start, with the status "stopping": without it a
    stop that drains for a while looks like a hang to the watchdog and to `systemctl status`
    (mutant: the notify dropped)."""
    from hsb.cp import stopping

    said: list[dict[str, Any]] = []

    def notify(**f: Any) -> bool:
        said.append(f)
        return True

    monkeypatch.setattr(stopping, "notify", notify)
    st = _Stopper(tmp_path)
    await st.s.shutdown()
    assert said[:1] == [{"STOPPING": 1, "STATUS": "stopping"}]


async def test_a_stop_ends_the_takeovers_beat(tmp_path: Path, no_listeners: None) -> None:
    """A CP stopped while its takeover still beats the generation file (a stop asked during the
    takeover, a listener it could not open) ends that beat: a stopped CP that went on beating
    would keep a waiting CP from taking over (mutant: `_end_takeover_beats` not called)."""
    st = _Stopper(tmp_path)
    ended: list[int] = []
    st.s._end_takeover_beats = lambda: ended.append(1)  # type: ignore[method-assign]
    await st.s.shutdown()
    assert ended, "the takeover's beat was not ended by the stop"


async def test_a_stop_closes_its_listening_servers(tmp_path: Path, no_listeners: None) -> None:
    """The stop closes the CP's listeners (terminals and hosts go to the next CP, refused here
    rather than accepted by a CP that takes nothing new), and waits for them to close (mutant:
    the servers not closed)."""

    async def nothing(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    srv = await asyncio.start_server(nothing, "127.0.0.1", 0)
    try:
        st = _Stopper(tmp_path)
        st.s.servers = [srv]
        assert srv.is_serving()
        await st.s.shutdown()
        assert not srv.is_serving(), "a listener still serves after the stop"
    finally:
        srv.close()


async def test_a_stop_whose_journal_did_not_drain_waits_half_a_second_more_as_documented(tmp_path: Path, no_listeners: None) -> None:
    """docs/operations.md and docs/cp-journal.md: a stop while the storage hangs waits 2 s for
    what is pending, "half a second more for the write still out", and ends within about 3 s
    (mutant: STOP_AFTER_DRAIN_S = 5.0, which the real-process test's 8 s bound let through)."""
    st = _Stopper(tmp_path, drained=False)
    await st.s.shutdown()
    assert [c for c in st.calls if c[0] == "stop"] == [("stop", 0.5)]
    ops = " ".join((Path(__file__).parents[1] / "docs" / "operations.md").read_text().split())
    assert "waits 2 s for what is pending" in ops and "half a second more for the write still out" in ops
