"""Every crash point of hsb.faults is armed somewhere that checks it fired: a campaign action
(tests/support/campaignjudge.py, whose verdict fails a round whose point was not reached) or a test
named here that looks for its `crash_point` line. A point nothing arms is a path no fault test
ever took (cp.after_grant, cp.mid_switch, cp.mid_redelivery and cp.between_reply_and_discard
were such)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from hsb import faults
from tests.support.campaign import WEIGHTS
from tests.support.campaignjudge import ACTIONS

REPO = Path(__file__).resolve().parent.parent
# points that do not fit a campaign round, and the tests that arm them and assert the crash
ARMED_IN_TESTS = {
    "cp.mid_recovery": (
        "tests/test_cp_restart.py::test_sigkill_of_hsbcpd_under_load_1000_resuming_terminals",
        "tests/test_cp_journal_damage.py::test_a_torn_tail_is_dropped_but_left_in_the_file_for_a_write_still_finishing",
    ),
}


def test_every_crash_point_is_armed_where_its_firing_is_checked() -> None:
    in_campaign = {p for p, _ in ACTIONS.values() if p is not None}
    assert set(ACTIONS) == set(WEIGHTS)  # (an action without a weight is never chosen)
    missing = set(faults.POINTS) - in_campaign - set(ARMED_IN_TESTS)
    assert not missing, f"crash points nothing arms: {sorted(missing)}; add a campaign action or a test that sees each fire"
    for point, tests in ARMED_IN_TESTS.items():
        for t in tests:
            path, name = t.split("::")
            tree = ast.parse((REPO / path).read_text())
            fn = next((n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name), None)
            assert fn is not None, f"{t}: no such test"
            src = ast.unparse(fn)
            assert f"'{point}'" in src and "crash_point" in src, f"{t} does not arm {point} and look for its crash_point line"


def test_every_crash_point_in_the_code_is_a_named_one_and_each_is_visited() -> None:
    """faults.point("x") for an x not in POINTS can never be armed (the control file refuses it)."""
    used: set[str] = set()
    for p in (REPO / "hsb").rglob("*.py"):
        used |= set(re.findall(r'faults\.(?:point|armed)\("([^"]+)"\)', p.read_text()))
    assert used <= set(faults.POINTS), sorted(used - set(faults.POINTS))
    assert set(faults.POINTS) <= used, sorted(set(faults.POINTS) - used)
