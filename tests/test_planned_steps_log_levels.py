"""What hsbd logs at the planned steps of normal operation (docs/operations.md §8, §16): an
operator's pipeline alerts on `warning` and `error`, so a step the operator made (restarting the
standby, a rolling upgrade, hsbd@active restarted after a handover) must not log a warning where
the daemon knows it is no fault, and each warning kept for the same event when it is one (an
unplanned link loss) must stay. In process, the log recorded (tests/support/logrec.py):

- a host started as the active, still `starting`, that hears the peer claim the role: no
  `peer_took_over` warning with a "no lease (its CP link is down)" last error: it never held
  the role, and rejoins as the standby (the same claim after its lease ran out stays a warning,
  tests/test_lease_mutants.py);
- the CP link the CP ended after an `active_exists` refusal this host acts on (the rejoin): no
  `cp_link_down` warning the first time; the same refusal again, and a plain end, are warnings;
- the peer link: the stopping host's own end of it is no warning; the peer's end after its last
  heartbeat said `stopping` is none either (nor the active's `hot_standby_lost`, and a stop of
  the active does not wait for that standby as for a blip); an end without that word, or a
  silence, is a warning; a host's close sends that last heartbeat;
- a standby's stop says it is the standby's, not "normal termination (no established standby)";
- and the CP's: `hsbctl resume` is info, the pause it ends a warning.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from hsb.host import cplink as cplink_mod
from hsb.host import ha as ha_mod
from hsb.host import peer as peer_mod
from hsb.host.peer import PeerLink
from hsb.host.server import HostServer
from hsb.host.states import ESTABLISHED, SERVING
from tests.support.logrec import RecordingLog
from tests.support.unstarted import unstarted_active
from tests.test_cplink_mutants import _link
from tests.test_host_cp_link_edges import FakeStream

pytestmark = pytest.mark.timeout(30)

LOUD = {"warning", "error", "critical", "exception"}


def _unstarted(tmp_path: Path, role: str) -> HostServer:
    """hsbd's HostServer started with `--role role`, built and not started (no CP, no peer)."""
    from hsb.config import load
    from hsb.host.config import HostConfig
    from hsb.service.builtin import EchoService
    from hsb.takeover.fileio import create_file
    from tests.support.procs import SECRET, host_config

    create_file(str(tmp_path / "t.dat"), 16, 4096)
    p = host_config(tmp_path, "host-a", cp="127.0.0.1:1", peer_listen="127.0.0.1:0", peer="127.0.0.1:1", takeover=tmp_path / "t.dat", records=16)
    return HostServer(load(p, HostConfig), role, SECRET, EchoService("host-a"), str(p))


def _loud(rec: RecordingLog) -> list[dict[str, Any]]:
    return [e for e in rec.entries if e["level"] in LOUD]


async def test_a_host_started_as_the_active_hearing_the_peer_is_active_warns_of_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """hsbd@active restarted after its handover: the peer's hello says it is the active (serving,
    epoch 4) before the CP refused this host the role. This host never held it: no
    `peer_took_over` warning, no last error "holds no lease (its CP link is down)" in its
    status; an info line says the CP decides."""
    rec = RecordingLog()
    monkeypatch.setattr(ha_mod, "log", rec)
    srv = _unstarted(tmp_path, "active")
    ha = srv.ha
    assert ha.state == "starting" and ha.role == "active" and not ha.granted
    await ha.peer_peer_hello({"t": "peer_hello", "name": "host-b", "role": "active", "state": "serving", "instance": "b1", "epoch": 4})
    assert _loud(rec) == [], rec.entries
    assert [e["event"] for e in rec.entries] == ["peer_is_active_at_start"], rec.entries
    assert ha.last_error is None
    assert ha.counters["two_actives_claimed"] == 0


async def test_the_same_claim_heard_by_an_active_whose_lease_ran_out_stays_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The contrast: an active that held the role (registered, its grant then gone) hears the
    same claim: it was taken over from, a warning with its last error, as before."""
    srv, _ = unstarted_active(tmp_path)
    try:
        ha = srv.ha
        ha.link_event({"t": "demoted", "epoch": 4})  # (the grant gone: no lease of the CP's)
        rec = RecordingLog()
        monkeypatch.setattr(ha_mod, "log", rec)
        await ha.peer_peer_hello({"t": "peer_hello", "name": "host-b", "role": "active", "state": "serving", "instance": "b1", "epoch": 5})
        assert [(e["event"], e["level"]) for e in rec.entries] == [("peer_took_over", "warning")], rec.entries
        assert ha.last_error is not None and "holds no lease" in ha.last_error
    finally:
        srv.ha.close()
        srv.delivery.cancel()


def _refusal() -> dict[str, Any]:
    return {
        "t": "error",
        "code": "active_exists",
        "msg": "host-b is already the active host (epoch 4); start host-a with --role standby",
        "active": "host-b",
    }


async def test_the_cp_ending_the_link_after_a_refusal_the_host_acts_on_is_no_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CP refuses the restarted hsbd@active the role (`active_exists`) and closes the link:
    the host acts on it (it rejoins as the standby) and makes the link again at once. That end
    is logged as info, with the CP's word; the same refusal on the next link (backed off) and a
    link that just ends stay warnings."""
    rec = RecordingLog()
    monkeypatch.setattr(cplink_mod, "log", rec)
    link, waits, downs = _link(monkeypatch, [FakeStream([_refusal()]), FakeStream([_refusal()]), FakeStream([])])
    await link._run()
    ends = rec.events("cp_link_down")
    assert [e["level"] for e in ends] == ["info", "warning", "warning"], ends
    assert "active_exists" in ends[0]["reason"] and "host-b is already the active host" in ends[0]["reason"], ends[0]
    assert ends[1]["reason"] == "eof" and ends[2]["reason"] == "eof", ends
    assert len(downs) == 3  # the HA loop hears every end as before
    assert [e["event"] for e in rec.entries if e["level"] == "warning"].count("cp_link_backoff") == 1, rec.entries


class _Out:
    """A peer link's sending connection: records the frames sent."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, msg: dict[str, Any]) -> None:
        self.sent.append(msg)

    async def aclose(self) -> None:
        return None


def _peer(state: str = "established", role: str = "standby") -> tuple[PeerLink, list[str]]:
    downs: list[str] = []
    hello = {"t": "peer_hello", "name": "host-a", "role": role, "state": state, "instance": "a1", "ring_next": None, "ring_write_failing": None}
    link = PeerLink(
        name="host-a", listen="127.0.0.1:0", peer="127.0.0.1:1", secret=b"s" * 32, interval=0.1, timeout=0.5, max_frame=1 << 20,
        on_frame=lambda m: None, on_down=downs.append, on_up=lambda: None, hello=lambda: dict(hello),
    )  # fmt: skip
    return link, downs


def _up_with(link: PeerLink, peer_state: str) -> None:
    link.up, link.peer_name = True, "host-b"
    link.peer_hello = {"t": "peer_hello", "name": "host-b", "role": "standby", "state": peer_state, "instance": "b1"}


@pytest.mark.parametrize(
    ("closed", "peer_state", "why", "level"),
    [
        (True, "established", "eof", "info"),  # this host stops: it closed the link itself
        (False, "stopping", "eof", "info"),  # the peer said it stops, then closed
        (False, "established", "eof", "warning"),  # the peer gone without a word: a crash, a kill
        (False, "stopping", "no heartbeat for 0.612s", "warning"),  # a silence is no goodbye
    ],
)
async def test_the_peer_links_end_is_a_warning_only_when_nobody_said_it_would_end(
    monkeypatch: pytest.MonkeyPatch, closed: bool, peer_state: str, why: str, level: str
) -> None:
    rec = RecordingLog()
    monkeypatch.setattr(peer_mod, "log", rec)
    link, downs = _peer()
    _up_with(link, peer_state)
    link.closed = closed
    link._down(why)
    assert [(e["event"], e["level"]) for e in rec.entries] == [("peer_link_down", level)], rec.entries
    assert downs == [why]  # the HA loop hears the same end as before
    assert link.said_stopping == (not closed and peer_state == "stopping" and why == "eof")


async def test_a_hosts_close_sends_a_last_heartbeat_with_its_state() -> None:
    """At its close (the end of a stop) the host sends one more heartbeat, which says
    `stopping`: the peer takes the end that follows for this stop."""
    link, _ = _peer(state="stopping")
    out = _Out()
    link.outbound = out  # type: ignore[assignment]
    await link.close()
    hbs = [m for m in out.sent if m.get("t") == "hb"]
    assert hbs and hbs[-1]["state"] == "stopping" and hbs[-1]["role"] == "standby", out.sent


@pytest.mark.parametrize("said_stopping", [True, False])
async def test_the_active_losing_a_standby_that_said_it_stops_warns_of_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, said_stopping: bool
) -> None:
    """The established active's peer link ends after the standby's last heartbeat said
    `stopping` (its restart in an upgrade): `hot_standby_lost` is info, and a stop of the active
    does not wait for that standby as for a blip. Without that word it is a warning, and a
    stop waits for it briefly, as before."""
    srv, _ = unstarted_active(tmp_path)
    try:
        ha = srv.ha
        ha.set_state(ESTABLISHED, "test: hot standby")
        ha.established_since = time.time()
        rec = RecordingLog()
        monkeypatch.setattr(ha_mod, "log", rec)
        srv.peer.up, srv.peer.said_stopping = False, said_stopping
        await ha.ev_peer_down("eof")
        assert ha.state == SERVING
        lost = rec.events("hot_standby_lost")
        assert [e["level"] for e in lost] == ["info" if said_stopping else "warning"], rec.entries
        assert (ha.standby_out_of_sight is None) == said_stopping
        assert ha.standby_may_return() == (not said_stopping)
    finally:
        srv.ha.close()
        srv.delivery.cancel()


async def test_a_standbys_stop_says_it_is_the_standbys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM to the standby: its stop's reason names the standby and that the active serves
    on, not the active's "normal termination (no established standby)"."""
    srv = _unstarted(tmp_path, "standby")
    try:
        rec = RecordingLog()
        monkeypatch.setattr(ha_mod, "log", rec)
        await srv.graceful_stop()
        assert srv.ha.state == "stopping" and srv.exit_code == 0
        why = srv.ha.stopping_why
        assert why == "stop: the standby stops; the active serves on without a standby", why
        assert _loud(rec) == [], rec.entries
    finally:
        srv.ha.close()
        srv.delivery.cancel()


async def test_a_pause_is_a_warning_and_its_resume_is_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`hsbctl pause` turns automatic failover off: a warning while it lasts. `hsbctl resume` puts
    things as they should be: info, with who asked and what it means."""
    from hsb.cp import core as cp_core_mod
    from tests.support.cpcore import cp_core

    rec = RecordingLog()
    monkeypatch.setattr(cp_core_mod, "log", rec)
    cp = cp_core(tmp_path, 2)
    cp.set_paused(True, "hsbctl")
    cp.set_paused(False, "hsbctl")
    said = [(e["event"], e["level"], e["by"]) for e in rec.entries if e["event"] in ("paused", "resumed")]
    assert said == [("paused", "warning", "hsbctl"), ("resumed", "info", "hsbctl")], rec.entries
    assert rec.events("resumed")[0]["msg"] == "automatic failover on again"
