"""The load generator's final report: the strict verdict, a dataclass, its JSON form and a table.

The verdict (`LoadReport.failures`) fails the run on every broken promise of
SPEC §5.6 and the terminal link, each with its reason:

- **lost**: acknowledged, never answered;
- **duplicates**: a second reply to one id;
- **unexpected**: a reply to an id the terminal never sent, or one that came
  before the message's ack (the CP acknowledges what it holds before anything
  else can answer it);
- **bad data**: a reply whose data is not what the service must answer (for
  `echo` and `journal`, the data sent; each terminal's data names it and the
  message, so a reply delivered to the wrong terminal is caught too; for the
  `ledger` workload, an answer of the right shape only: whether a transfer's
  ok or refusal was the right one is the books check's). Off with
  `check_data=False` for services that answer otherwise;
- **unacknowledged**: sent and never acknowledged by the end of the settle
  time (a CP that silently ignores a message breaks its promise as surely as
  one that loses it). Lost and unacknowledged are judged as the settle time
  ends: an answer that comes only with the terminals' logoff after it (the CP
  hands over what it still held when a terminal says bye) is too late, and
  `late_at_logoff` counts such messages;
- **not logged on**: terminals that were never welcomed;
- **disconnects / session closures** of standby-capable terminals (a
  fast-switch failover must not disconnect them); allowed with
  `expect_disconnects` (conventional mode, a CP restart; with `"cp"` only those the
  CP's absence explains: a terminal welcomed again by the same CP process, with no
  failed connect between, is still a failure) and always for the
  terminals named `classic` (no standby session: the failover closes them by
  design);
- **CP errors and protocol errors** (an error frame is a refusal; where disconnects
  are expected, `already_connected` is not: a reconnect that came before the CP saw
  the old connection go, retried);
- **unexpected acks**: an acknowledgement of an id the terminal never sent (in
  an `ack`, or as a welcome's `last_acked`), unless below this run's first id;
- **not back**: a terminal disconnected and not logged on again by the end of the
  run, or logged on without the session it had before (the settle time waits for
  it as for the outstanding replies).

A reply marked `resent` (after a CP restart) for an id the terminal already holds is
ignored only if its id is above the `last_reply` of the terminal's latest hello (the
CP was told about the rest) and it is the answer the terminal got the first time;
else it is a duplicate or bad data. One for an id the terminal never sent is
unexpected, unless the id is below this run's first id (an earlier run's).

The headline of an operation (failover, switchover) is the worst pause a
terminal saw (`operations`, see `hsb.term.timeline`); `service_gap` is an
older, aggregated figure kept for comparison: the longest stretch in which no
terminal at all got a reply while at least one message was outstanding. It
under-reports pauses that hit only some terminals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from hsb.plural import agree, many, were
from hsb.term.hopeless import closed_after_hello, no_connect
from hsb.term.verdict import IdRanges

RECONNECT_RACES = frozenset({"already_connected"})  # refusals a reconnect can meet and retry past


# The verdict's words for the broken promises one terminal's session shows as well: `hsbterm
# connect` says them as the load's verdict does (hsb.term.interactive.session_failures).


def eg(ids: list[str]) -> str:
    """A sample of the ids concerned, if there are any."""
    return f" (e.g. {', '.join(ids[:5])})" if ids else ""


def error_counts(errors: dict[str, int]) -> str:
    """The CP's error frames by code: `code xN, ...`."""
    return ", ".join(f"{k} x{v}" for k, v in sorted(errors.items()))


def why_list(why: dict[str, int]) -> str:
    """'reset 3, timed_out 1': disconnects by why, the commonest first."""
    return ", ".join(f"{k} {n}" for k, n in sorted(why.items(), key=lambda x: -x[1]))


def causes(why: dict[str, int]) -> str:
    """' (why: reset 3, timed_out 1)' for a report's disconnects, or nothing."""
    return f" (why: {why_list(why)})" if why else ""


def duplicates_failure(n: int, ids: list[str]) -> str:
    return f"duplicates: {many(n, 'reply', 'replies')} beyond the first{eg(ids)}"


def unexpected_failure(n: int, early: int) -> str:
    """`n` replies to ids never sent or not yet acknowledged, `early` of them before their ack."""
    return f"unexpected: {many(n, 'reply', 'replies')} to ids never sent or not yet acknowledged ({early} before their ack)"


def unexpected_acks_failure(n: int) -> str:
    return f"unexpected acks: {many(n, 'acknowledgement')} of ids the terminal never sent"


def acks_forgotten_failure(n: int) -> str:
    return f"acks forgotten: {many(n, 'welcome')} said a last_acked below an id the CP had acknowledged (an ack that was not durable)"


def cp_errors_failure(errors: dict[str, int]) -> str:
    return "CP errors: " + error_counts(errors)


def protocol_errors_failure(n: int) -> str:
    return f"protocol errors: {many(n, 'frame')} from the CP broke the protocol"


def iso(ts: float | None) -> str | None:
    """Epoch seconds → ISO 8601 UTC with milliseconds (None stays None)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class LoadReport:
    """Everything `hsbterm load` reports. `to_dict()` is the `--json` object."""

    terminals: int = 0
    rate: float = 0.0  # target, messages per second over all terminals
    duration_s: float = 0.0  # how long it actually sent
    settle_s: float = 0.0  # how long it then waited for outstanding replies
    sent: int = 0
    acked: int = 0
    replied: int = 0
    lost: int = 0
    duplicates: int = 0
    unexpected: int = 0
    unacked: int = 0  # sent, never acknowledged, never answered (a failure, not a loss)
    unexpected_early: int = 0  # of `unexpected`: first replies that came before the message's ack
    bad_data: int = 0  # replies whose data was not what the service must answer
    check_data: bool = True
    workload: str = "echo"  # what the messages were: "echo" (answered with their data) or "ledger"
    # True: any disconnect is allowed (conventional mode); "cp": only those the CP's absence
    # explains (a CP restart or takeover), not one after which the same CP process welcomed it again
    expect_disconnects: bool | str = False
    disconnects_cp_present: int = 0  # of standby-capable terminals, welcomed again by the same CP process
    logon_drops: int = 0  # connections closed after the hello with neither a welcome nor an error
    classic: int = 0  # terminals of the run without a standby session (their disconnects are allowed)
    disconnects_standby_capable: int = 0
    session_closed_standby_capable: int = 0
    operations: list[dict[str, Any]] = field(default_factory=list)  # the pause of each marked operation
    after_s: float = 1.0  # an operation's window: messages in flight at it or sent this long after it
    resume: bool = True  # the terminals resumed (last_reply, confirm, resent replies)
    resent_ignored: int = 0  # replies the CP sent again after a reconnect that the terminal had (ignored)
    earlier_run_replies: int = 0  # replies for ids of an earlier run of the terminal (not judged, confirmed)
    unexpected_acks: int = 0  # acknowledgements of ids never sent (misdelivered or made up)
    acks_forgotten: int = 0  # welcomes whose last_acked was below an id the CP had acknowledged
    not_back: int = 0  # terminals not logged on again, or without their session again, by the end of the run
    late_at_logoff: int = 0  # of lost + unacked: answered or acknowledged only during the logoff after the settle
    owed_unsent: int = 0  # sends that fell due while a terminal could not send, never made (a pause, not a loss)
    not_back_names: list[str] = field(default_factory=list)  # a sample
    cp_reconnects: int = 0  # changes of CP process the terminals lived through (a CP restart: one a terminal)
    resent: int = 0
    disconnects: int = 0
    connect_failures: int = 0
    session_closed: int = 0
    switched: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # error frames from the CP, by code
    protocol_errors: int = 0
    latency_ms: dict[str, float | None] = field(default_factory=dict)  # p50, p99, max, mean (send -> first reply)
    ack_latency_ms: dict[str, float | None] = field(default_factory=dict)  # the same, send -> ack
    service_gap: dict[str, Any] = field(default_factory=dict)  # ms, start, end (epoch s), start_iso, end_iso
    gaps: list[dict[str, Any]] = field(default_factory=list)  # the longest stretches: ms, start, end (epoch s)
    connect_s: float | None = None  # start → every terminal welcomed
    session_open_s: float | None = None  # start → every terminal had an open session
    welcomed: int = 0  # terminals welcomed at least once
    sessions_opened: int = 0  # terminals whose session opened at least once
    sessions_expected: bool = False  # the run waited for every terminal's session (--wait-session): each must have had one
    achieved_rate: float = 0.0  # messages sent per second while sending
    reply_rate: float = 0.0  # first replies received per second while sending (the capacity, closed loop)
    closed_loop: bool = False  # each terminal kept `window` messages outstanding instead of a total rate
    window: int = 0
    started_at: float = 0.0  # epoch s when sending began
    lost_ids: list[str] = field(default_factory=list)  # a sample, "NAME:ID"
    duplicate_ids: list[str] = field(default_factory=list)
    unacked_ids: list[str] = field(default_factory=list)
    bad_data_ids: list[str] = field(default_factory=list)
    per_terminal_disconnects: dict[str, int] = field(default_factory=dict)  # only terminals with > 0
    disconnect_causes: dict[str, int] = field(default_factory=dict)  # the disconnects by why (closed, reset, timed_out, an error code)
    # With run_load(record_ids=True): {terminal: {"acked": [[first, last], ...], "replied": [...]}}.
    # Left out of to_dict() unless asked for (it grows with the run).
    ids: dict[str, IdRanges] | None = None
    # ledger workload: the books check (hsb.term.books) and what it found wrong
    books: dict[str, Any] | None = None
    books_failures: list[str] = field(default_factory=list)
    # no terminal ever welcomed: the cause no retry could change (with its fix) for which the run
    # gave up at once (hsb.term.hopeless), and the last failed connect's error
    gave_up: str | None = None
    sender_failed: str | None = None  # the send schedule stopped on an error: nothing more was sent
    connect_error: str | None = None

    @property
    def connected(self) -> bool:
        """At least one terminal was welcomed by the CP (a run of no terminals is judged by `failures`)."""
        return self.terminals == 0 or self.welcomed > 0

    @property
    def never_welcomed(self) -> str:
        """Why no terminal was ever welcomed, as far as the run saw (for a run not `connected`)."""
        if self.gave_up:
            return self.gave_up
        if self.errors:
            return f"the CP refused the terminals ({error_counts(self.errors)})"
        if self.protocol_errors:
            return f"what answers broke the terminal link ({many(self.protocol_errors, 'protocol error')}): is --cp the CP's terminal_listen address?"
        if self.logon_drops:
            return closed_after_hello(self.logon_drops)
        if self.connect_failures:
            return no_connect(self.connect_failures, self.connect_error)
        return "no welcome came within the connect timeout (--connect-timeout)"

    @property
    def failures(self) -> list[str]:
        """Every broken promise of the run, one readable reason each (empty: the run is OK)."""
        out: list[str] = []
        if self.terminals == 0:
            out.append("no terminals: the run had none, so nothing was proven")
        if self.sender_failed:
            out.append(f"the load's sender stopped on an error ({self.sender_failed}): the run sent nothing after it")
        if self.lost:
            out.append(f"lost: {many(self.lost, 'acknowledged message')} never answered{eg(self.lost_ids)}")
        if self.duplicates:
            out.append(duplicates_failure(self.duplicates, self.duplicate_ids))
        if self.unexpected:
            out.append(unexpected_failure(self.unexpected, self.unexpected_early))
        if self.bad_data:
            if self.workload == "echo":
                out.append(
                    f"bad data: {many(self.bad_data, 'reply', 'replies')} whose data is not what was sent{eg(self.bad_data_ids)}"
                    " (for a service that answers otherwise, turn the check off: --no-check-data)"
                )
            else:
                out.append(
                    f"bad data: {many(self.bad_data, 'reply', 'replies')} whose data is not an answer its request can get{eg(self.bad_data_ids)}"
                )
        if self.unacked:
            out.append(
                f"unacknowledged: {many(self.unacked, 'message')} sent and never acknowledged by the end of"
                f" the {self.settle_s:.1f} s settle time{eg(self.unacked_ids)}"
            )
        if self.unexpected_acks:
            out.append(unexpected_acks_failure(self.unexpected_acks))
        if self.acks_forgotten:
            out.append(acks_forgotten_failure(self.acks_forgotten))
        if self.welcomed < self.terminals:
            out.append(
                f"not logged on: {self.terminals - self.welcomed} of {many(self.terminals, 'terminal')} {were(self.terminals - self.welcomed)} never welcomed"
            )
        if self.sessions_expected and self.sessions_opened < self.welcomed and self.sent:
            # (one that sent nothing, at a low rate, failed no other check: it was not served at all)
            out.append(
                f"no session: {self.welcomed - self.sessions_opened} of the {many(self.welcomed, 'terminal')} welcomed {were(self.welcomed - self.sessions_opened)} never given"
                " a session (no active serves them: the hosts' terminal tables lack them, or the active refused them)"
            )
        if self.not_back:
            out.append(
                f"not back: {many(self.not_back, 'terminal')} {were(self.not_back)} not logged on again, or not given their session again, by the end of the run{eg(self.not_back_names)}"
            )
        cp_mode = self.expect_disconnects == "cp"
        if not self.expect_disconnects and self.disconnects_standby_capable:
            out.append(
                f"disconnects: {self.disconnects_standby_capable} of terminals that should have kept their"
                f" connection{causes(self.disconnect_causes)} (pass --expect-disconnects for conventional mode or a CP restart)"
            )
        if not self.expect_disconnects and self.logon_drops:
            out.append(
                f"dropped while logging on: {many(self.logon_drops, 'connection')} {were(self.logon_drops)} closed after {agree(self.logon_drops, 'its', 'their')} hello with neither a"
                " welcome nor an error (pass --expect-disconnects for a CP restart; a CP out of open files closes them too:"
                " its log says connection_refused)"
            )
        if cp_mode:
            out.extend(cp_restart_failures(self.disconnects_cp_present, self.session_closed_standby_capable))
        elif not self.expect_disconnects and self.session_closed_standby_capable:
            out.append(f"session closed: {many(self.session_closed_standby_capable, 'session closure')} of standby-capable terminals")
        # a refusal is a failure even where disconnects are expected; only a reconnect that came
        # before the CP noticed the old connection's loss (already_connected, retried) is not
        errors = self.errors if not self.expect_disconnects else {k: v for k, v in self.errors.items() if k not in RECONNECT_RACES}
        if errors:
            out.append(cp_errors_failure(errors))
        if self.protocol_errors:
            out.append(protocol_errors_failure(self.protocol_errors))
        out.extend(f"books: {f}" for f in self.books_failures)
        if self.terminals and self.sent == 0:
            out.append(
                "nothing sent: no terminal sent a message in the run, so nothing was proven (a rate of 0"
                " without --closed-loop, or a duration too short for the rate)"
            )
        return out

    @property
    def ok(self) -> bool:
        """No promise broken, and the run reached a CP at all."""
        return self.connected and not self.failures

    @property
    def exit_status(self) -> int:
        """2: no terminal was ever welcomed (a run that connected to nothing must not look green;
        `never_welcomed` says why);
        1: any promise broken (`failures`); else 0."""
        if not self.connected:
            return 2
        return 1 if self.failures else 0

    @property
    def pause(self) -> dict[str, Any] | None:
        """The headline: the first marked operation's pause, or None without one."""
        return self.operations[0] if self.operations else None

    def to_dict(self, include_ids: bool = False) -> dict[str, Any]:
        d = asdict(replace(self, ids=None))
        if include_ids:
            d["ids"] = self.ids
        else:
            del d["ids"]
        d["ok"] = self.ok
        d["exit_status"] = self.exit_status
        d["failures"] = self.failures
        d["never_welcomed"] = None if self.connected else self.never_welcomed
        return d


def cp_restart_failures(disconnects_cp_present: int, session_closed: int) -> list[str]:
    """What a CP restart or takeover may not do to standby-capable terminals (the verdict of
    `expect_disconnects="cp"`; the fault campaign judges its rounds that kill only the CP by it
    too): drop one that the same CP process then welcomes again (a drop during a logon
    included), or close a session (a CP away drops the connection; it closes no session on one)."""
    out = []
    if disconnects_cp_present:
        out.append(
            f"disconnects with the CP present: {disconnects_cp_present} of terminals that should have kept their"
            " connection were welcomed again by the same CP process, with no failed connect between (only a CP"
            " restart or takeover may disconnect them in this run)"
        )
    if session_closed:
        out.append(
            f"session closed: {many(session_closed, 'session closure')} of standby-capable terminals"
            " (a CP restart or takeover may drop a connection, not close a session on one)"
        )
    return out


def format_table(r: LoadReport) -> str:
    """The human-readable form of a report."""

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    def sec(v: float | None) -> str:
        return "not reached" if v is None else f"{v:.3f} s"

    lat = r.latency_ms
    gap = r.service_gap
    rows: list[tuple[str, str]] = [
        ("terminals", f"{r.terminals} ({r.welcomed} welcomed, {r.sessions_opened} with a session)"),
        ("connect", f"all welcomed: {sec(r.connect_s)}; all sessions open: {sec(r.session_open_s)}"),
        (
            "sending",
            (
                f"{r.duration_s:.1f} s closed loop (window {r.window}): {r.reply_rate:.1f} replies/s, then settled {r.settle_s:.1f} s"
                if r.closed_loop
                else f"{r.duration_s:.1f} s at {r.achieved_rate:.1f} msg/s (target {r.rate:g}), then settled {r.settle_s:.1f} s"
            ),
        ),
        ("sent", str(r.sent)),
        ("acknowledged", str(r.acked)),
        ("replied", str(r.replied)),
        ("lost", str(r.lost) + (f"  e.g. {', '.join(r.lost_ids[:5])}" if r.lost_ids else "")),
        ("duplicates", str(r.duplicates) + (f"  e.g. {', '.join(r.duplicate_ids[:5])}" if r.duplicate_ids else "")),
        ("unexpected", f"{r.unexpected} ({r.unexpected_early} before their ack)"),
        ("bad data", f"{r.bad_data}{_shape_only(r)}" if r.check_data else "not checked (--no-check-data)"),
        ("unacknowledged", str(r.unacked)),
        *([("late at logoff", f"{r.late_at_logoff} of those answered only when the terminals logged off (too late)")] if r.late_at_logoff else []),
        *([("owed, not sent", f"{r.owed_unsent} sends fell due while a terminal could not send and were never made")] if r.owed_unsent else []),
        ("resent", f"{r.resent} messages; {r.resent_ignored} replies resent by the CP were already here" + ("" if r.resume else " (not resuming)")),
        (
            "disconnects",
            f"{r.disconnects} (failed connects {r.connect_failures}; CP away {r.cp_reconnects}"
            + (f"; why: {why_list(r.disconnect_causes)})" if r.disconnect_causes else ")")
            + (
                f"; expected where the CP was away ({r.disconnects_cp_present} with it present)"
                if r.expect_disconnects == "cp"
                else "; expected"
                if r.expect_disconnects
                else f"; of standby-capable terminals {r.disconnects_standby_capable}"
            ),
        ),
        ("session closed", str(r.session_closed)),
        ("switched", str(r.switched)),
        ("latency ms", f"p50 {ms(lat.get('p50'))}  p99 {ms(lat.get('p99'))}  max {ms(lat.get('max'))}"),
        ("ack latency ms", f"p50 {ms(r.ack_latency_ms.get('p50'))}  p99 {ms(r.ack_latency_ms.get('p99'))}  max {ms(r.ack_latency_ms.get('max'))}"),
    ]
    for op in r.operations:
        rows.append(
            (
                f"pause: {op['label']}",
                f"worst {ms(op['worst_ms'])} ms, p99 {ms(op['p99_ms'])} ms over {op['messages']} messages"
                f" ({op['in_flight']} in flight at it, the rest sent in the {r.after_s:g} s after);"
                + (
                    f" every terminal served again after {ms(op['all_served_ms'])} ms ({op['terminals_in_flight']} terminals had something in flight)"
                    if op["in_flight"]
                    else " nothing was in flight at it"
                ),
            )
        )
    rows.append(
        (
            "service gap",
            f"{gap.get('ms', 0.0):.1f} ms (aggregated: longest stretch with no reply to any terminal)"
            + (f"  from {gap.get('start_iso')} to {gap.get('end_iso')}" if gap.get("start") is not None else ""),
        )
    )
    if r.errors:
        rows.append(("CP errors", error_counts(r.errors)))
    if r.protocol_errors:
        rows.append(("protocol errors", str(r.protocol_errors)))
    if r.books is not None:
        b = r.books
        rows.append(
            (
                "books",
                b["error"]
                if "error" in b
                else f"{b['accounts']} accounts hold {b['total']} (deposited {b['expected_total']}); transfers told ok {b['transfers_ok']},"
                f" refused {b['transfers_refused']}; {b['entries']} entries"
                + ("; balanced, each applied exactly once, every reply the stored one" if not r.books_failures else ""),
            )
        )
    if r.ok:
        verdict = "OK: every message acknowledged and answered exactly once" + _data_checked(r)
    elif r.exit_status == 2:
        verdict = f"FAILED: no terminal was ever welcomed: {r.never_welcomed}"
    else:
        verdict = "FAILED: " + "; ".join(r.failures)
    rows.append(("verdict", verdict))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def _shape_only(r: LoadReport) -> str:
    """What the bad data count could not see: a ledger run without the books check."""
    return " (the replies' shape only: without --books-* a wrong ok or refusal passes)" if r.workload != "echo" and r.books is None else ""


def _data_checked(r: LoadReport) -> str:
    """The OK verdict's claim about the replies' data: only what was checked."""
    if r.workload == "echo":
        return ", with the right data" if r.check_data else " (the replies' data not checked: --no-check-data)"
    if r.books is None:
        return (
            ", each reply a possible answer to its request (its shape only: no --books-* check)"
            if r.check_data
            else " (the replies not checked: --no-check-data)"
        )
    shape = ", each reply a possible answer to its request" if r.check_data else " (the replies' shape not checked: --no-check-data)"
    return shape + "; the books agree with every reply"
