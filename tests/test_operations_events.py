"""Every warning or error a daemon logs is in the operations guide's event tables
(docs/operations.md: the tables headed `event (level)`, §12 and §18), or is in one of the two
lists below: described in the guide's prose instead, or left out of the guide on purpose.

The tables list a chosen set, and nothing made anyone choose: the start's
`takeover_header_corrupt` (a torn takeover-file header taken at a start after a power loss)
and a few dozen more warnings and errors were in no table, so an operator who met one in the
log found nothing to look it up by. A new warning or error now fails this test until it has a
row, or a line here saying why not. Event names built at run time (`"journal_" + state`,
`"takeover_ring_" + status`) are not seen: only a name written out as the log call's first
argument is."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "operations.md"
LEVELS = {"warning", "warn", "error", "critical", "exception"}  # (structlog's; info and debug are not asked for)
NAME = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+")

# described in the guide's prose, in the section named, not in a table
IN_PROSE = {
    "accept_queue_too_small": "§20",
    "config_reread_failed": "§11",
    "config_reread_incomplete": "§11",
    "cp_worker_crash_loop": "§11",
    "cp_worker_died": "§11",
    "cp_worker_died_ending": "§11",
    "cp_worker_died_stopping": "§11",
    "cp_worker_failed": "§11",
    "host_timeout_short_for_storms": "§20",
    "journal_close_abandoned_write": "§11",
    "journal_not_drained": "§11",
    "journal_storage_error": "§18",
    "lease_lost": "§5, and in the cp_loop_stalled row",
    "open_files_too_few": "§20",
    "peer_took_over": "in the two_actives_claimed row",
    "role_hook_failed": "§9",
    "role_hook_timeout": "§9",
    "stale_epoch_refused": "in the fenced row",
    "stop_not_registered": "§9",
    "switchover_undone": "§8",
    "tls_files_broken_since": "§19",
}

# left out of the guide: nothing for an operator to do, or not met outside tests
LEFT_OUT = {
    "applied_config_not_kept": "the master's copy for a worker forked again; that worker reads the config file instead",
    "applied_config_unreadable": "as applied_config_not_kept",
    "applied_tls_not_kept": "as applied_config_not_kept, for the certificate files",
    "cp_counts_mismatch": "tests only (HSB_AUDIT_COUNTS=1)",
    "grant_superseded": "a race the CP settles itself; the failover's own events say the outcome",
    "granted_host_lost": "as grant_superseded",
    "journal_io_fallback": "io_uring's trouble, the journal goes on through its thread: docs/cp-journal.md",
    "journal_io_uring_error": "as journal_io_fallback",
    "journal_io_uring_failed": "as journal_io_fallback",
    "ring_write_outstanding": "a switchover's short wait for a ring write; storage trouble has its own events",
    "standby_kept_incomplete": "a short wait after a grant, then every standby session is opened again",
    "tickle_list_unreadable": "a list being replaced or damaged is passed over; tickle_acks_failed says the outcome",
}


def logged_events() -> dict[str, set[str]]:
    """Event name -> the levels it is logged at, for every log call in hsb/ whose first
    argument is a written-out event name."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "hsb").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args):
                continue
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str) and NAME.fullmatch(first.value):
                found.setdefault(first.value, set()).add(node.func.attr)
    return found


def tabled_events(text: str) -> set[str]:
    """The names in the first column of the guide's tables headed `| event`."""
    out: set[str] = set()
    header: str | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        if header is None:
            header = line
        elif header.startswith("| event") and not line.startswith("|---"):
            out |= set(re.findall(r"`([a-z][a-z0-9_]+)`", line.split(" | ")[0]))
    return out


def test_every_warning_and_error_logged_is_in_the_guides_event_tables() -> None:
    text = GUIDE.read_text()
    tabled = tabled_events(text)
    assert {"fenced", "cp_waiting", "takeover_header_recovered"} <= tabled  # (the tables are found)
    warned = {name for name, levels in logged_events().items() if levels & LEVELS}
    assert "takeover_header_corrupt" in warned  # (the log calls are found)
    missing = sorted(warned - tabled - IN_PROSE.keys() - LEFT_OUT.keys())
    assert missing == [], f"warnings and errors logged in hsb/ that docs/operations.md's event tables lack: {missing}"


def test_the_lists_of_events_not_in_the_tables_are_true() -> None:
    """An event of the lists is still logged, at warning or above, and not in a table; one in
    IN_PROSE is named in the guide, one in LEFT_OUT is not."""
    text = GUIDE.read_text()
    tabled, logged = tabled_events(text), logged_events()
    for name in IN_PROSE.keys() | LEFT_OUT.keys():
        assert logged.get(name, set()) & LEVELS, f"{name} is no longer logged as a warning or error: take it off the list"
        assert name not in tabled, f"{name} has a row in the guide's event tables: take it off the list"
    assert IN_PROSE.keys() & LEFT_OUT.keys() == set()
    named = set(re.findall(r"`([a-z][a-z0-9_]+)`", text))
    assert sorted(IN_PROSE.keys() - named) == [], "events said to be in the guide's prose that it does not name"
    assert sorted(LEFT_OUT.keys() & named) == [], "events said to be left out of the guide that it names: give them a row"
