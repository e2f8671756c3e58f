"""The host's CP link (hsb.host.cplink) in-process over stand-in frame streams, each test naming
a behaviour that a mutation audit of the module found no test for (the lease and generation
decisions have theirs in test_lease_mutants.py and test_cpgen_mutants.py): how long the link
waits before it tries again after a refusal, a wrong port, a failure or a bug, what a failed send
says, the problems said and cleared, the heartbeats' pace, and a stop or a failing on_down."""

from __future__ import annotations

import asyncio
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from hsb.host import cplink as cplink_mod
from hsb.host.cplink import CPLink
from hsb.host.lease import Lease
from hsb.wire.client import LinkClosed
from hsb.wire.framing import ProtocolError
from tests.test_host_cp_link_edges import FakeStream

pytestmark = pytest.mark.timeout(30)


class Refusing(FakeStream):
    """A connection made whose authentication fails with `exc`."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__([])
        self.exc = exc
        self.challenged = True

    async def authenticate(self, *_: Any, **__: Any) -> str:
        raise self.exc


class Waits:
    """asyncio for hsb.host.cplink with its sleeps recorded (who asked, how long) and not waited."""

    def __init__(self) -> None:
        self.slept: list[tuple[str, float]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    def sleep(self, delay: float) -> Any:
        self.slept.append((sys._getframe(1).f_code.co_name, delay))
        return asyncio.sleep(0)

    def of(self, who: str) -> list[float]:
        return [d for w, d in self.slept if w == who]


def _link(monkeypatch: pytest.MonkeyPatch, script: list[Any], **kw: Any) -> tuple[CPLink, Waits, list[str]]:
    """A CPLink whose connects follow `script` (a stream, or an exception the connect raises);
    once it is done the next connect stops the link. Returns the link, its waits, its downs."""
    link: CPLink
    steps = iter(script)
    waits = Waits()

    async def connect(*_: Any, **__: Any) -> FakeStream:
        for s in steps:
            if isinstance(s, BaseException):
                raise s
            return s  # type: ignore[no-any-return]
        link.stopped = True
        raise OSError("no more links here")

    monkeypatch.setattr(cplink_mod, "FrameStream", SimpleNamespace(connect=connect))
    monkeypatch.setattr(cplink_mod, "asyncio", waits)
    downs: list[str] = []
    args: dict[str, Any] = dict(
        name="host-a", addr="127.0.0.1:1", secret=b"s" * 32, interval=0.1, timeout=5.0, max_frame=1 << 20,
        on_up=lambda: None, on_frame=lambda m: None, on_down=downs.append, lease=Lease(), on_answer=lambda n: None,
    )  # fmt: skip
    link = CPLink(**{**args, **kw})
    return link, waits, downs


async def test_a_refused_authentication_or_a_wrong_port_is_tried_again_only_every_5_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CP refusing the authentication (a wrong secret) or a port that answers as no hsb link
    (bytes that are no frame) is tried again after 5 s, said each time as the link's problem; a
    CP not reachable is tried again soon (the short backoff). A link made then clears the problem."""
    problems: list[str | None] = []
    script = [
        Refusing(LinkClosed("refused", {"code": "auth_failed", "msg": "bad secret"})),
        Refusing(ProtocolError("bad_frame", "not a frame")),
        OSError("connection refused"),
        FakeStream([]),
    ]
    link, waits, _ = _link(monkeypatch, script, on_problem=problems.append)
    await asyncio.wait_for(link._run(), 10)
    tries = waits.of("_run_inner")
    assert tries[:2] == [5.0, 5.0] and tries[2] < 1.0, tries
    assert problems[0] is not None and problems[0].startswith("auth_failed: bad secret"), problems
    assert problems[1] is not None and "does not speak hsb" in problems[1], problems
    assert problems[-2:] == [None, None], problems  # (both said, both cleared once a link was made)


async def test_the_short_backoff_starts_again_after_a_link_was_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CP unreachable a few times in a row is tried at longer and longer waits; after a link
    was made the next unreachable CP is tried again at the first wait (0.05 s, jittered), not at
    the longest."""
    script = [OSError("down"), OSError("down"), OSError("down"), OSError("down"), FakeStream([]), OSError("down")]
    link, waits, _ = _link(monkeypatch, script)
    await asyncio.wait_for(link._run(), 10)
    tries = waits.of("_run_inner")
    assert len(tries) == 6 and tries[3] >= 0.125, tries  # (the fourth: 0.25 s, jittered by half)
    assert tries[4] <= 0.075, tries


async def test_a_link_ended_by_a_bug_of_ours_is_made_again_only_after_a_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception of the host's own while it takes a frame (here: the lease's answer callback
    fails) ends the link, said as its loss, and the next link is made only after the bad links'
    backoff (a bug that recurs at each link is no tight loop)."""

    def on_answer(n: int) -> None:
        raise ValueError("a bug")

    link, waits, downs = _link(monkeypatch, [FakeStream([{"t": "hb", "ack": 1}])], on_answer=on_answer)
    await asyncio.wait_for(link._run(), 10)
    assert len(downs) == 1 and downs[0].startswith("ValueError: a bug"), downs
    tries = waits.of("_run_inner")
    assert tries and tries[0] >= cplink_mod.BAD_LINK_FIRST / 2, tries


async def test_a_heartbeats_answer_without_a_number_renews_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a heartbeat answer that names the heartbeat (an integer `ack`) goes to the lease."""
    answers: list[Any] = []
    fs = FakeStream([{"t": "hb", "ack": "1"}, {"t": "hb", "ack": None}, {"t": "hb", "ack": 3}])
    link, _, _ = _link(monkeypatch, [fs], on_answer=answers.append)
    await asyncio.wait_for(link._run(), 10)
    assert answers == [3]


async def test_each_link_is_numbered_before_the_ha_loop_hears_it_is_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """on_up sees the number of the link it is for (the HA loop drops a cp_up of an earlier
    link by it): 1, then 2."""
    seen: list[int] = []
    link: CPLink
    link, _, _ = _link(monkeypatch, [FakeStream([]), FakeStream([])], on_up=lambda: seen.append(link.connects))
    await asyncio.wait_for(link._run(), 10)
    assert seen == [1, 2]


async def test_a_send_that_fails_says_so_and_so_does_one_with_no_link(monkeypatch: pytest.MonkeyPatch) -> None:
    """send() on a link whose transport fails returns False (the caller keeps what it sent), as
    with no link at all."""
    link, _, _ = _link(monkeypatch, [])
    assert link.send({"t": "reply"}) is False

    class Broken(FakeStream):
        def send_raw(self, data: bytes) -> None:
            raise ConnectionResetError("gone")

    link.fs = Broken([])  # type: ignore[assignment]
    assert link.send({"t": "reply", "terminal": "T1", "id": 1, "data": "x"}) is False
    link.fs = FakeStream([])  # type: ignore[assignment]
    assert link.send({"t": "reply", "terminal": "T1", "id": 1, "data": "x"}) is True


async def test_a_bug_that_escapes_the_link_leaves_it_down_and_it_is_made_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception out of a link's run (a bug) is logged, the link counts as down (nothing is
    sent on its stream), and the link is made again."""
    link, _, _ = _link(monkeypatch, [])
    runs: list[bool] = []

    async def run_inner() -> None:
        runs.append(link.up)
        if len(runs) == 1:
            link.fs = FakeStream([])  # type: ignore[assignment]
            raise KeyError("a bug")
        link.stopped = True

    link._run_inner = run_inner  # type: ignore[method-assign]
    await asyncio.wait_for(link._run(), 10)
    assert runs == [False, False] and not link.up, runs


async def test_the_heartbeats_come_three_times_a_lease_and_a_failed_one_closes_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a lease known, the heartbeats come at a third of it when that is below the interval;
    a heartbeat that cannot be sent closes the stream (the read loop then sees the link's end)."""
    link, waits, _ = _link(monkeypatch, [], interval=10.0)
    link.lease.duration = 0.9
    closed: list[bool] = []

    class Failing(FakeStream):
        def __init__(self) -> None:
            super().__init__([])
            self.n = 0

        def send(self, msg: dict[str, Any]) -> None:
            self.n += 1
            if self.n == 3:
                raise ConnectionResetError("gone")

        def close(self) -> None:
            closed.append(True)

    await asyncio.wait_for(link._beat(Failing()), 10)  # type: ignore[arg-type]
    assert waits.of("_beat") == [pytest.approx(0.3), pytest.approx(0.3)] and closed == [True]


async def test_the_link_after_a_dropped_one_takes_its_frames(monkeypatch: pytest.MonkeyPatch) -> None:
    """drop() ends one link: the frames read from it after the drop are not taken, but the next
    link's frames are (the drop belongs to the link it ended)."""
    taken: list[int] = []
    link: CPLink

    def on_frame(m: dict[str, Any]) -> None:
        taken.append(m["id"])
        if m["id"] == 1:
            link.drop("demoted")

    frames = [[{"t": "deliver", "terminal": "T1", "id": n, "data": "x"} for n in ns] for ns in ((1, 2), (3, 4))]
    link, _, downs = _link(monkeypatch, [FakeStream(frames[0]), FakeStream(frames[1])], on_frame=on_frame)
    await asyncio.wait_for(link._run(), 10)
    assert taken == [1, 3, 4] and downs == ["demoted", "eof"], (taken, downs)


async def test_a_silent_cp_is_judged_by_the_heartbeat_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each read from the CP waits at most heartbeat_timeout: a CP silent that long is the
    link's loss (this host stops serving on its own)."""
    waited: list[float | None] = []

    class Silent(FakeStream):
        async def recv(self, timeout: float | None = None) -> dict[str, Any]:
            waited.append(timeout)
            raise TimeoutError

    link, _, downs = _link(monkeypatch, [Silent([])], timeout=1.5)
    await asyncio.wait_for(link._run(), 10)
    assert waited == [1.5] and downs == ["CP silent for 1.5s"]


async def test_a_failing_on_down_is_said_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    """on_down raising (a bug there) is logged as cp_link_down_failed, and the link is made again
    as after any loss (not as a crash of the link's loop)."""
    from tests.support.logrec import RecordingLog

    logs = RecordingLog()
    monkeypatch.setattr(cplink_mod, "log", logs)

    def on_down(why: str) -> None:
        raise RuntimeError("bug in on_down")

    ups: list[int] = []
    link, _, _ = _link(monkeypatch, [FakeStream([]), FakeStream([])], on_down=on_down, on_up=lambda: ups.append(1))
    await asyncio.wait_for(link._run(), 10)
    assert len(ups) == 2 and link.connects == 2
    assert len(logs.events("cp_link_down_failed")) == 2 and logs.events("cp_link_error") == [], logs.entries


async def test_a_host_that_exits_during_a_backoff_makes_no_link_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process ends (fenced, say) while the link waits to try again: no link is made after
    the wait (it would register a fenced host again)."""
    ending: list[bool] = []
    ups: list[int] = []
    link, waits, _ = _link(monkeypatch, [OSError("down"), FakeStream([])], exiting=lambda: bool(ending), on_up=lambda: ups.append(1))
    real_sleep = waits.sleep

    def sleep(delay: float) -> Any:
        ending.append(True)  # the process starts to end meanwhile
        return real_sleep(delay)

    waits.sleep = sleep  # type: ignore[method-assign]
    await asyncio.wait_for(link._run(), 10)
    assert ups == []


class Held(FakeStream):
    """A link up until it is closed (aclose) or aborted; aclose returns once the read ended."""

    def __init__(self) -> None:
        super().__init__([])
        self.closing = False
        self.reading = False

    async def recv(self, timeout: float | None = None) -> dict[str, Any]:
        self.reading = True
        try:
            while not self.aborted and not self.closing:
                await asyncio.sleep(0.005)
            raise LinkClosed("eof")
        finally:
            self.reading = False

    async def aclose(self) -> None:
        self.closing = True
        while self.reading:
            await asyncio.sleep(0.005)


async def _up(link: CPLink) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while not link.up:
        assert asyncio.get_running_loop().time() < deadline, "the link never came up"
        await asyncio.sleep(0.005)


async def test_a_stopped_link_says_no_loss_and_is_not_made_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """close() (the host stops) while a link is up: its end is not said as a loss (no on_down:
    the stop says its own), its heartbeat task ends, and no link is made after it."""
    link, _, downs = _link(monkeypatch, [Held(), FakeStream([])])
    monkeypatch.setattr(cplink_mod, "asyncio", asyncio)  # (real waits: the heartbeats run)
    link.start()
    await _up(link)
    beats = [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "CPLink._beat"]  # type: ignore[union-attr]
    assert len(beats) == 1
    await link.close()
    assert link.task is not None
    await asyncio.gather(link.task, return_exceptions=True)
    await asyncio.wait_for(asyncio.gather(*beats, return_exceptions=True), 10)  # (its heartbeats end with it)
    assert downs == [] and link.connects == 1


async def test_a_cancelled_link_says_no_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """The link's task cancelled while a link is up (the process ends): no on_down."""
    link, _, downs = _link(monkeypatch, [Held()])
    monkeypatch.setattr(cplink_mod, "asyncio", asyncio)  # (real waits)
    link.start()
    await _up(link)
    assert link.task is not None
    link.task.cancel()
    await asyncio.gather(link.task, return_exceptions=True)
    assert downs == [] and link.task.cancelled()


async def test_close_ends_the_link_while_it_waits_to_try_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """close() while the link waits after a refusal (5 s, or longer): the link's task ends at
    once, it does not sleep on."""
    link, waits, _ = _link(monkeypatch, [Refusing(LinkClosed("refused", {"code": "auth_failed", "msg": "bad"}))])
    waiting = asyncio.Event()

    def sleep(delay: float) -> Any:
        waiting.set()
        return asyncio.get_running_loop().create_future()  # (never done: only a cancel ends it)

    waits.sleep = sleep  # type: ignore[method-assign]
    link.start()
    await asyncio.wait_for(waiting.wait(), 10)
    await link.close()
    assert link.task is not None
    await asyncio.wait_for(asyncio.gather(link.task, return_exceptions=True), 10)
    assert link.task.cancelled()
