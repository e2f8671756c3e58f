"""Edges of hsbctl's file and operations commands (hsb.ctl.file_cmd, hsb.ctl.ops_cmds), all
in-process, one test for each thing a mutation audit found no test for. file: a usage error
exits 2 (a file problem 1), 0 terminals is a number of terminals, a bad record size with
--terminals is said with its fix, an error of several lines is one line, an OS error by its
text; the sizes said in binary units; inspect's human form: its header line's parts, --limit 0
all, the last records of the ring, more than six entries of a record cut, attrs sorted.
(Their other cases: tests/test_ctl_file.py, tests/test_ctl_ops.py.)"""

from __future__ import annotations

import errno
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from hsb.ctl import file_cmd, ops_cmds
from hsb.takeover import SessionEntry, TakeoverWriter, startup_id
from hsb.takeover.errors import TakeoverError
from hsb.takeover.inspect import inspect_file
from tests.support.cli import PAIR_A, PAIR_B, invoke, one_line_error, stop_faked

pytestmark = pytest.mark.timeout(30)


def file(*args: str) -> tuple[int, str, str]:
    """`hsbctl file …`: (exit code, stdout, stderr)."""
    return invoke("file", *args)


def _ring_of(path: str, groups: list[int]) -> None:
    """A takeover file for 20 terminals whose ring holds one record per group, of that many entries."""
    code, _, err = file("create", path, "--records", "40", "--terminals", "20")
    assert code == 0, err
    with TakeoverWriter(path, terminals=20, host_name="host-a") as w:
        w.batch_write(startup_id(datetime(2025, 1, 2, 3, 4, 5)), [SessionEntry("T00", {"z": 1, "a": 2}, True)])
        for g, n in enumerate(groups):
            w.append_group([SessionEntry(f"T{g:02d}{i}", {}, True) for i in range(n)])


# -- hsbctl file ---------------------------------------------------------------------------------


def test_a_usage_error_exits_2_and_a_file_problem_1(tmp_path: Path) -> None:
    new = str(tmp_path / "tk")
    one_line_error(*file("create", new, "--records", "ten"), 2, "--records must be a whole number of records, not 'ten'")
    one_line_error(*file("create", new, "--records", "-1"), 2, "--records must not be negative (-1)")
    one_line_error(*file("create", new, "--records", "3"), 1, "needs 4")


def test_0_terminals_is_a_number_of_terminals_not_a_negative_one(tmp_path: Path) -> None:
    path = str(tmp_path / "tk")
    assert file("create", path, "--records", "8", "--record-size", "512", "--terminals", "0")[0] == 0
    code, out, err = file("inspect", path, "--terminals", "0")
    assert code == 0 and err == "" and out.startswith(f"takeover file {path}"), (code, err)


def test_a_bad_record_size_with_terminals_is_said_with_its_fix(tmp_path: Path) -> None:
    new = tmp_path / "tk"
    one_line_error(
        *file("create", str(new), "--records", "100", "--record-size", "1000", "--terminals", "10"),
        1,
        "multiple of 512",
        "choose e.g. --record-size 4096",
    )
    assert not new.exists()


def test_an_error_of_several_lines_is_said_in_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def torn(path: str) -> Any:
        raise TakeoverError("the header is torn:\n    mend it with the active")

    monkeypatch.setattr(file_cmd, "inspect_file", torn)
    one_line_error(*file("inspect", str(tmp_path / "tk")), 1, "error: the header is torn: mend it with the active")


def test_an_os_error_is_said_by_its_text_not_its_errno(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(path: str, *a: Any, **kw: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", path)

    monkeypatch.setattr(file_cmd, "create_file", refused)
    line = one_line_error(*file("create", str(tmp_path / "tk"), "--records", "40"), 1, "Permission denied; check the directory")
    assert "Errno" not in line and line.startswith(f"error: cannot create {tmp_path / 'tk'}: Permission denied"), line


def test_sizes_are_said_in_binary_units(tmp_path: Path) -> None:
    path = str(tmp_path / "tk")
    code, out, _ = file("create", path, "--records", "64", "--record-size", "512")
    assert code == 0 and out.startswith(f"created {path}: 64 records of 512 bytes (32.0 KiB),"), out
    assert [file_cmd._human_bytes(n) for n in (1023, 1024, 1536 * 1024, 5 * 1024**4)] == ["1023 bytes", "1.0 KiB", "1.5 MiB", "5120.0 GiB"]


def test_the_header_line_says_the_attempt_the_writer_or_never_written(tmp_path: Path) -> None:
    path = str(tmp_path / "tk")
    _ring_of(path, [1])
    r = inspect_file(path)
    header = next(x for x in file_cmd._human(r, 20).splitlines() if x.startswith("  header"))
    assert header.startswith(f"  header       generation 1 (attempt {r['attempt']}), written ") and header.endswith(" by host-a"), header
    r.update(attempt=None, written_at=None, writer_host="")
    header = next(x for x in file_cmd._human(r, 20).splitlines() if x.startswith("  header"))
    assert header == "  header       generation 1, written never", header


def test_inspect_lists_all_with_limit_0_else_the_rings_last_records(tmp_path: Path) -> None:
    path = str(tmp_path / "tk")
    _ring_of(path, [1, 2, 3, 4, 5])
    code, out, _ = file("inspect", path, "--limit", "0")
    assert code == 0 and "ring records (5 of 5):" in out and "batch entries (1 of 1):" in out, out
    assert sum(1 for x in out.splitlines() if x.startswith("  seq ")) == 5
    ring = next(x for x in out.splitlines() if x.startswith("  ring "))
    assert ring.startswith("  ring         records ") and "..39 (" in ring, ring
    code, out, _ = file("inspect", path, "--limit", "2")
    seqs = [x.split()[1] for x in out.splitlines() if x.startswith("  seq ")]
    assert "ring records (last 2 of 5):" in out and seqs == ["4", "5"], out


def test_a_ring_record_of_more_than_six_entries_is_cut_and_attrs_are_sorted(tmp_path: Path) -> None:
    path = str(tmp_path / "tk")
    _ring_of(path, [6, 8])
    code, out, _ = file("inspect", path)
    assert code == 0
    six, eight = (x for x in out.splitlines() if x.startswith("  seq "))
    assert six.endswith(": T000 open, T001 open, T002 open, T003 open, T004 open, T005 open"), six
    assert eight.endswith(": T010 open, T011 open, T012 open, T013 open, T014 open, T015 open, ... (+2)"), eight
    assert '  T00  open    {"a": 2, "z": 1}' in out, out


# -- hsbctl stop, pause, resume, history -----------------------------------------------------------

A, B = PAIR_A, PAIR_B
GONE = "connection refused: nothing listens there (is the daemon running?)"
STOPPING = {"t": "result", "ok": True, "msg": "stopping", "hands_over": False}


def _stop(
    monkeypatch: pytest.MonkeyPatch,
    secret: Path,
    capsys: pytest.CaptureFixture[str],
    host: str | None = None,
    takeover: bool = True,
    before: Callable[[dict[str, Any]], None] = lambda st: None,
    answer: dict[str, Any] = STOPPING,
    after: Callable[[dict[str, Any], int], bool] = lambda st, n: True,
) -> tuple[int, str, str, list[tuple[str, dict[str, Any]]]]:
    """`hsbctl stop` of `host` (None: the active) in a pair in hot standby (made over by
    `before`) whose host asked answers `answer` and is gone at the next poll (the n-th since,
    made over by `after`, gone unless it says False): (exit status, stdout, stderr, what was
    asked where). tests.support.cli.stop_faked runs it."""

    def gone(st: dict[str, Any], n: int, addr: str) -> None:
        if after(st, n):
            st["hosts"] = [h for h in st["hosts"] if h["addr"] != addr]
            st["unknown"] = [*st["unknown"], {"addr": addr, "name": "?", "error": GONE}]

    code, out, err, asked, _ = stop_faked(monkeypatch, secret, capsys, answer, gone, before, host, takeover)
    return code, out, err, asked


def test_a_stop_of_a_host_nobody_knows_is_1_and_one_that_could_not_be_asked_3(
    monkeypatch: pytest.MonkeyPatch, secret: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--host naming no host of the pair, every host answering: a usage mistake (1), the hosts
    named; naming one that could not be asked: not known (3), never asked to stop."""
    code, out, err, asked = _stop(monkeypatch, secret, capsys, host="host-c")
    assert (code, out, asked) == (1, "", []) and err == "error: no reachable host named 'host-c' (known: host-a, host-b)\n", (code, err)

    def b_away(st: dict[str, Any]) -> None:
        st["hosts"][1] = {"reachable": False, "name": "host-b", "addr": B, "error": "no answer within 2 s"}
        st["unknown"] = [st["hosts"][1]]

    code, out, err, asked = _stop(monkeypatch, secret, capsys, host="host-b", before=b_away)
    assert code == 3 and asked == [] and "error: no reachable host named 'host-b' (known: host-a)" in err, (code, err, asked)


def test_a_stop_without_takeover_asks_for_none(monkeypatch: pytest.MonkeyPatch, secret: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _, asked = _stop(monkeypatch, secret, capsys, takeover=False)
    assert code == 0 and asked == [(A, {"t": "stop", "takeover": False})], asked
    assert out.splitlines() == ["stopping", "host-a stopped; no host serves now (start one, or 'hsbctl promote')"], out


def test_a_stop_that_leaves_no_standby_does_not_send_the_operator_to_promote(
    monkeypatch: pytest.MonkeyPatch, secret: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The standby already down and the CP naming none: promote could only fail, so the line
    says to start a host; the CP naming a standby no host answered for still offers promote."""

    def b_down(st: dict[str, Any]) -> None:
        st["hosts"][1] = {"reachable": False, "name": "host-b", "addr": B, "error": GONE}
        st["unknown"] = [st["hosts"][1]]
        st["cp"]["standby"] = None

    code, out, _, _ = _stop(monkeypatch, secret, capsys, takeover=False, before=b_down)
    assert code == 0 and out.splitlines() == ["stopping", "host-a stopped; no host serves now (start one: there is no standby to promote)"], out

    def cp_names_b(st: dict[str, Any]) -> None:
        b_down(st)
        st["cp"]["standby"] = {"name": "host-b", "role": "standby", "connected": True}

    code, out, _, _ = _stop(monkeypatch, secret, capsys, takeover=False, before=cp_names_b)
    assert code == 0 and out.splitlines()[-1] == "host-a stopped; no host serves now (start one, or 'hsbctl promote')", out


def test_a_stop_an_older_host_answers_with_an_error_is_that_error(
    monkeypatch: pytest.MonkeyPatch, secret: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An answer with no ok at all (an error frame: a host too old to know stop) is no stop."""
    code, out, err, _ = _stop(monkeypatch, secret, capsys, answer={"t": "error", "error": "unknown request 'stop'"})
    assert (code, out, err) == (1, "", "error: unknown request 'stop'\n"), (code, out, err)


def test_a_stopped_host_restarted_at_once_is_still_one_that_stopped(
    monkeypatch: pytest.MonkeyPatch, secret: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """host-a hands over and is gone at the first poll, then answers again (systemd restarted
    it, as the standby now) before host-b is seen serving: it did stop; its handover is done
    once host-b serves, not "did not stop" at the deadline."""

    def back(st: dict[str, Any], n: int) -> bool:
        if n < 2:
            return True
        st["hosts"][0].update(role="standby", serving=False)
        st["hosts"][1].update(role="active", serving=True)
        return False

    code, out, err, _ = _stop(monkeypatch, secret, capsys, answer={**STOPPING, "hands_over": True}, after=back)
    assert code == 0 and out.splitlines() == ["stopping", "host-a stopped; host-b is the active host"], (code, out, err)


def test_a_promote_from_no_active_says_a_dash_not_none() -> None:
    """A promote with no active before it (the pair was down): its row says "- -> host-b"."""
    _, row = ops_cmds.history_lines([{"kind": "promote", "at": 1_700_000_000.0, "epoch": 2, "from": None, "to": "host-b", "reason": "operator"}])
    assert row.split()[2:] == ["promote", "2", "-", "->", "host-b", "-", "-", "operator"], row


def test_a_promote_after_a_normal_stop_names_the_host_that_had_stopped() -> None:
    e = {"kind": "promote", "at": 1_700_000_000.0, "epoch": 3, "from": None, "stopped": "host-a", "to": "host-b", "reason": "operator"}
    _, row = ops_cmds.history_lines([e])
    assert row.split()[2:7] == ["promote", "3", "(host-a", "stopped)", "->"], row


def test_a_stop_the_cp_could_not_be_told_of_waits_for_the_standby_to_take_over(
    monkeypatch: pytest.MonkeyPatch, secret: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The active's CP link down (the CP stalled): it stops without handing over, but the CP,
    not told, takes the end of its link for the active's loss and the standby takes over a few
    seconds later. hsbctl said `no host serves now (… 'hsbctl promote')` at once (the alone.py
    review); it now waits for that takeover a while and says who serves."""
    unaware = {**STOPPING, "msg": "host-a stops; its link to the CP is down, …", "cp_unaware": True}

    def later(st: dict[str, Any], n: int) -> bool:
        if n >= 4:  # (a few polls after host-a went)
            st["hosts"] = [{**h, "role": "active", "serving": True} if h["name"] == "host-b" else h for h in st["hosts"]]
        return True

    code, out, err, _ = _stop(monkeypatch, secret, capsys, answer=unaware, after=later)
    assert code == 0 and out.splitlines()[-1] == "host-a stopped; host-b is the active host", (code, out, err)
    code, out, err, _ = _stop(monkeypatch, secret, capsys, answer={**STOPPING, "msg": "host-a stops normally"}, after=later)
    assert code == 0 and out.splitlines()[-1].startswith("host-a stopped; no host serves now"), (code, out, err)
