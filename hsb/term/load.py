"""The load generator behind `hsbterm load`: N terminals in one process, every promise checked.

`run_load()` connects every terminal (through a `Connector` that bounds the
TCP connects in flight), waits until all are welcomed (and, by default, all
have an open session), then sends at a total rate R for S seconds. Each
terminal sends on its own schedule: R/N messages a second at a random phase
of its own, so the load is smooth, not bursts across all terminals. A
terminal whose `window` of outstanding messages is full when its turn comes
sends the message as soon as a reply makes room. Sending then stops and the
run waits up to `settle` seconds for outstanding replies, logs every terminal
off, and returns a `LoadReport` with the strict verdict (`hsb.term.report`).

`marks`, a list the caller appends `(label, time.time())` to during the run
(a failover, a switchover), gets each operation's pause measured after the run
(`hsb.term.timeline`): the worst reply latency of the messages in flight at it
or sent just after it, and when every terminal was served again.

With `closed_loop=True` there is no rate: each terminal keeps `window`
messages outstanding and sends its next one as soon as a reply arrives, so
`report.reply_rate` is the capacity of whatever answers (benchmarks).

Designed to be called in-process by tests and benchmarks:

    report = await run_load(("127.0.0.1", 7000), terminals=1000, rate=5000, duration=10)
    assert report.ok, report.failures
"""

from __future__ import annotations

import asyncio
import heapq
import random
import resource
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from hsb.term.client import WELCOMED, TerminalClient
from hsb.term.connector import Connector
from hsb.term.loadstats import LoadStats
from hsb.term.net import new_id_base, parse_hostport
from hsb.term.report import LoadReport, iso
from hsb.term.verdict import Verdict, id_ranges, judge_marks

Progress = Callable[[dict[str, Any]], None]

SHUTDOWN_WAIT = 2.0  # seconds to wait for the CP to close connections after bye
NOT_BACK_POLL = 0.02  # seconds between looks for terminals still logging on again at the end
QUIET_S = 0.3  # seconds after the last answer before the logoff: a duplicate on its way still counts
TICK = 0.001  # the scheduler's resolution: sends are due at most this late
LATE_TICKS = 10  # ... or, after the loop was held up, this many ticks: what is later is skipped


def terminal_names(count: int, prefix: str = "T", start: int = 1, width: int = 5) -> list[str]:
    """Names as `[[terminal_groups]]` expands them: prefix + zero-padded number."""
    return [f"{prefix}{i:0{width}d}" for i in range(start, start + count)]


def _not_back(clients: Sequence[TerminalClient]) -> list[TerminalClient]:
    """Terminals welcomed once and not logged on now, or logged on and without the session they
    had once (not served: one with nothing more to send would fail no other check). The run is
    still going: none is stopping."""
    return [
        c
        for c in clients
        if c.welcomed_at is not None and not c.stopping and (c.state != WELCOMED or (c.session_at is not None and not c.session_open))
    ]


def _raise_nofile(terminals: int) -> str | None:
    """Raise the open-files soft limit towards what `terminals` connections want, with room to
    spare (as far as the hard limit allows); what to do when some will fail (None: none)."""
    need = terminals + 256
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < need:
            soft = need if hard == resource.RLIM_INFINITY else min(need, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    except (ValueError, OSError):  # pragma: no cover - platform dependent
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    room = soft - 16  # (this process's own: about 15)
    if soft == resource.RLIM_INFINITY or terminals <= room:
        return None
    return (
        f"this process may open {soft} files, and {terminals} terminals need about {need}: those beyond about {max(room, 0)}"
        " will fail to connect; raise the hard limit (ulimit -Hn, or prlimit) or split the terminals over several"
        " hsbterm processes (--start, --terminals)"
    )


async def _wait(event: asyncio.Event, timeout: float, stop: asyncio.Event | None, also: asyncio.Event | None = None) -> None:
    """Until `event` is set, `stop` (or `also`) is set, or `timeout` passes."""
    if event.is_set() or (stop is not None and stop.is_set()) or (also is not None and also.is_set()) or timeout <= 0:
        return
    waits = [asyncio.ensure_future(event.wait())]
    for e in (stop, also):
        if e is not None:
            waits.append(asyncio.ensure_future(e.wait()))
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def _schedule(clients: Sequence[TerminalClient], rate: float, stats: LoadStats, rng: random.Random) -> None:
    """Each terminal sends `rate / N` messages a second at a random phase of its own.

    A heap holds each terminal's next due time; every TICK the due ones send
    (or, with a full window, owe the send until a reply makes room). A loop
    that fell behind catches up on at most one period of each terminal, or
    LATE_TICKS ticks of it if that is longer.
    """
    n = len(clients)
    if n == 0 or rate <= 0:
        return
    period = n / rate
    # a terminal's sends due meanwhile go at the next tick, up to LATE_TICKS ticks late (a period,
    # if longer): a terminal sending more often than once a tick then still keeps its rate
    late = max(period, LATE_TICKS * TICK)
    t0 = time.monotonic()
    heap = [(t0 + rng.random() * period, i) for i in range(n)]
    heapq.heapify(heap)
    while True:
        now = time.monotonic()
        while heap[0][0] <= now:
            due, i = heap[0]
            c = clients[i]
            if c.can_send:
                c.submit()
            elif c.welcomed_at is not None:  # window full, writes paused, or not logged on right now: owed
                stats.defer(c, due)  # (never logged on, a refused name say: it owes nothing)
            nxt = due + period
            if nxt < now - late:  # the loop was held up: skip what is later than that
                nxt = now + rng.random() * period
            heapq.heapreplace(heap, (nxt, i))
        # never less than TICK: uvloop rounds a timer to whole milliseconds, and one below half a
        # millisecond fires at once, so waiting for a send due sooner made this loop spin a core
        # (at 2,000 msg/s, the sends are about 0.5 ms apart)
        await asyncio.sleep(max(TICK, heap[0][0] - time.monotonic()))


async def _progress_loop(stats: LoadStats, phase: list[str], t0: float, cb: Progress, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        cb(stats.snapshot(phase[0], time.monotonic() - t0))


async def _shutdown(clients: Sequence[TerminalClient], connector: Connector) -> None:
    """Log every terminal off, wait briefly for the CP to close, then drop what is left."""
    await connector.close()
    loop = asyncio.get_running_loop()
    waits: list[asyncio.Future[None]] = []
    for c in clients:
        if c.transport is not None:
            c.closed = loop.create_future()
            waits.append(c.closed)
            c.bye()
        else:
            c.close()
    if waits:
        await asyncio.wait(waits, timeout=SHUTDOWN_WAIT)
    for c in clients:
        if c.transport is not None:
            c.close(abort=True)
    await asyncio.sleep(0)  # let connection_lost callbacks run


async def run_load(
    cp: str | tuple[str, int],
    *,
    terminals: int,
    rate: float,
    duration: float,
    prefix: str = "T",
    start: int = 1,
    width: int = 5,
    names: Sequence[str] | None = None,
    window: int = 8,
    settle: float = 10.0,
    connect_concurrency: int = 256,
    connect_timeout: float = 60.0,
    wait_session: bool = True,
    payload_size: int = 0,
    id_base: int | None = None,
    progress: Progress | None = None,
    progress_interval: float = 1.0,
    stop: asyncio.Event | None = None,
    sending: asyncio.Event | None = None,
    closed_loop: bool = False,
    record_ids: bool = False,
    check_data: bool = True,
    expect_disconnects: bool | str = False,
    classic: Collection[str] = (),
    marks: list[tuple[str, float]] | None = None,
    after_s: float = 1.0,
    seed: int | None = None,
    resume: bool = True,
    workload: Any = None,
    books: dict[str, Any] | None = None,
    ssl: Any = None,
    tls_cert: str | None = None,
    source: str | None = None,
    keepalive: int = 1,
    mark_resent: bool = True,
) -> LoadReport:
    """Run `terminals` simulated terminals against the CP at `cp` and report.

    `names` overrides prefix/start/width. `stop`, when set, ends the current
    phase early (connect wait, sending, settle); it is cleared between phases
    so it can be set again. `sending` is set when the sending phase starts
    (useful to inject a failover at the right moment). `progress` is called
    every `progress_interval` seconds with a snapshot dict.

    `closed_loop=True` ignores `rate`: when sending starts every terminal fills
    its `window` (which must be >= 1) and each first reply sends that
    terminal's next message at once, so the run measures capacity
    (`report.reply_rate`) rather than keeping to a rate. `record_ids=True`
    fills `report.ids` with each terminal's acknowledged and answered id ranges.

    The verdict (`report.failures`) is strict: see `hsb.term.report`. `check_data`
    compares each reply's data with what was sent (right for `echo` and
    `journal`). Disconnects and session closures fail the run unless
    `expect_disconnects` (conventional mode, a CP restart) or the terminal is
    in `classic` (terminals without a standby session, which a failover
    disconnects by design). `marks` (label, wall time) get the pause of each
    operation measured over messages in flight at it or sent within `after_s`.

    `workload` (hsb.term.workload.LedgerWorkload) makes the messages ledger requests: its
    setup (opening and funding the accounts) is sent by the first terminal and answered
    before the timed load starts. With `books` (`{"dsn": …}` or `{"sqlite": …}`) the
    database is checked against the replies after the run (hsb.term.books); any breach is a
    failure of the run.

    `ssl` is the terminals' TLS context; `tls_cert` the path of the certificate in it, if any
    (named when the CP refuses it).
    """
    if closed_loop and window < 1:
        raise ValueError("closed_loop needs window >= 1 (the messages each terminal keeps outstanding)")
    host, port = parse_hostport(cp) if isinstance(cp, str) else cp
    names = list(names) if names is not None else terminal_names(terminals, prefix, start, width)
    short = _raise_nofile(len(names))
    if short is not None:
        print(f"hsbterm: warning: {short}", file=sys.stderr, flush=True)
    base = new_id_base() if id_base is None else id_base
    pad = "x" * max(0, payload_size)
    stats = LoadStats(len(names), f"[{host}]:{port}" if ":" in host else f"{host}:{port}", cert=tls_cert)
    stride = max(1, len(names))
    clients = [
        TerminalClient(
            nm,
            stats,
            base=base + i,
            floor=base,
            stride=stride,
            idx=i,
            window=window,
            pad=pad,
            check_data=check_data,
            resume=resume,
            workload=workload,
            keepalive=keepalive,
            mark_resent=mark_resent,
        )
        for i, nm in enumerate(names)
    ]
    rng = random.Random(seed)
    connector = Connector(host, port, concurrency=connect_concurrency, ssl=ssl, source=source)
    phase = ["connect"]
    t0 = time.monotonic()
    wall_offset = time.time() - t0
    ticker = asyncio.ensure_future(_progress_loop(stats, phase, t0, progress, progress_interval)) if progress is not None else None
    sched: asyncio.Task[None] | None = None
    sender_failed: str | None = None
    send_start = send_end = settle_end = t0
    not_back: list[TerminalClient] = []
    settled: dict[TerminalClient, bytes] | None = None  # the marks at the end of the settle time
    owed_unsent = 0
    try:
        connector.start()
        for c in clients:
            connector.attach(c)
            connector.schedule(c)
        await _wait(stats.all_sessions if wait_session else stats.all_welcomed, connect_timeout, stop, stats.gave_up)
        if stats.gave_up.is_set() and stats.welcomed == 0:
            raise _GaveUp  # refused for good before anyone logged on: no run (the report says why)
        if stop is not None:
            stop.clear()
        if workload is not None and clients:
            phase[0] = "setup"
            await _setup(clients[0], workload.setup_count, connect_timeout)

        phase[0] = "send"
        send_start = time.monotonic()
        if sending is not None:
            sending.set()
        stats.sending = True
        if closed_loop:
            stats.refill = True
            for c in clients:
                while c.can_send:
                    c.submit()
        else:
            sched = asyncio.ensure_future(_schedule(clients, rate, stats, rng))
        await _wait(asyncio.Event(), duration, stop)
        if sched is not None:
            if sched.done() and not sched.cancelled() and (exc := sched.exception()) is not None:
                sender_failed = f"{type(exc).__name__}: {exc}"
            sched.cancel()
        stats.refill = stats.sending = False
        send_end = time.monotonic()
        if stop is not None:
            stop.clear()

        phase[0] = "settle"
        settle_by = time.monotonic() + settle
        stats.owed_until = settle_by - max(1.0, settle / 4)  # the rest of the settle is for their answers
        if stats.gap.outstanding > 0:
            stats.drained.clear()
            await _wait(stats.drained, settle, stop)
        # a terminal still reconnecting (a CP restart near the end) has the rest of the settle
        # time to log on again (and send what it owed meanwhile, and have it answered); one that
        # does not is a failure of the run (`not back`)
        while (
            (_not_back(clients) or (stats.deferred and stats.owing()) or stats.gap.outstanding > 0)
            and time.monotonic() < settle_by
            and not (stop is not None and stop.is_set())
        ):
            await asyncio.sleep(NOT_BACK_POLL)
        # a quiet moment before the logoff: a second reply on its way (a failover's race, a CP
        # restart's resend) is counted here; after the bye the CP drops it as for nobody
        await _wait(asyncio.Event(), min(QUIET_S, max(0.0, settle_by - time.monotonic())), stop)
        not_back = _not_back(clients)
        settle_end = time.monotonic()
        # what each terminal had been acknowledged and answered by now: the logoff that follows
        # makes the CP hand over what it still held, and an answer that came only then is late,
        # not on time (lost and unacknowledged are judged on this)
        settled = {c: bytes(c.marks) for c in clients}
        # sends that fell due while a terminal could not send (away, its window full, or its writes
        # paused) and were never made: no message, so nothing lost, but a pause its user saw (in
        # the timeline)
        owed_unsent = sum(len(q) for q in stats.deferred.values()) + stats.owed_dropped
        stats.gap.finish(settle_end)
        stats.settled(clients)
    except _GaveUp:
        pass  # (nothing sent: the report has no phases after the connect)
    finally:
        stats.counting = stats.sending = stats.refill = False
        if sched is not None:
            sched.cancel()
        if ticker is not None:
            ticker.cancel()
        await _shutdown(clients, connector)
    if progress is not None:
        progress(stats.snapshot("done", time.monotonic() - t0))
    report = _report(clients, stats, 0.0 if closed_loop else rate, send_start, send_end, settle_end, t0, wall_offset, not_back, settled)
    report.sessions_expected = wait_session
    if stats.welcomed == 0:
        report.gave_up = stats.hopeless.cause if stats.gave_up.is_set() else None
        report.connect_error = stats.last_connect_error
    report.closed_loop = closed_loop
    report.sender_failed = sender_failed
    report.window = window
    report.check_data = check_data
    report.expect_disconnects = expect_disconnects
    classic_set = frozenset(classic)
    report.classic = len(classic_set & set(names))
    report.disconnects_standby_capable = sum(c.disconnects for c in clients if c.name not in classic_set)
    report.disconnects_cp_present = sum(c.cp_present_drops for c in clients if c.name not in classic_set)
    report.session_closed_standby_capable = sum(c.session_closed for c in clients if c.name not in classic_set)
    report.owed_unsent = owed_unsent
    report.operations = [
        {
            "label": label,
            "at": round(at, 6),
            "at_iso": iso(at),
            **stats.timeline.window(at - wall_offset, after_s),
            **stats.back_times.after(at - wall_offset),
            # welcomed terminals dropped before the operation: none was caused by it
            "disconnects_before": sum(1 for t in stats.dropped_at if t < at - wall_offset),
        }
        for label, at in (marks or [])
    ]
    report.after_s = after_s
    report.resume = resume
    report.cp_reconnects = sum(c.cp_reconnects for c in clients)
    if record_ids:
        report.ids = {c.name: id_ranges(c.marks, base=c.base, step=c.stride) for c in clients}
    if workload is not None and books is not None:
        from hsb.term.books import check_books

        try:
            b = await check_books(books, workload, clients, idempotency=books.get("idempotency", True))
            report.books = b.as_dict()
            report.books_failures = b.failures
        except Exception as exc:  # noqa: BLE001 - a check that could not run is a failed run, said plainly
            report.books = {"error": f"{type(exc).__name__}: {exc}"}
            report.books_failures = [f"the books could not be checked: {type(exc).__name__}: {exc}"]
    return report


async def background_load(cp: str | tuple[str, int], *, sending_within: float = 60.0, **kw: Any) -> tuple[asyncio.Future[LoadReport], asyncio.Event]:
    """`run_load` in a task of its own, for a demo or a test that acts while the terminals send.
    Returns once sending has started (every terminal logged on), with the event that ends the
    sending (`duration` defaults to a day: the caller stops it); awaiting the task gives the report."""
    sending, stop = asyncio.Event(), asyncio.Event()
    kw.setdefault("duration", 86400)
    task = asyncio.ensure_future(run_load(cp, sending=sending, stop=stop, **kw))
    try:
        await asyncio.wait_for(sending.wait(), sending_within)
    except BaseException:
        task.cancel()
        raise
    return task, stop


class _GaveUp(Exception):
    """No terminal was welcomed, and every answer said no retry would be (hsb.term.hopeless)."""


class SetupNotAnswered(Exception):
    """The workload's setup (the ledger's accounts) was not answered in time: no run."""


async def _setup(c: TerminalClient, count: int, timeout: float) -> None:
    """The workload's setup: `count` messages from terminal `c`, all answered, before the load."""
    for _ in range(count):
        c.submit()
    deadline = time.monotonic() + timeout
    while c.last_reply() < c.base + (count - 1) * c.stride:
        if time.monotonic() > deadline:
            raise SetupNotAnswered(f"the workload's setup was not answered in {timeout:g}s ({c.prefix} of {count} replies)")
        await asyncio.sleep(0.01)


def _report(
    clients: Sequence[TerminalClient],
    stats: LoadStats,
    rate: float,
    send_start: float,
    send_end: float,
    settle_end: float,
    t0: float,
    wall_offset: float,
    not_back: Sequence[TerminalClient] = (),
    settled: Mapping[TerminalClient, bytes] | None = None,
) -> LoadReport:
    total = Verdict()
    late = 0  # messages answered or acknowledged only after the settle time (failures)
    for c in clients:
        v = judge_marks(c.marks, base=c.base, stride=c.stride, unexpected=c.unexpected + c.early, name=c.name)
        then = settled.get(c) if settled is not None else None
        if then is not None and then != c.marks:
            # answers that came only with the logoff (after the settle time) do not count: lost and
            # unacknowledged as the settle time ended; a second reply is a duplicate whenever it came
            at = judge_marks(then, base=c.base, stride=c.stride, name=c.name)
            v.acked, v.replied, v.lost, v.unacked = at.acked, at.replied, at.lost, at.unacked
            v.lost_ids, v.unacked_ids = at.lost_ids, at.unacked_ids
            late += at.lost + at.unacked
        total.add(v)
    welcomed = [c.welcomed_at for c in clients if c.welcomed_at is not None]
    opened = [c.session_at for c in clients if c.session_at is not None]
    gap = stats.gap.longest
    sending = max(send_end - send_start, 0.0)

    def wall(t: float | None) -> float | None:
        return None if t is None else round(t + wall_offset, 6)

    return LoadReport(
        terminals=len(clients),
        late_at_logoff=late,
        rate=rate,
        duration_s=round(sending, 3),
        settle_s=round(max(settle_end - send_end, 0.0), 3),
        sent=total.sent,
        acked=total.acked,
        replied=total.replied,
        lost=total.lost,
        duplicates=total.duplicates,
        unexpected=total.unexpected,
        unacked=total.unacked,
        resent=stats.resent,
        disconnects=stats.disconnects,
        disconnect_causes=dict(stats.disconnect_causes.most_common()),
        connect_failures=stats.connect_failures,
        session_closed=stats.session_closed,
        switched=stats.switched,
        errors=dict(stats.errors),
        protocol_errors=stats.protocol_errors,
        latency_ms=stats.latency.summary_ms(),
        ack_latency_ms=stats.ack_latency.summary_ms(),
        gaps=[{"ms": round(g.seconds * 1000.0, 3), "start": wall(g.start), "end": wall(g.end)} for g in stats.gap.top],
        service_gap={
            "ms": round(gap.seconds * 1000.0, 3),
            "start": wall(gap.start),
            "end": wall(gap.end),
            "start_iso": iso(wall(gap.start)),
            "end_iso": iso(wall(gap.end)),
        },
        connect_s=round(max(welcomed) - t0, 3) if clients and len(welcomed) == len(clients) else None,
        session_open_s=round(max(opened) - t0, 3) if clients and len(opened) == len(clients) else None,
        welcomed=len(welcomed),
        sessions_opened=len(opened),
        achieved_rate=round(total.sent / sending, 1) if sending > 0 else 0.0,
        reply_rate=round(stats.replied_sending / sending, 1) if sending > 0 else 0.0,
        started_at=round(send_start + wall_offset, 6),
        lost_ids=total.lost_ids,
        duplicate_ids=total.duplicate_ids,
        per_terminal_disconnects={c.name: c.disconnects for c in clients if c.disconnects},
        unexpected_early=sum(c.early for c in clients),
        bad_data=sum(c.bad_data for c in clients),
        bad_data_ids=[f"{c.name}:{i}" for c in clients for i in c.bad_data_ids][:20],
        unacked_ids=total.unacked_ids,
        resent_ignored=sum(c.resent_ignored for c in clients),
        earlier_run_replies=sum(c.earlier_run_replies for c in clients),
        unexpected_acks=sum(c.unexpected_acks for c in clients),
        acks_forgotten=sum(c.acks_forgotten for c in clients),
        logon_drops=sum(c.logon_drops for c in clients),
        not_back=len(not_back),
        not_back_names=[c.name for c in not_back[:20]],
        workload=str(getattr(clients[0].workload, "name", "ledger")) if clients and clients[0].workload is not None else "echo",
    )
