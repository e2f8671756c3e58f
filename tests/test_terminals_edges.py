"""hsb.terminals edges: a name's and its attrs' bounds at the byte, a group's last name and
defaults, the table's bound, and the raw table's checks when an entry is left out."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from hsb import terminals
from hsb.takeover.layout import ENTRY_SIZE
from hsb.terminals import (
    SENT_ATTRS_MAX,
    TerminalDef,
    TerminalGroup,
    attrs_problem,
    expand_all,
    name_problem,
    raw_table_problems,
    sent_attrs_problem,
    table_problems,
)

REFUSED = "must be 1..48 bytes with no spaces"


def test_a_name_of_48_bytes_is_a_name_and_one_of_49_is_not() -> None:
    assert name_problem("N" * 48) is None
    assert TerminalDef(name="N" * 48).name == "N" * 48
    assert name_problem("N" * 49) == REFUSED
    with pytest.raises(ValueError, match=f"terminal name {REFUSED}"):
        TerminalDef(name="N" * 49)


def test_a_short_name_of_many_bytes_is_counted_in_bytes() -> None:
    assert name_problem("€" * 16) is None  # 48 bytes
    assert name_problem("€" * 17) == REFUSED  # 17 characters, 51 bytes
    assert name_problem("é" * 24) is None and name_problem("é" * 24 + "x") == REFUSED


def _sized(limit: int, size: Any) -> dict[str, str]:
    """Attrs whose size (as `size` measures it) is exactly `limit`."""
    for k in range(limit):
        attrs = {"note": "x" * k}
        if size(attrs) == limit:
            return attrs
    raise AssertionError(f"no attrs of {limit} bytes")


def test_attrs_that_fill_a_takeover_entry_exactly_fit_and_one_byte_more_does_not() -> None:
    attrs = _sized(ENTRY_SIZE, lambda a: len(msgpack.packb(["T1", True, a])))
    assert attrs_problem("T1", attrs) is None
    attrs["note"] += "x"
    assert (
        attrs_problem("T1", attrs) == f"attrs of 'T1' take {ENTRY_SIZE + 1} bytes in the takeover file, whose entry holds {ENTRY_SIZE}: shorten them"
    )


def test_attrs_the_cp_can_just_send_are_sent_and_one_byte_more_are_not() -> None:
    attrs = _sized(SENT_ATTRS_MAX, lambda a: len(msgpack.packb(a)))
    assert sent_attrs_problem("T1", attrs) is None
    attrs["note"] += "x"
    why = sent_attrs_problem("T1", attrs)
    assert why is not None and why.startswith(f"attrs of 'T1' take {SENT_ATTRS_MAX + 1} bytes;"), why


def test_a_group_whose_last_name_just_fits_expands_and_its_attrs_are_checked_by_that_name() -> None:
    g = TerminalGroup(prefix="P" * 43, count=99_999)
    assert g.last_name() == "P" * 43 + "99999"
    defs = expand_all([], [g])
    assert len(defs) == 99_999 and "P" * 43 + "00001" in defs and "P" * 43 + "99999" in defs
    seen: list[str] = []
    table_problems([], [TerminalGroup(prefix="G", count=3, start=8)], lambda name, _a: seen.append(name))
    assert seen == ["G00010"]


def test_a_groups_defaults_are_five_digits_from_one_and_standby_capable() -> None:
    defs = expand_all([TerminalDef(name="ONE")], [TerminalGroup(prefix="T", count=2)])
    assert list(defs) == ["ONE", "T00001", "T00002"]
    assert all(d.standby_capable for d in defs.values())


def test_the_table_may_hold_exactly_its_maximum(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(terminals, "MAX_TERMINALS", 3)
    assert list(expand_all([TerminalDef(name="A")], [TerminalGroup(prefix="G", count=2)])) == ["A", "G00001", "G00002"]
    with pytest.raises(ValueError, match="4 terminals in all: at most 3"):
        expand_all([TerminalDef(name="A")], [TerminalGroup(prefix="G", count=3)])


def test_no_terminals_is_a_problem_only_where_one_is_needed() -> None:
    assert table_problems([], [], attrs_problem) == ({}, [])
    assert table_problems([], [], sent_attrs_problem, need_one=True) == ({}, ["no terminals defined; add [[terminals]] or [[terminal_groups]]"])


def test_the_raw_table_with_an_entry_left_out_is_none_and_not_said_to_be_empty() -> None:
    ok, bad = {"name": "A"}, {"name": "B C"}
    defs, problems = raw_table_problems({"terminals": [ok, bad]}, sent_attrs_problem, need_one=True)
    assert defs is None and problems == []
    assert raw_table_problems({"terminals": [bad]}, sent_attrs_problem, need_one=True) == (None, [])
    assert raw_table_problems({"terminal_groups": "nonsense"}, sent_attrs_problem, need_one=True) == (None, [])
    defs, problems = raw_table_problems({"terminals": [ok, {"name": "A"}]}, sent_attrs_problem, need_one=True)
    assert defs == {} and problems == ["terminals[1]: terminal 'A' is defined twice"]
    defs, problems = raw_table_problems({"terminals": [ok]}, sent_attrs_problem, need_one=True)
    assert defs is not None and list(defs) == ["A"] and problems == []
    assert raw_table_problems({}, sent_attrs_problem, need_one=True) == ({}, ["no terminals defined; add [[terminals]] or [[terminal_groups]]"])
