"""Prometheus metrics for both daemons, built at scrape time from their status.

One custom collector per daemon reads the same status dict that `hsbctl status`
shows, so the numbers can never disagree; counters are the daemons' own
monotonic counts.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric, StateSetMetricFamily

from hsb.ops import runmark
from hsb.wire.conn import CONNECTIONS_DROPPED, PROTOCOL_ERRORS
from hsb.wire.framing import BAD_FIELDS, ERROR_CODES

HOST_STATES = (
    "starting",
    "serving",
    "batch_writing",
    "established",
    "waiting_for_active",
    "awaiting_batch",
    "batch_reading",
    "batch_retry",
    "active_stopped",
    "releasing",
    "handing_over",
    "stopping",
    "fenced",
)


def _g(name: str, doc: str, value: float | None, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    m = GaugeMetricFamily(name, doc, labels=list(labels or {}))
    if value is not None:
        m.add_metric(list((labels or {}).values()), float(value))
    return m


def _c(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=float(value))


def _tls(st: dict[str, Any]) -> Iterator[Metric]:
    t = st.get("tls") or {}
    if t.get("enabled") and t.get("days_left") is not None:
        yield _g("hsb_tls_cert_expiry_days", "Days until this daemon's TLS certificate expires.", t["days_left"])


# the links each daemon serves, and the codes any of them can count (a frame broken, an
# authentication refused, TLS refused): exported at 0 from the start, so that rate() and
# increase() see the first one (a series that first appears at 1 counts as no increase)
CP_LINKS = ("terminal", "host", "admin")
HOST_LINKS = ("peer", "admin")
STARTING_CODES = (*ERROR_CODES, BAD_FIELDS, "auth_required", "auth_failed", "version_mismatch", "tls_refused")


def _common(links: tuple[str, ...]) -> Iterator[Metric]:
    """What both daemons export: build info, protocol errors, dropped connections."""
    yield _build()
    yield from _proto_errors(links)


def _build() -> Metric:
    from hsb import LINK_PROTOCOL, __version__

    m = GaugeMetricFamily("hsb_build_info", "The hsb version running (value 1).", labels=["version", "link_protocol"])
    m.add_metric([__version__, str(LINK_PROTOCOL)], 1)
    return m


def _proto_errors(links: tuple[str, ...]) -> Iterator[CounterMetricFamily]:
    m = CounterMetricFamily("hsb_protocol_errors", "Protocol errors by link and code.", labels=["link", "code"])
    errors = {(link, code): 0 for link in links for code in STARTING_CODES}
    errors.update(PROTOCOL_ERRORS)
    for (link, code), n in sorted(errors.items()):
        m.add_metric([link, code], float(n))
    yield m
    d = CounterMetricFamily("hsb_connections_dropped", "Closed connections dropped with bytes unsent (peer not reading).", labels=["link"])
    dropped = dict.fromkeys(links, 0)
    dropped.update(CONNECTIONS_DROPPED)
    for link, n in sorted(dropped.items()):
        d.add_metric([link], float(n))
    yield d


class HostCollector:
    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        st = self.status()
        yield StateSetMetricFamily("hsb_role", "Role of this host.", value={r: st["role"] == r for r in ("active", "standby")})
        yield StateSetMetricFamily("hsb_state", "State of this host.", value={s: st["state"] == s for s in HOST_STATES})
        yield _g("hsb_established", "1 when hot standby is established.", 1 if st["established"] else 0)
        yield _g("hsb_serving", "1 while this host serves as the active (made active by the CP, lease valid).", 1 if st["serving"] else 0)
        lease = st.get("lease") or {}
        yield _g(
            "hsb_active_lease_valid",
            "1 while this host holds a valid lease for the active role (two at once would be two actives).",
            1 if st["role"] == "active" and lease.get("valid") else 0,
        )
        yield _g("hsb_epoch", "CP epoch this host last saw.", st["epoch"])
        age = st["peer_link"]["heartbeat_age_ms"]
        yield _g("hsb_peer_up", "1 while the peer link is up.", 1 if st["peer_link"]["up"] else 0)
        yield _g("hsb_peer_heartbeat_age_seconds", "Seconds since the last frame from the peer.", None if age is None else age / 1000)
        yield _g("hsb_ring_lag_records", "Ring records written by the active and not yet read by the standby.", st.get("ring_lag"))
        tf = st["takeover_file"]
        yield _g(
            "hsb_takeover_storage_ok",
            "1 while takeover-file I/O answers in time and succeeds (0: not responding, or a ring write or batch write or read failing).",
            1 if tf["storage"] == "ok" else 0,
        )
        fail = tf.get("ring_write_failing") or {}
        yield _g(
            "hsb_ring_write_failing_seconds",
            "Seconds the active's takeover ring writes have been failing (0: they succeed); the standby reads none of its changes meanwhile.",
            fail.get("failing_s", 0),
        )
        yield _g("hsb_ring_pending_entries", "Session changes the active has not yet written to the takeover ring.", tf.get("ring_pending", 0))
        yield _g(
            "hsb_standby_view_stale",
            "1 while the active cannot write the takeover ring (for longer than max(2 s, storage_timeout)): the standby's view of the sessions is stale.",
            1 if st.get("standby_view_stale") else 0,
        )
        t = st["terminals"]
        yield _sessions("Sessions of this host by kind.", t)
        yield _g("hsb_terminals_defined", "Own total terminal count.", t["defined"])
        yield _g("hsb_terminals_linked", "Terminals on the fast-switch link.", t["linked"])
        of = st.get("open_failed") or {}
        m = CounterMetricFamily("hsb_session_open_failed", "Session opens of this host the CP refused (open_failed), by kind.", labels=["kind"])
        for kind in ("active", "standby"):
            m.add_metric([kind], float(of.get(kind, 0)))
        yield m
        d = st["delivery"]
        yield _c("hsb_messages_processed", "Messages processed by the service.", d["processed"])
        yield _c("hsb_messages_redelivered", "Processed messages that were marked redelivered.", d["redelivered"])
        yield _c(
            "hsb_messages_repeats_marked",
            "Messages the CP handed over unmarked whose id this host had handed to its service before: marked redelivered here.",
            d.get("repeats_marked", 0),
        )
        sv = st.get("service") or {}
        yield _g(
            "hsb_service_healthy",
            "1 while the service answers (0: it reported itself unavailable; messages wait and are retried).",
            # (a stalled call holds its terminal's later messages only: the others are answered)
            0 if sv.get("state") == "failing" else 1,
        )
        yield _g(
            "hsb_service_oldest_call_seconds",
            "Seconds the oldest call of the service in progress has run (0: none); from 30 s on the service counts as stalled.",
            sv.get("oldest_call_s", 0),
        )
        yield _c("hsb_service_retries", "Messages handed to the service again because it was unavailable.", sv.get("retries", 0))
        # an error reply discards its message at the CP: an application's exception, a reply too
        # large or not encodable; the terminal is answered, the request's effect may be lost
        yield _c(
            "hsb_service_errors",
            "Messages answered with an error reply (the service raised, or its reply could not be sent): discarded at the CP.",
            d.get("errors", 0),
        )
        yield _c(
            "hsb_service_transactions_retried",
            "Messages handed to the service again at once because its transaction was rolled back (RetryTransaction: a deadlock, a serialization failure).",
            d.get("transactions_retried", 0),
        )
        cg = st.get("cp_generation") or {}
        yield _g("hsb_cp_generation_seen", "The highest CP journal generation this host has seen (two CP machines).", cg.get("seen", 0))
        yield _g(
            "hsb_cp_generation_remembered",
            "The CP journal generation kept in this host's file: a restart starts from it (below seen: its write failed).",
            cg.get("remembered"),
        )
        yield _c("hsb_cp_generation_refusals", "Connections to a CP with an older generation than seen before, refused.", cg.get("refusals", 0))
        c = st.get("counters", {})
        yield _c("hsb_failovers", "Failovers this host took over in.", c.get("failovers", 0))
        yield _c("hsb_switchovers", "Planned switchovers this host took part in.", c.get("switchovers", 0))
        yield _c(
            "hsb_two_actives_claimed",
            "Times the other host said it was active too while this one was (a host started as active beside the active; a lease overlap lasts less than a scrape).",
            c.get("two_actives_claimed", 0),
        )
        lt = st.get("last_takeover") or {}
        yield _g("hsb_host_takeover_seconds", "This host's last takeover: its switchover request to the grant.", lt.get("duration_s"))
        yield from _tls(st)
        yield from _common(HOST_LINKS)


def _cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """Per-bucket counts as Prometheus's cumulative `le` buckets."""
    buckets: list[tuple[str, float]] = []
    acc = 0
    for bound, n in zip(bounds, counts, strict=False):
        acc += n
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), acc))
    return buckets


def _histogram(name: str, doc: str, counts: list[int], total: float) -> Metric:
    from hsb.cp.journal.completion import SYNC_BUCKETS

    return HistogramMetricFamily(name, doc, buckets=_cumulative(SYNC_BUCKETS, counts), sum_value=total)


def _kind_histogram(name: str, doc: str, h: Any) -> Metric:
    from hsb.cp.switchrec import BUCKETS

    m = HistogramMetricFamily(name, doc, labels=["kind"])
    for kind, counts in h.counts.items():
        m.add_metric([kind], _cumulative(BUCKETS, counts), h.sums[kind])
    return m


def _disconnects(d: dict[str, Any] | None) -> Metric:
    m = CounterMetricFamily(
        "hsb_terminal_disconnects",
        "Terminal connections lost, by cause (closed, reset, timed_out, idle_timeout, classic_path, logoff, ...: docs/operations.md).",
        labels=["cause"],
    )
    for cause, n in sorted(((d or {}).get("total") or {}).items()):
        m.add_metric([cause], float(n))
    return m


def _sessions(doc: str, t: dict[str, Any]) -> Metric:
    m = GaugeMetricFamily("hsb_sessions", doc, labels=["kind"])
    m.add_metric(["active"], t["active_sessions"])
    m.add_metric(["standby"], t["standby_sessions"])
    return m


class CPCollector:
    def __init__(
        self, status: Callable[[], dict[str, Any]], journal: Callable[[], Any] = lambda: None, history: Callable[[], Any] = lambda: None
    ) -> None:
        self.status = status
        self.get_journal = journal  # hsb.cp.journal.Journal: its group commits as a histogram
        self.get_history = history  # hsb.cp.switchrec.History: switch durations and pauses by kind

    def collect(self) -> Iterator[Metric]:
        st = self.status()
        self.journal, self.history = self.get_journal(), self.get_history()
        yield StateSetMetricFamily("hsb_role", "Role of this daemon.", value={"cp": True})
        yield _g("hsb_cp_serving", "1 while this hsbcpd serves (0: waiting to take over, two CP machines).", 0 if st["state"] == "waiting" else 1)
        gen = st.get("generation") if st.get("generation") is not None else st.get("journal_generation", 0)
        yield _g("hsb_cp_generation", "The CP journal's generation this hsbcpd owns (waiting: the newest in the directory).", gen or 0)
        yield from _tls(st)
        sup = st.get("supervisor")
        if sup is not None:  # hsbcpd --supervise
            yield _c("hsb_cp_worker_restarts", "Times the supervising master started the CP again after it died of a signal.", sup["restarts"])
        if st["state"] == "waiting":
            yield from _common(CP_LINKS)
            return
        yield _g("hsb_epoch", "Current epoch.", st["epoch"])
        yield _g("hsb_cp_active_connected", "1 while an active host is connected.", 1 if st["state"] == "serving" else 0)
        t = st["terminals"]
        yield _g("hsb_terminals_connected", "Terminals connected.", t["connected"])
        yield _sessions("Sessions by kind.", t)
        yield _disconnects(t.get("disconnects"))
        yield _g("hsb_held_messages", "Messages acknowledged and not yet discarded.", st["held_messages"])
        yield _g(
            "hsb_terminals_backpressured", "Terminals not being read, or read for confirmations only (a held or kept bound).", t["backpressured"]
        )
        hb = st.get("held_bytes")
        if hb is not None:
            yield _g("hsb_held_bytes", "Bytes of data in held messages, all terminals.", hb["total"])
            yield _g("hsb_kept_bytes", "Bytes of data in replies kept until confirmed, all terminals.", hb.get("kept", 0))
            yield _g("hsb_held_bytes_bound", "The CP's bound on hsb_held_bytes ([cp] held_total_bytes).", hb["bound"])
            yield _g(
                "hsb_held_total_reached",
                "1 from the bound until below 90 % of it: terminals whose messages wait for the active are not read.",
                1 if hb["reached"] else 0,
            )
        c = st["counters"]
        yield _c("hsb_messages_delivered", "First deliveries to an active host.", c["delivered"])
        yield _c("hsb_messages_redelivered", "Deliveries marked redelivered.", c["redelivered"])
        yield _c(
            "hsb_messages_delivered_early",
            "Messages handed to the active while their journal records were being made durable (acknowledged once durable).",
            c.get("delivered_early", 0),
        )
        yield _c(
            "hsb_messages_resent_unknown",
            "Messages a terminal sent again after a reconnect (marked resent) that this CP did not have: delivered marked redelivered.",
            c.get("resent_unknown", 0),
        )
        yield _c("hsb_replies", "Replies (with discard) forwarded to terminals.", c["replies"])
        yield _c("hsb_failovers", "Unplanned switchovers granted.", c.get("failovers", 0))
        yield _c("hsb_switchovers", "Planned switchovers.", c.get("switchovers", 0))
        yield _c(
            "hsb_switchovers_undone",
            "Planned switchovers undone: the grantee lost before the grant took effect, the role back to the active that asked.",
            c.get("switchovers_undone", 0),
        )
        yield _c(
            "hsb_sessions_adopted", "Active sessions the active named at its registration (a CP restart) and kept: no new logon.", c.get("adopted", 0)
        )
        yield _c(
            "hsb_sessions_adopted_expired", "Adopted sessions closed: their terminal was not back within resume_window.", c.get("adopted_expired", 0)
        )
        yield _c(
            "hsb_cp_connections_gone",
            "Terminal connections not read (their held bound) found closed or reset by their terminals, and dropped.",
            c.get("connections_gone", 0),
        )
        yield _c(
            "hsb_replies_after_logoff",
            "Replies for terminals that had logged off and gone: answered at the active, sent to nobody.",
            c.get("replies_after_logoff", 0),
        )
        yield _c(
            "hsb_cp_logons_queued", "Hellos that waited in the logon queue (a connection storm), taken a slice at a time.", c.get("logons_queued", 0)
        )
        yield _c("hsb_cp_logoffs_queued", "Byes that waited in the same queue (a logoff storm).", c.get("logoffs_queued", 0))
        yield _c(
            "hsb_cp_disconnects_queued",
            "Connections lost without a bye whose session close waited in the same queue (a mass disconnect).",
            c.get("disconnects_queued", 0),
        )
        ls = st.get("last_switchover") or {}
        yield _g(
            "hsb_switch_flip_seconds", "The last switch inside the CP: grant to every session flipped.", None if not ls else ls["switch_ms"] / 1000
        )
        yield _g("hsb_paused", "1 while the operator paused automatic failover (hsbctl pause).", 1 if st.get("paused") else 0)
        if self.history is not None:
            h = self.history
            yield _kind_histogram(
                "hsb_switch_duration_seconds", "Switches by kind: the old active's last frame heard (or its release) to the grant.", h.duration
            )
            yield _kind_histogram(
                "hsb_switch_worst_pause_seconds", "Switches by kind: the worst wait, ack to reply, of the traffic in flight.", h.pause
            )
            n = CounterMetricFamily("hsb_switches", "Switches by kind (every one: a promote after a normal stop has no duration).", labels=["kind"])
            for kind, count in sorted(h.counts.items()):
                n.add_metric([kind], float(count))
            yield n
            last = GaugeMetricFamily("hsb_last_switch_timestamp_seconds", "Unix time of the last switch of each kind.", labels=["kind"])
            for kind, at in sorted(h.last_at.items()):
                last.add_metric([kind], at)
            yield last
        j = st.get("journal") or {}
        if j.get("durability") == "fsync":
            yield _g(
                "hsb_journal_healthy",
                "1 while the CP journal is written in time (0: stalled or failing; acknowledgements stop).",
                1 if j["state"] == "ok" else 0,
            )
            yield _g("hsb_journal_size_bytes", "Bytes in the CP journal's segments.", j["size_bytes"])
            yield _g("hsb_journal_segments", "Segment files of the CP journal.", j["segments"])
            yield _g("hsb_journal_outstanding_records", "Held messages and kept replies in the CP journal.", j.get("outstanding"))
            yield _c("hsb_journal_stalls", "Times a CP journal write missed its deadline.", j["stalls"])
            yield _c(
                "hsb_cp_lease_answers_withheld",
                "Host heartbeats the CP left unanswered (no lease renewed): no clean generation check of its journal for max(1 s, journal_timeout).",
                j.get("lease_answers_withheld", 0),
            )
            yield _c(
                "hsb_journal_records_written",
                "Records the CP journal's group commits made durable (per group: divide by hsb_journal_sync_seconds_count).",
                j.get("records_written", 0),
            )
            if self.journal is not None:
                yield _histogram(
                    "hsb_journal_sync_seconds",
                    "Duration of the CP journal's group commits (write + fdatasync).",
                    self.journal.sync_counts,
                    self.journal.sync_sum,
                )
        yield from _common(CP_LINKS)


FDS_INLINE = 2000  # open files counted at the scrape itself while there are fewer than this
FDS_EVERY_S = 10.0  # else a thread counts them again at most this often


def _boot_time() -> float:
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


class ProcessMetrics:
    """The standard process_* metrics, as prometheus_client's ProcessCollector has them (same
    names and help), but `process_open_fds`: listing /proc/self/fd at every scrape took 19 ms at
    19,000 sockets (about 0.1 s at 100,000) on the event loop. Past FDS_INLINE a thread counts
    them, at most every FDS_EVERY_S, and a scrape shows the last count."""

    def __init__(self) -> None:
        self._ticks = float(os.sysconf("SC_CLK_TCK"))
        self._page = resource.getpagesize()
        self._btime = _boot_time()
        self._fds = -1
        self._fds_at = 0.0
        self._counting = False

    def collect(self) -> Iterator[Metric]:
        try:
            with open("/proc/self/stat", "rb") as f:
                parts = f.read().split(b")")[-1].split()
            yield GaugeMetricFamily("process_virtual_memory_bytes", "Virtual memory size in bytes.", value=float(parts[20]))
            yield GaugeMetricFamily("process_resident_memory_bytes", "Resident memory size in bytes.", value=float(parts[21]) * self._page)
            yield GaugeMetricFamily(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
                value=float(parts[19]) / self._ticks + self._btime,
            )
            yield CounterMetricFamily(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                value=(float(parts[11]) + float(parts[12])) / self._ticks,
            )
        except (OSError, IndexError, ValueError):
            pass
        yield GaugeMetricFamily("process_open_fds", "Number of open file descriptors.", value=float(self._open_fds()))
        if runmark.MARK.unclean is not None:  # (not known: no mark, so no gauge; HsbDaemonRestarting counts it unclean)
            yield _g(
                "hsb_unclean_start",
                "1 when this process started after its previous one died (a crash, a kill, an exit with an error); 0 after a clean stop.",
                1 if runmark.MARK.unclean else 0,
            )
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        yield GaugeMetricFamily("process_max_fds", "Maximum number of open file descriptors.", value=float(soft))

    def _open_fds(self) -> int:
        if 0 <= self._fds < FDS_INLINE:
            self._count()
        elif not self._counting and time.monotonic() - self._fds_at >= FDS_EVERY_S:
            self._counting = True
            try:
                threading.Thread(target=self._count, name="hsb-fd-count", daemon=True).start()
            except RuntimeError:  # no thread to be had now: the last count, and another try next time
                self._counting = False
        return max(self._fds, 0)

    def _count(self) -> None:
        try:
            with os.scandir("/proc/self/fd") as it:
                self._fds = sum(1 for _ in it)
            self._fds_at = time.monotonic()
        except OSError:
            pass
        finally:
            self._counting = False


def registry_for(collector: Any) -> CollectorRegistry:
    """The daemon's collector plus the standard process_* metrics (resident memory, CPU, fds)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    proc = ProcessMetrics()
    proc._count()  # the first count now (at start: few files open)
    reg.register(proc)
    return reg


def render(reg: CollectorRegistry) -> tuple[int, str, bytes]:
    return 200, "text/plain; version=0.0.4; charset=utf-8", generate_latest(reg)
