"""A replaced active gets no more lease from the CP: from the grant on, while the new epoch is
still being made durable, its heartbeats go unanswered (else a frozen active that woke up in
that window would renew its lease and serve beside the new one)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.cpcore import cp_core, fake_host

pytestmark = pytest.mark.timeout(30)


def _acks(h: Any) -> list[int]:
    h.flush()
    return [f["ack"] for f in h.transport.frames() if f.get("t") == "hb" and "ack" in f]


async def test_a_replaced_active_gets_no_heartbeat_answer_once_the_role_is_granted(tmp_path: Path) -> None:
    cp = cp_core(tmp_path, 2, cp="host_timeout = 0.5\nhost_lease = 0.35\n")
    a = fake_host(cp, "host-a", "active", record=True)
    b = fake_host(cp, "host-b", "standby", record=True)
    a.on_hb({"t": "hb", "n": 1})
    assert _acks(a) == [1]  # the active's lease is renewed while it is the active
    # the grant's epoch record is held back, as a slow journal would
    held: list[Any] = []
    real = cp.journal.append

    def append(payload: list[Any], done: Any = None, lazy: bool = False) -> int:
        if payload[0] == "e" and done is not None:
            held.append(done)
            return 1
        return int(real(payload, done, lazy))

    cp.journal.append = append
    cp.tick()
    a.last_rx = time.monotonic() - 1.0  # the active fell silent (frozen)
    cp._last_tick = time.monotonic()  # (this process itself did not stall, however slow the machine)
    cp.tick()
    assert cp.loss is not None
    cp.host_switchover(b, "test", False, "failover", peer_closed=True)
    assert cp.active is b and held, "granted, its record not yet durable"
    a.on_hb({"t": "hb", "n": 2})  # the frozen active wakes up inside that window
    b.on_hb({"t": "hb", "n": 3})
    assert _acks(a) == [1], "a replaced active must not get its lease renewed"
    assert _acks(b) == [3]
    held[0]()  # the epoch is durable: the grant is announced, the old active told
    a.flush()
    b.flush()
    assert any(f.get("t") == "fenced" for f in a.transport.frames())
    assert any(f.get("t") == "switch_granted" for f in b.transport.frames())
