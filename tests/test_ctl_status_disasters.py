"""`hsbctl status` after a site's bad day (the disaster-recovery walk-through, docs/operations.md
§0, §11, §12): the answers the daemons gave, as verdict.summarize and the headline take them, and
the line that must name the problem and its fix. The CP's journal directory replaced (a new disk:
hsbcpd started on an empty directory, a new journal id) with the hosts still running: they refuse
it, and their epochs ahead of the CP's are that refusal, not a role change under way."""

from __future__ import annotations

from typing import Any

import pytest

from hsb.ctl.status import headline
from hsb.ctl.verdict import summarize
from tests.support.cli import cp_answer, host_answer

pytestmark = pytest.mark.timeout(30)

_OLD, _NEW = "4ce051efff344a78bdee6cfcbb872efe", "9b69d8826e4f4a81a408454290d9170e"


def _journal_replaced() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What the sandbox's daemons answered (the walk-through's step 4): hsbcpd started on an empty
    journal directory (generation 1, epoch 0, a new journal id, terminals' messages held), both
    hosts at epoch 6 following the old journal, neither registered with it, the active not serving."""
    journal = {"dir": "/var/lib/hsb/cp-journal", "durability": "fsync", "state": "ok", "id": _NEW}
    cp = cp_answer(epoch=0, generation=1, journal=journal, active=None, standby=None)
    followed = {"seen": 2, "refusals": 3, "journal": _OLD}
    a = host_answer("host-a", "standby", epoch=6, registered_at_cp=False, cp_generation=dict(followed))
    b = host_answer("host-b", "active", epoch=6, serving=False, registered_at_cp=False, cp_generation=dict(followed))
    return cp, [a, b]


def test_a_replaced_cp_journal_is_not_a_role_change_and_its_line_names_the_fix() -> None:
    """It said `hsb: UNKNOWN (a role change is under way)` (3), `ask again in a moment`, which no
    asking again ever changes: the hosts will never register with that CP. It is NOT SERVING (2),
    and the ERROR line under it says the journal directory was replaced, what is lost, and what to
    do (each hsbd stopped, its HOST.cp-generation removed, started again)."""
    cp, hosts = _journal_replaced()
    st = summarize(cp, hosts)
    assert not st["changing"], st["changing"]
    assert st["exit_status"] == 2 and not st["serving"], st
    first = headline(st)[0]
    assert first == "hsb: NOT SERVING", first
    (err,) = st["cp_errors"]
    assert f"serves journal {_NEW}, not journal {_OLD} host-a follows, so the hosts do not register with it" in err, err
    assert "its journal directory was replaced" in err and "what the old journal held is lost" in err, err
    assert "remove its HOST.cp-generation beside its takeover file and start it again, §11" in err, err


def test_hosts_ahead_of_a_cp_on_their_own_journal_are_still_a_role_change() -> None:
    """The same answers but the hosts following the CP's own journal: hosts at a newer epoch than
    the CP's answer are a grant it had not made when it answered (asked again: a role change)."""
    cp, hosts = _journal_replaced()
    for h in hosts:
        h["cp_generation"] |= {"journal": _NEW, "seen": 1}
    st = summarize(cp, hosts)
    assert st["changing"] and st["exit_status"] == 3 and not st["cp_errors"], st
    assert headline(st)[0] == "hsb: UNKNOWN (a role change is under way)"


_REFUSED = "authentication failed: the secret differs from the daemon's (check secret_file in the ctl config)"


def test_a_host_restored_with_another_secret_is_named_the_odd_one() -> None:
    """A host's machine restored from an old backup, its secret_file another secret: it refuses
    hsbctl, which said `check secret_file in the ctl config`, though the CP and the other host
    accept that very secret. The line names that daemon's secret_file as the one to check."""
    a = {"reachable": False, "name": "host-a", "addr": "host-a:1", "error": _REFUSED}
    st = summarize(cp_answer(), [a, host_answer("host-b", "active")])
    (u,) = st["unknown"]
    assert u["name"] == "host-a" and "the ctl config" in u["error"], u
    assert u["error"].startswith("authentication failed: its secret differs from the one the CP and host-b accept (the ctl config's)"), u
    assert "check that daemon's secret_file on its machine (restored from an old backup?" in u["error"], u
    assert st["exit_status"] == 3, st


def test_a_secret_no_daemon_accepts_is_still_the_ctl_configs_to_check() -> None:
    """Refused by every daemon: the ctl config's secret is the odd one, as before."""
    cp = {"reachable": False, "name": "CP", "addr": "cp:1", "error": _REFUSED}
    hosts = [{"reachable": False, "name": f"host{i}", "addr": f"h{i}:1", "error": _REFUSED} for i in (1, 2)]
    st = summarize(cp, hosts)
    assert [u["error"] for u in st["unknown"]] == [_REFUSED] * 3, st["unknown"]


def test_an_active_whose_batch_writes_fail_says_why_under_the_verdict() -> None:
    """The takeover file deleted under a running pair: `hsb: SERVING WITHOUT A STANDBY` and no
    line under it (the fix only as host-b's `last error` further down, while §0 says to start
    the other host, which runs). The active's error, with its fix, is the line under the verdict."""
    gone = "batch write failed: takeover file /var/lib/hsb/takeover.dat is gone (deleted, …); create it again with `hsbctl file create …`"
    a = host_answer("host-a", "standby", state="awaiting_batch")
    b = host_answer("host-b", "active", state="serving", last_error=gone)
    st = summarize(cp_answer(), [a, b])
    assert st["serving"] and not st["established"] and st["exit_status"] == 1, st
    lines = headline(st)
    assert lines == ["hsb: SERVING WITHOUT A STANDBY", f"  host-b serves without a standby: {gone}"], lines
    # an active serving without a standby for another reason (the standby not started): no such line
    b["last_error"] = "peer link not made: connection refused"
    assert headline(summarize(cp_answer(), [a, b])) == ["hsb: SERVING WITHOUT A STANDBY"]


@pytest.mark.parametrize("state", ["failing", "stalled"])
def test_a_cp_journal_that_cannot_be_written_is_said_under_the_verdict_with_its_fix(state: str) -> None:
    """The journal's disk full: `hsb: NOT SERVING` and nothing under it, the cause at the end of
    the CP's journal line further down. The line under the verdict names the journal, the error
    and the fix (its storage, never a promote or a restart); a journal that is ok: no such line."""
    err = "OSError: [Errno 28] No space left on device" if state == "failing" else "a write has not completed in 5 s (storage not responding)"
    journal = {"dir": "/var/lib/hsb/cp-journal", "durability": "fsync", "state": state, "error": err}
    st = summarize(cp_answer(journal=journal), [host_answer("host-a", "active"), host_answer("host-b", "standby")])
    assert st["exit_status"] == 2 and not st["serving"], st
    first, second, *_ = headline(st)
    assert first == "hsb: NOT SERVING", first
    assert second.startswith(f"  the CP's journal /var/lib/hsb/cp-journal is {state.upper()} ({err}"), second
    assert "it acknowledges nothing new" in second and "fix its storage (free space, the mount, dmesg)" in second, second
    assert "never promote or restart for it" in second and ("a hung mount?" in second) == (state == "stalled"), second
    assert second.count("has not completed") == (state == "stalled"), second  # (said once: the journal's error says how long)
    journal["state"] = "ok"
    st = summarize(cp_answer(journal=journal), [host_answer("host-a", "active"), host_answer("host-b", "standby")])
    assert st["exit_status"] == 0 and st["journal_down"] == [] and headline(st) == ["hsb: ESTABLISHED (hot standby ready)"], st


def test_a_secret_only_the_cp_accepts_names_no_host_the_odd_one() -> None:
    """The CP's machine restored from an old backup, hsbctl run there with its secret: the CP
    accepts it and both hosts refuse it. The hosts are not the odd ones, so no line tells to
    check that host's secret_file: either side may be, and the sha256sums are to compare."""
    hosts = [{"reachable": False, "name": f"host-{x}", "addr": f"host-{x}:1", "error": _REFUSED} for x in "ab"]
    st = summarize(cp_answer(), hosts)
    assert [u["name"] for u in st["unknown"]] == ["host-a", "host-b"], st["unknown"]
    for u in st["unknown"]:
        assert "check that daemon's secret_file" not in u["error"], u
        assert u["error"].startswith("authentication failed: its secret differs from the one the CP accepts (the ctl config's)"), u
        assert "which 2 daemons refuse: either side may be the odd one" in u["error"] and "sha256sum" in u["error"], u
