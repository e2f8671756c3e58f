"""The active host's hand-over of messages to the service (hsb.host.delivery), in-process: a
message handed over again after the service was unavailable is marked redelivered (the failed
try may have had its effect), status is not left failing after a cancel, and a reply too large
for a frame becomes an error reply instead of taking the host link down again and again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from hsb.host.delivery import Delivery
from hsb.service.api import ServiceUnavailable

pytestmark = pytest.mark.timeout(30)


class Flaky:
    """Unavailable for the first `fail` hand-overs; records the redelivered flag of each."""

    def __init__(self, fail: int, reply: str = "ok") -> None:
        self.fail = fail
        self.reply = reply
        self.flags: list[bool] = []

    async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
        self.flags.append(redelivered)
        if len(self.flags) <= self.fail:
            raise ServiceUnavailable("database: whether it committed unknown")
        return self.reply


async def _until(cond: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_a_message_handed_over_again_after_the_service_failed_is_marked_redelivered() -> None:
    sent: list[dict[str, Any]] = []
    svc = Flaky(fail=1)
    d = Delivery(svc, lambda m: sent.append(m) or True, lambda: 1)  # type: ignore[arg-type, func-returns-value]
    d.deliver("T1", 5, "x", False)
    await _until(lambda: sent, "the reply")
    assert svc.flags == [False, True]
    assert sent[0]["id"] == 5 and sent[0]["data"] == "ok"
    assert d.counters["redelivered"] == 1 and d.health.state == "ok"


async def test_a_cancel_while_the_service_fails_leaves_status_not_failing() -> None:
    svc = Flaky(fail=10**6)
    d = Delivery(svc, lambda m: True, lambda: 1)  # type: ignore[arg-type]
    d.deliver("T1", 5, "x", False)
    await _until(lambda: d.health.state == "failing", "failing")
    d.cancel()  # demoted or fenced: nothing waits for the service here any more
    assert d.health.state == "ok" and not d.health.waiting


async def test_a_reply_too_large_for_a_frame_is_answered_as_an_error() -> None:
    sent: list[dict[str, Any]] = []
    d = Delivery(Flaky(fail=0, reply="y" * 100), lambda m: sent.append(m) or True, lambda: 1, max_reply=64)  # type: ignore[arg-type, func-returns-value]
    d.deliver("T1", 5, "x", False)
    d.deliver("T1", 6, "x", False)
    await _until(lambda: len(sent) == 2, "two replies")
    assert all(m["data"].startswith("error: reply too large to send (100 bytes > 64)") for m in sent), sent
    assert d.counters["errors"] == 2
    # text is measured in bytes on the wire: 40 characters of two bytes each are 80 > 64
    sent.clear()
    d2 = Delivery(Flaky(fail=0, reply="é" * 40), lambda m: sent.append(m) or True, lambda: 1, max_reply=64)  # type: ignore[arg-type, func-returns-value]
    d2.deliver("T1", 7, "x", False)
    await _until(lambda: sent, "the reply")
    assert sent[0]["data"].startswith("error: reply too large to send (80 bytes > 64)"), sent
