"""The kernel limits a large CP runs into (hsb.ops.limits): open files, and the accept queue a
logon storm of every terminal at once must fit into."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from hsb.ops.limits import BACKLOG_MIN, SPARE, accept_queue_fits, listen_backlog, somaxconn, storm_timing, terminals_fit


def test_the_backlog_has_room_for_every_terminal() -> None:
    assert listen_backlog(10) == BACKLOG_MIN
    assert listen_backlog(19_000) == 19_000 + SPARE


def test_somaxconn_is_read_and_an_unreadable_one_is_unknown(tmp_path: Path) -> None:
    f = tmp_path / "somaxconn"
    f.write_text("4096\n")
    assert somaxconn(str(f)) == 4096
    assert somaxconn(str(tmp_path / "absent")) == -1
    f.write_text("many\n")
    assert somaxconn(str(f)) == -1
    assert somaxconn() > 0  # this machine's (Linux)


def test_a_small_accept_queue_is_named_with_the_fix() -> None:
    assert accept_queue_fits(1_000, 4096) is None
    assert accept_queue_fits(10_000, -1) is None  # unknown: nothing to say
    w = accept_queue_fits(10_000, 4096)
    assert w is not None and "net.core.somaxconn is 4096" in w and "10000 terminals" in w
    assert "sysctl -w net.core.somaxconn=16384" in w  # the next power of two above 10,000 + spare
    assert terminals_fit(10_000, 1024) is not None and terminals_fit(100, 1024) is None
    assert str(terminals_fit(10_000, 1024)).endswith("split the terminals over several CPs (docs/operations.md §20)")


def test_a_large_cp_with_the_default_host_timeout_is_told_to_raise_it() -> None:
    assert storm_timing(10_000, 0.5) is None  # up to 10,000: the defaults hold (BENCHMARKS.md, the logoff storm)
    assert storm_timing(19_000, 2.0) is None  # raised already
    w = storm_timing(19_000, 0.5)
    assert w is not None and "19000 terminals with cp.host_timeout 0.5 s" in w
    assert "heartbeat_timeout = 2 on both hosts and cp.host_timeout = 2" in w  # the fix, named
    assert w.endswith("(docs/operations.md §20, a connection storm)")  # where the reason and the measurements are


def test_check_config_names_the_host_timeout_of_a_large_cp(tmp_path: Path) -> None:
    from tests.support.procs import cp_config

    def check(**cp: Any) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "hsb.cp", "--config", str(cp_config(tmp_path, terminals=19_000, **cp)), "--check-config"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
        return str(r.stderr)

    assert "config warning: 19000 terminals with cp.host_timeout 0.5 s" in check()
    assert "host_timeout" not in check(host_timeout=2.0, host_lease=0.35)
