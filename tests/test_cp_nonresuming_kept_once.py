"""A reply kept for a terminal that does not resume is sent at its logon once: not again by a CP
that restarts, nor at a later logon while a message of its below it is still unanswered
(docs/protocol.md §1: a terminal that does not resume never gets a reply twice). Both were
duplicates the mixed model (tests/support/cpmodel_mixed.py) found."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.cpmodel_mixed import MixedModel

pytestmark = pytest.mark.timeout(60)


def read(m: MixedModel, c: Any, n: int) -> None:
    """Wait until the terminal has read `n` replies: a kept reply goes once its "d" record is
    durable, which the journal's thread may take longer for than a few turns of the loop."""
    m.run(lambda: m._until(lambda: len(c.log) >= n, f"{n} replies read"))


def test_a_kept_reply_sent_at_a_logon_is_not_sent_again_after_a_crash() -> None:
    m = MixedModel()
    try:
        m.start()
        m.send("T00003", 1)  # id 1000
        m.durable()  # (its record durable: delivered to the active, whatever the machine's speed)
        m.drop("T00003")
        assert sorted(m.owed) == [("T00003", 1000)]
        m.answer(0)  # made while it is away: kept ("r")
        m.durable()  # the "r" durable
        m.reconnect("T00003")  # its logon: 1000 sent, marked resent
        c = m.clients["T00003"]
        read(m, c, 1)
        assert [(i, r) for i, r, _ in c.log] == [(1000, True)]
        m.crash(flushed=False, remembers=False)  # before the record that settles it is durable
        m.settle()
        assert [(i, r) for i, r, _ in c.log] == [(1000, True)], f"sent twice: {c.log}"
    finally:
        m.teardown()


def test_a_kept_reply_above_an_unanswered_one_is_sent_once() -> None:
    m = MixedModel()
    try:
        m.start()
        m.send("T00003", 2)  # ids 1000, 1001
        m.durable()
        m.drop("T00003")
        assert sorted(m.owed) == [("T00003", 1000), ("T00003", 1001)]
        m.answer(1)  # 1001, made while it is away: kept; 1000 not answered yet
        m.durable()
        m.reconnect("T00003")  # its logon: 1001 sent, marked resent
        c = m.clients["T00003"]
        read(m, c, 1)
        assert [(i, r) for i, r, _ in c.log] == [(1001, True)]
        m.drop("T00003")
        m.reconnect("T00003")
        m.durable()  # (anything it would send again has gone by now)
        assert [(i, r) for i, r, _ in c.log] == [(1001, True)], f"sent twice: {c.log}"
    finally:
        m.teardown()
