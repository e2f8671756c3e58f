"""The load generator's final report: a dataclass, its JSON form and a readable table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any


def iso(ts: float | None) -> str | None:
    """Epoch seconds → ISO 8601 UTC with milliseconds (None stays None)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    unacked: int = 0  # sent, never acknowledged, never answered (not lost)
    resent: int = 0
    disconnects: int = 0
    connect_failures: int = 0
    session_closed: int = 0
    switched: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # error frames from the CP, by code
    protocol_errors: int = 0
    latency_ms: dict[str, float | None] = field(default_factory=dict)  # p50, p99, max, mean
    service_gap: dict[str, Any] = field(default_factory=dict)  # ms, start, end (epoch s), start_iso, end_iso
    gaps: list[dict[str, Any]] = field(default_factory=list)  # the longest stretches: ms, start, end (epoch s)
    connect_s: float | None = None  # start → every terminal welcomed
    session_open_s: float | None = None  # start → every terminal had an open session
    welcomed: int = 0  # terminals welcomed at least once
    sessions_opened: int = 0  # terminals whose session opened at least once
    achieved_rate: float = 0.0  # messages sent per second while sending
    reply_rate: float = 0.0  # first replies received per second while sending (the capacity, closed loop)
    closed_loop: bool = False  # each terminal kept `window` messages outstanding instead of a total rate
    window: int = 0
    started_at: float = 0.0  # epoch s when sending began
    lost_ids: list[str] = field(default_factory=list)  # a sample, "NAME:ID"
    duplicate_ids: list[str] = field(default_factory=list)
    per_terminal_disconnects: dict[str, int] = field(default_factory=dict)  # only terminals with > 0
    # With run_load(record_ids=True): {terminal: {"acked": [[first, last], ...], "replied": [...]}}.
    # Left out of to_dict() unless asked for (it grows with the run).
    ids: dict[str, dict[str, list[list[int]]]] | None = None

    @property
    def connected(self) -> bool:
        """At least one terminal was welcomed by the CP (or the run had no terminals)."""
        return self.terminals == 0 or self.welcomed > 0

    @property
    def ok(self) -> bool:
        """No acknowledged message lost, no reply duplicated, and the run reached a CP at all."""
        return self.lost == 0 and self.duplicates == 0 and self.connected

    @property
    def exit_status(self) -> int:
        """1: something acknowledged was lost or a reply duplicated; 2: no terminal was ever
        welcomed (a run that connected to nothing must not look green); else 0."""
        if self.lost or self.duplicates:
            return 1
        if not self.connected:
            return 2
        return 0

    def to_dict(self, include_ids: bool = False) -> dict[str, Any]:
        d = asdict(replace(self, ids=None))
        if include_ids:
            d["ids"] = self.ids
        else:
            del d["ids"]
        d["ok"] = self.ok
        d["exit_status"] = self.exit_status
        return d


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
                f"{r.duration_s:.1f} s closed loop (window {r.window}): {r.reply_rate:.1f} replies/s,"
                f" then settled {r.settle_s:.1f} s"
                if r.closed_loop
                else f"{r.duration_s:.1f} s at {r.achieved_rate:.1f} msg/s (target {r.rate:g}),"
                f" then settled {r.settle_s:.1f} s"
            ),
        ),
        ("sent", str(r.sent)),
        ("acknowledged", str(r.acked)),
        ("replied", str(r.replied)),
        ("lost", str(r.lost) + (f"  e.g. {', '.join(r.lost_ids[:5])}" if r.lost_ids else "")),
        ("duplicates", str(r.duplicates) + (f"  e.g. {', '.join(r.duplicate_ids[:5])}" if r.duplicate_ids else "")),
        ("unexpected", str(r.unexpected)),
        ("unacknowledged", f"{r.unacked} (never acknowledged; not lost)"),
        ("resent", str(r.resent)),
        ("disconnects", f"{r.disconnects} (failed connects {r.connect_failures})"),
        ("session closed", str(r.session_closed)),
        ("switched", str(r.switched)),
        ("latency ms", f"p50 {ms(lat.get('p50'))}  p99 {ms(lat.get('p99'))}  max {ms(lat.get('max'))}"),
        (
            "service gap",
            f"{gap.get('ms', 0.0):.1f} ms"
            + (f"  from {gap.get('start_iso')} to {gap.get('end_iso')}" if gap.get("start") is not None else ""),
        ),
    ]
    if r.errors:
        rows.append(("CP errors", ", ".join(f"{k} x{v}" for k, v in sorted(r.errors.items()))))
    if r.protocol_errors:
        rows.append(("protocol errors", str(r.protocol_errors)))
    if r.ok:
        verdict = "OK: nothing acknowledged was lost, no duplicate replies"
    elif r.exit_status == 2:
        verdict = "FAILED: no terminal was ever welcomed (nothing connected to a CP)"
    else:
        verdict = "FAILED"
    rows.append(("verdict", verdict))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
