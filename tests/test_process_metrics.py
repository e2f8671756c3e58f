"""The process_* metrics (hsb.ops.metrics.ProcessMetrics): the names Prometheus' own collector
has, and no listing of every open file on the scraping thread once there are many (19 ms at
19,000 sockets, on the daemon's event loop): a thread counts them and the scrape shows the last
count."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

from hsb.ops import metrics

pytestmark = pytest.mark.timeout(30)


def names(reg: CollectorRegistry) -> set[str]:
    return {line.split()[0] for line in generate_latest(reg).decode().splitlines() if line.startswith("process_")}


def test_the_same_names_as_prometheus_clients_own() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    ours.register(metrics.ProcessMetrics())
    ProcessCollector(registry=theirs)
    assert names(ours) == names(theirs)


def test_many_open_files_are_counted_off_the_scraping_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "FDS_INLINE", 0)  # "many" from the first file on
    monkeypatch.setattr(metrics, "FDS_EVERY_S", 0.0)
    listed_on: list[str] = []
    real = os.scandir

    def scandir(path: Any) -> Any:
        listed_on.append(threading.current_thread().name)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    p = metrics.ProcessMetrics()
    p._count()
    before = p._fds
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(50)]
    try:
        listed_on.clear()
        deadline = time.monotonic() + 10
        while True:
            value = next(m for m in p.collect() if m.name == "process_open_fds").samples[0].value
            if value >= before + 45:  # (the process's other files come and go meanwhile: a few of slack)
                break
            assert time.monotonic() < deadline, f"the count never caught up: {value}, {before} before"
            time.sleep(0.01)  # (a scrape every 10 ms until the thread's count shows)
        assert listed_on and set(listed_on) == {"hsb-fd-count"}, listed_on
    finally:
        for fd in fds:
            os.close(fd)
