"""The host's CP link (hsb.host.cplink) at its edges, in-process over a stand-in frame stream:
frames read after drop() are not taken, the link's loss is said once, nothing is sent on a
dropped link, and a frame the host cannot take is said to the CP before the link closes."""

from __future__ import annotations

import asyncio
from collections import deque
from types import SimpleNamespace
from typing import Any

import pytest

from hsb.host import cplink as cplink_mod
from hsb.host.cplink import CPLink
from hsb.host.lease import Lease
from hsb.wire.client import LinkClosed

pytestmark = pytest.mark.timeout(30)


class FakeStream:
    """A CP link's frame stream: hands out `frames`, then ends (eof); records what is sent."""

    def __init__(self, frames: list[dict[str, Any]]) -> None:
        self.frames = deque(frames)
        self.sent: list[Any] = []
        self.auth_ok = {"generation": 1}
        self.aborted = False
        self.writer = SimpleNamespace(transport=SimpleNamespace(abort=self._abort))

    def _abort(self) -> None:
        self.aborted = True

    async def authenticate(self, *_: Any, **__: Any) -> str:
        return "ok"

    async def recv(self, timeout: float | None = None) -> dict[str, Any]:
        await asyncio.sleep(0)
        if not self.frames:
            raise LinkClosed("eof")
        return self.frames.popleft()

    def send(self, msg: dict[str, Any]) -> None:
        self.sent.append(msg)

    def send_raw(self, data: bytes) -> None:
        self.sent.append(data)

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def not_hb(self) -> list[Any]:
        return [m for m in self.sent if not (isinstance(m, dict) and m.get("t") == "hb")]


def _cp_link(**kw: Any) -> CPLink:
    """host-a's CP link to 127.0.0.1:1, its callbacks doing nothing unless given in `kw`."""
    return CPLink(
        name="host-a", addr="127.0.0.1:1", secret=b"s" * 32, interval=0.1, timeout=5.0, max_frame=1 << 20, lease=Lease(),
        **{"on_up": lambda: None, "on_frame": lambda m: None, "on_down": lambda why: None, "on_answer": lambda n: None, **kw},
    )  # fmt: skip


async def _run_once(monkeypatch: pytest.MonkeyPatch, fs: FakeStream, on_frame: Any, downs: list[str], **kw: Any) -> CPLink:
    """One link over `fs`, then the link stops (the next connect fails and stops it)."""
    return await _links_over(monkeypatch, [fs], on_frame, on_down=downs.append, **kw)


async def test_frames_read_after_a_drop_are_not_taken_and_nothing_more_goes_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """drop() (the HA loop ends the link: a demotion, a stale registration): the frames already
    read from the lost link are not handed on (a delivery among them would reach the service after
    this host stopped serving, its reply lost), nothing more is sent on it, and its loss is said
    once (deliveries cancelled once, one cp_link_down)."""
    taken: list[int] = []
    after: list[bool] = []

    def on_frame(link: CPLink, m: dict[str, Any]) -> None:
        taken.append(m["id"])
        if m["id"] == 1:
            link.drop("demoted")
            after.append(link.up)
            after.append(link.send({"t": "reply", "terminal": "T1", "id": 1, "data": "late"}))

    downs: list[str] = []
    fs = FakeStream([{"t": "deliver", "terminal": "T1", "id": n, "data": "x"} for n in (1, 2, 3)])
    await _run_once(monkeypatch, fs, on_frame, downs)
    assert taken == [1], "a frame read after the drop was taken"
    assert after == [False, False] and fs.not_hb() == [] and fs.aborted
    assert downs == ["demoted"]


async def test_a_frame_the_host_cannot_take_is_said_to_the_cp(monkeypatch: pytest.MonkeyPatch) -> None:
    """A frame whose fields the host cannot take (another version, a bug): the CP is told why in
    an error frame (bad_fields) before the link closes, and the link's loss says it too."""

    def on_frame(link: CPLink, m: dict[str, Any]) -> None:
        raise KeyError("terminal")

    downs: list[str] = []
    fs = FakeStream([{"t": "deliver", "id": 1}])
    await _run_once(monkeypatch, fs, on_frame, downs)
    errors = [m for m in fs.not_hb() if isinstance(m, dict) and m.get("t") == "error"]
    assert len(errors) == 1 and errors[0]["code"] == "bad_fields" and "'deliver' frame" in errors[0]["msg"], fs.sent
    assert len(downs) == 1 and downs[0].startswith("protocol error from CP: bad_fields"), downs


async def test_a_heartbeats_answer_renews_the_lease_and_passes_on_the_cps_held_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CP's answer to a heartbeat goes to the lease (its number), with the held_bound it says
    after a reload of its (for the exactly-once records the service prunes); neither is
    a frame for the HA loop."""
    answers: list[int] = []
    bounds: list[Any] = []
    frames: list[dict[str, Any]] = []
    fs = FakeStream([{"t": "hb", "ack": 1}, {"t": "hb", "ack": 2, "held_bound": 5000}, {"t": "hb"}])
    await _run_once(monkeypatch, fs, lambda link, m: frames.append(m), [], on_answer=answers.append, on_bounds=bounds.append)
    assert answers == [1, 2] and bounds == [5000] and frames == []


async def test_a_cp_away_for_long_is_said_and_its_return_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the capacity walk-through: a host whose tries to reach the CP failed in silence
    (nothing listening, a connection closed before its challenge: a CP out of open files) logged
    the link's loss once and then nothing for as long as the CP was away. Past
    UNREACHABLE_AFTER_S it says so (cp_unreachable, and in its status's last error), at most once
    every UNREACHABLE_EVERY_S, and says when the CP is reached again."""
    from tests.support.logrec import RecordingLog

    rec = RecordingLog()
    monkeypatch.setattr(cplink_mod, "log", rec)
    monkeypatch.setattr(cplink_mod, "UNREACHABLE_AFTER_S", 0.3)
    monkeypatch.setattr(cplink_mod, "UNREACHABLE_EVERY_S", 3600.0)
    link: CPLink
    tries = 0
    fs = FakeStream([])
    problems: list[str | None] = []

    reached_at: list[int] = []

    async def connect(*a: Any, **k: Any) -> FakeStream:
        nonlocal tries
        tries += 1
        if tries == 1:
            raise ConnectionRefusedError(111, "Connection refused")
        if reached_at:
            link.stopped = True
            raise OSError("stop here")
        if not rec.events("cp_unreachable") or tries < 8:  # (past UNREACHABLE_AFTER_S: said; then a few more)
            raise LinkClosed("eof")  # (closed before its challenge)
        reached_at.append(tries)
        return fs  # reached: the link comes up, then ends (eof)

    monkeypatch.setattr(cplink_mod, "FrameStream", SimpleNamespace(connect=connect))
    monkeypatch.setattr(cplink_mod, "CP_RETRY_CAP", 0.06)
    link = _cp_link(on_problem=problems.append)
    await asyncio.wait_for(link._run(), 10)
    [said] = rec.events("cp_unreachable")  # (once: not again within UNREACHABLE_EVERY_S)
    assert said["level"] == "warning" and said["cp"] == "127.0.0.1:1" and said["tries"] >= 2, said
    assert said["reason"].startswith("the connection was closed before the CP's challenge"), said
    assert "systemctl status hsbcpd" in said["msg"], said
    [back] = rec.events("cp_reachable_again")
    assert back["tries"] == reached_at[0] - 1 and back["after_s"] >= 0.3, (back, reached_at)
    # (said as the status's last error; a registration clears it, a refusal says its own)
    assert len(problems) == 1 and problems[0] is not None and problems[0].startswith("the CP at 127.0.0.1:1 not reached for "), problems


async def test_a_cp_that_answered_is_not_away(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by review: the time away ran on across tries the CP answered (refused, for a reason
    of its own said by its own line), so a CP that refused for an hour and then stopped was said
    `not reached for 3605 s` at its first silent try; and under TLS a connection the CP closed at
    once (a reset, not an EOF) was said with no cause."""
    import ssl

    from hsb.wire.client import LinkClosed as Closed
    from tests.support.logrec import RecordingLog

    rec = RecordingLog()
    monkeypatch.setattr(cplink_mod, "log", rec)
    away = cplink_mod.Unreachable("127.0.0.1:1", lambda _: None)
    clock = [1000.0]
    monkeypatch.setattr("hsb.host.cplink.time.monotonic", lambda: clock[0])
    away.failed("connection refused: nothing listens there")
    clock[0] += 3600
    away.answered()  # (an hour of auth_failed, say: the CP answered each)
    clock[0] += 1
    away.failed("connection refused: nothing listens there")
    assert not rec.events("cp_unreachable") and away.tries == 1 and away.since == clock[0]
    clock[0] += cplink_mod.UNREACHABLE_AFTER_S
    away.failed("connection refused: nothing listens there")
    [said] = rec.events("cp_unreachable")
    assert said["for_s"] == cplink_mod.UNREACHABLE_AFTER_S and said["tries"] == 2, said
    for exc in (ConnectionResetError(104, "Connection reset by peer"), ssl.SSLEOFError(), Closed("eof")):
        assert cplink_mod._silent_failure(exc).startswith("the connection was closed before the CP's challenge"), exc


async def test_tries_the_cp_refused_end_the_time_away(monkeypatch: pytest.MonkeyPatch) -> None:
    """The link's own loop: a CP that refuses (an error frame: auth_failed) answered, so the
    silent tries after it count from then, not from the first one before it (review)."""
    from hsb.ops import refusals
    from tests.support.logrec import RecordingLog

    rec = RecordingLog()
    monkeypatch.setattr(cplink_mod, "log", rec)
    monkeypatch.setattr(refusals, "log", rec)
    monkeypatch.setattr(cplink_mod, "UNREACHABLE_AFTER_S", 0.3)
    monkeypatch.setattr(cplink_mod, "REFUSED_RETRY_S", 0.15)
    monkeypatch.setattr(cplink_mod, "CP_RETRY_CAP", 0.06)
    link: CPLink
    tries = 0

    async def connect(*a: Any, **k: Any) -> FakeStream:
        nonlocal tries
        tries += 1
        if tries <= 2 or 6 <= tries <= 7:
            raise ConnectionRefusedError(111, "Connection refused")
        if tries <= 5:  # (0.45 s of refusals: past UNREACHABLE_AFTER_S since the first try)
            raise LinkClosed("refused", error={"code": "auth_failed", "msg": "the secret differs"})
        link.stopped = True
        raise OSError("stop here")

    monkeypatch.setattr(cplink_mod, "FrameStream", SimpleNamespace(connect=connect))
    link = _cp_link()
    await asyncio.wait_for(link._run(), 10)
    assert tries == 8 and rec.events("cp_link_refused"), (tries, rec.entries)
    assert not rec.events("cp_unreachable"), rec.events("cp_unreachable")


class _Silent(FakeStream):
    """Connected; no answer to the authentication in time (`challenged`: after the challenge)."""

    challenged = False

    async def authenticate(self, *_: Any, **__: Any) -> str:
        raise TimeoutError


async def _links_over(monkeypatch: pytest.MonkeyPatch, streams: list[FakeStream], on_frame: Any = None, **kw: Any) -> CPLink:
    """The CP link's loop over these connections in turn, then stopped (the next connect fails):
    `on_frame(link, frame)` for each frame taken."""
    link: CPLink
    left = iter(streams)

    async def connect(*a: Any, **k: Any) -> FakeStream:
        for fs in left:
            return fs
        link.stopped = True
        raise OSError("no further link here")

    monkeypatch.setattr(cplink_mod, "FrameStream", SimpleNamespace(connect=connect))
    monkeypatch.setattr(cplink_mod, "CP_RETRY_CAP", 0.01)
    link = _cp_link(**({} if on_frame is None else {"on_frame": lambda m: on_frame(link, m)}), **kw)
    await asyncio.wait_for(link._run(), 10)
    return link


@pytest.mark.parametrize("before", [False, True])
async def test_no_challenge_where_the_cp_answered_before_is_no_wrong_port(monkeypatch: pytest.MonkeyPatch, before: bool) -> None:
    """Found by the slow-links walk-through: a link made again through a stalling network got no
    challenge within 2 s, and hsbd said `cp_link_wrong_port`, "most likely host.cp points at a
    port that is no hsb link", of the address its link had worked at for minutes. Where a link
    was authenticated before, it says `cp_link_no_challenge`: the daemon or the network there."""
    from hsb.ops import refusals as refusals_mod
    from tests.support.logrec import RecordingLog

    rec = RecordingLog()
    monkeypatch.setattr(refusals_mod, "log", rec)
    # (authenticated first: the link comes up, then ends; then connected, no challenge)
    await _links_over(monkeypatch, [FakeStream([]), _Silent([])] if before else [_Silent([]), _Silent([])])
    said = rec.events("cp_link_no_challenge" if before else "cp_link_wrong_port")
    assert len(said) == 1 and said[0]["reason"].startswith("no challenge within 2 s"), rec.entries
    assert not rec.events("cp_link_wrong_port" if before else "cp_link_no_challenge"), rec.entries
    assert ("answered before" in said[0]["msg"]) == before and ("no hsb link" in said[0]["msg"]) != before, said


async def test_no_answer_after_the_challenge_where_the_cp_answered_before_is_not_said_as_no_challenge(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review (session 67): a timeout after the challenge did come is not `cp_link_no_challenge`
    (that line names the challenge that did not come); it keeps its own wording."""
    from hsb.ops import refusals as refusals_mod
    from tests.support.logrec import RecordingLog

    rec = RecordingLog()
    monkeypatch.setattr(refusals_mod, "log", rec)
    challenged = _Silent([])
    challenged.challenged = True
    await _links_over(monkeypatch, [FakeStream([]), challenged])
    assert not rec.events("cp_link_no_challenge"), rec.entries
    [said] = rec.events("cp_link_wrong_port")
    assert "the challenge came" in said["reason"], said


def test_a_heartbeat_timeout_below_the_cps_lease_is_said_once_per_lease(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the slow-links walk-through: with the CP's host_timeout and host_lease raised to
    ride out stalls, the hosts' heartbeat_timeout of 0.5 s still dropped the active's link on a
    1 s stall, and the CP failed over. A registration that tells a lease above it says so."""
    from hsb.host import ha_cp
    from hsb.host.ha_cp import CPSide
    from tests.support.logrec import RecordingLog

    rec = RecordingLog()
    monkeypatch.setattr(ha_cp, "log", rec)
    ha = SimpleNamespace(
        srv=SimpleNamespace(cfg=SimpleNamespace(host=SimpleNamespace(heartbeat_timeout=0.5))), lease=Lease(), told_timeout_below=None
    )
    for lease in (0.35, 3.5, 3.5, 0.35, 3.5, 0.4):
        ha.lease.duration = lease
        CPSide._timeout_below_lease(ha)  # type: ignore[arg-type]
    said = rec.events("heartbeat_timeout_below_lease")
    assert [(e["heartbeat_timeout"], e["lease"]) for e in said] == [(0.5, 3.5)], said  # (once for that lease; 0.35 and 0.4 are fine)
    assert said[0]["level"] == "warning" and "at least 3.5 s" in said[0]["msg"], said
    ha.srv.cfg.host.heartbeat_timeout = 0.45  # (a reload: said again for the new pair)
    ha.lease.duration = 3.5
    CPSide._timeout_below_lease(ha)  # type: ignore[arg-type]
    assert len(rec.events("heartbeat_timeout_below_lease")) == 2
