"""The daemons' log is bounded against clients that provoke a warning per connection (hsb.logs.
Throttle): each event of PER_CONNECTION (protocol_error, idle_timeout, auth_failed,
terminal_refused, tls_refused) is written in a burst of BURST lines, then at most RATE a second,
and the next line written says how many were left out; every other event is untouched.

Before it, one client looping on connect, garbage, close had hsbcpd write a protocol_error line
per connection: 2 MB of log a second on loopback.
"""

from __future__ import annotations

import json

import pytest
import structlog

from hsb.logs import BURST, PER_CONNECTION, RATE, Throttle
from tests.support.procs import python_lines

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def passes(th: Throttle, name: str) -> dict[str, object] | None:
    try:
        return th(None, "warning", {"event": name})
    except structlog.DropEvent:
        return None


def test_a_burst_then_the_rate_and_the_count_left_out() -> None:
    clock = Clock()
    th = Throttle(burst=5, rate=2.0, clock=clock)
    assert all(passes(th, "protocol_error") == {"event": "protocol_error"} for _ in range(5))
    assert [passes(th, "protocol_error") for _ in range(3)] == [None] * 3
    assert passes(th, "journal_failing") == {"event": "journal_failing"}  # not a per-connection event: never held
    assert passes(th, "idle_timeout") == {"event": "idle_timeout"}  # a bucket of its own
    clock.t += 0.5  # one line's worth at 2 a second
    assert passes(th, "protocol_error") == {"event": "protocol_error", "left_out": 3}
    assert passes(th, "protocol_error") is None
    clock.t += 100.0  # quiet for long: a whole burst again, no more
    assert passes(th, "protocol_error") == {"event": "protocol_error", "left_out": 1}
    assert sum(passes(th, "protocol_error") is not None for _ in range(10)) == 4


def test_the_per_connection_events_are_the_ones_a_client_provokes_unvouched() -> None:
    assert {"protocol_error", "idle_timeout", "auth_failed", "terminal_refused", "tls_refused"} == PER_CONNECTION
    assert BURST >= 50 and RATE >= 5  # a scan or a misconfigured client still shows in full


def test_a_daemons_log_setup_bounds_a_flood_of_protocol_errors() -> None:
    out = python_lines(
        "import io, sys",
        "buf = io.StringIO()",
        "sys.stderr = buf",
        "from hsb import logs",
        "logs.setup('info', process='test', force_json=True)",
        "import structlog",
        "log = structlog.get_logger('t')",
        "for i in range(5000): log.warning('protocol_error', link='terminal', peer=f'p{i}', code='bad_msgpack', msg='x')",
        "log.info('other_event')",
        "sys.__stdout__.write(buf.getvalue())",
    )
    lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    errors = [x for x in lines if x["event"] == "protocol_error"]
    assert BURST <= len(errors) <= BURST + 20, len(errors)  # (RATE a second more, for as long as the loop took)
    assert errors[0]["peer"] == "p0" and "left_out" not in errors[0]
    assert lines[-1]["event"] == "other_event"
