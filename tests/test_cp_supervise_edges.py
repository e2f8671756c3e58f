"""Edges of `hsbcpd --supervise` (hsb.cp.supervise) a mutation audit found untested: the shared
slots' bounds and order, the waits' first values, the worker's signal dispositions and its end
of the pipe, a stop by SIGINT, a fork that fails, a worker that raises or calls sys.exit(), the
crash loop's count against `restarts_max` and `window`, the watchdog pings around a wait, a stop
during a wait, and reloads owed while no worker runs. The master's own loop runs in child
scripts of their own (signal dispositions, fork), with a recording `log` and watchdog."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from hsb.cp import supervise
from tests.support.supervised import outs

pytestmark = pytest.mark.timeout(120)

# A child script's first lines: the master's log and watchdog replaced by recorders, each event an
# OUT line (`event {fields}`, the fields that do not change from run to run); HOOKS[event]() runs
# after the event is recorded, in the master.
RECORDING = [
    "import json, os, signal, sys, time",
    "from hsb.cp import supervise",
    "KEEP = ('exit', 'failures', 'delay_s', 'deaths', 'signal', 'restarts')",
    "HOOKS = {}",
    "class Log:",
    "    def _ev(self, event, **kw):",
    "        keep = {k: v for k, v in kw.items() if k in KEEP}",
    "        os.write(1, f'OUT {event} {json.dumps(keep, sort_keys=True)}\\n'.encode())",
    "        HOOKS.get(event, lambda: None)()",
    "    info = warning = error = _ev",
    "supervise.log = Log()",
    "class Watchdog:",
    "    def tick(self, now, force=False):",
    "        os.write(1, f'OUT tick {force}\\n'.encode())",
    "        HOOKS.get('tick', lambda: None)() if not force else None",
    "supervise.Watchdog = Watchdog",
]


def events(out: str, *names: str) -> list[str]:
    """The recorded OUT lines whose first word is one of `names`."""
    return [o for o in outs(out) if o.split(" ", 1)[0] in names]


def test_a_slot_takes_exactly_what_fits_and_a_store_writes_the_older_slot() -> None:
    """Data that fills a slot to its last byte is kept (and found again), a byte more is refused
    and leaves the data stored before; each store writes the slot of the older data, so the one
    before stays whole beside it."""
    a = supervise.Applied(64)
    room = 64 - a.HEAD.size
    assert a.load_data() is None
    assert a.store_data(b"a" * room)
    assert a.load_data() == b"a" * room
    assert not a.store_data(b"b" * (room + 1))
    assert a.load_data() == b"a" * room
    for data in (b"B", b"C", b"D"):
        assert a.store_data(data)
        assert a.load_data() == data
    assert {a._slot(0)[1], a._slot(1)[1]} == {b"C", b"D"}


def test_a_config_too_large_for_its_slot_is_logged_one_that_fits_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """`applied_config_not_kept` says a worker started again would not find the config applied:
    logged when it does not fit, never when it was kept."""

    class Cfg:
        def __init__(self, n: int) -> None:
            self.n = n

        def model_dump(self, mode: str) -> dict[str, Any]:
            return {"x": "y" * self.n}

    monkeypatch.setattr(supervise.AppliedConfig, "SLOT", 256)
    applied = supervise.AppliedConfig()
    with capture_logs() as logs:
        applied.store(Cfg(10))
    assert [e["event"] for e in logs] == []
    with capture_logs() as logs:
        applied.store(Cfg(1000))
    assert [e["event"] for e in logs] == ["applied_config_not_kept"]
    assert applied.load_data() is not None  # the one that fit is still there


def test_tls_files_are_kept_for_the_next_worker_only_under_a_master(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a master (a plain hsbcpd) `keep_tls` keeps nothing and does not fail; under one,
    the next worker finds the bytes the last one loaded, and files too large to keep are logged."""
    monkeypatch.setattr(supervise, "APPLIED_TLS", None)
    with capture_logs() as logs:
        supervise.keep_tls({"cert": b"C"})
    assert logs == []
    assert supervise.applied_tls() is None
    monkeypatch.setattr(supervise, "APPLIED_TLS", supervise.Applied(supervise.TLS_SLOT))
    supervise.keep_tls({"cert": b"C", "key": b"K"})
    assert supervise.applied_tls() == {"cert": b"C", "key": b"K"}
    with capture_logs() as logs:
        supervise.keep_tls({"cert": b"x" * supervise.TLS_SLOT})
    assert [e["event"] for e in logs] == ["applied_tls_not_kept"]
    assert supervise.applied_tls() == {"cert": b"C", "key": b"K"}
