"""The daemons' log lines (hsb.logs): each one reaches the log in one write, its newline
included. hsbcpd's master and worker write to one file, and with unbuffered output
(PYTHONUNBUFFERED, as under many supervisors and in CI) a line written in two pieces let the
other process's line in between: two JSON lines ran together and both events were lost (a test
waiting for one of them failed now and then)."""

from __future__ import annotations

import json

import pytest

from tests.support.procs import python_lines

pytestmark = pytest.mark.timeout(60)


def test_each_log_line_is_one_write_with_its_newline() -> None:
    out = python_lines(
        "import io, sys",
        "writes = []",
        "class Raw(io.RawIOBase):",
        "    def writable(self): return True",
        "    def write(self, b): writes.append(bytes(b)); return len(b)",
        "sys.stderr = io.TextIOWrapper(Raw(), write_through=True)",  # unbuffered, as PYTHONUNBUFFERED makes it
        "from hsb import logs",
        "logs.setup('info', process='test', force_json=True)",
        "import structlog",
        "structlog.get_logger('t').info('first_event', n=1)",
        "structlog.get_logger('t').warning('second_event', n=2)",
        "sys.__stdout__.write(repr(writes))",
    )
    writes = eval(out)  # noqa: S307 - our own repr of a list of bytes
    assert len(writes) == 2, writes
    assert all(w.endswith(b"\n") and w.count(b"\n") == 1 for w in writes), writes
    assert [json.loads(w)["event"] for w in writes] == ["first_event", "second_event"]
