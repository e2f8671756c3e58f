"""Why terminals' connections ended: counted by cause, said once a second, shown in status.

A terminal that loses its connection reconnects and resumes, so one drop is a debug line. Many
drops are not: a lossy line to a terminal room, a NAT or firewall timing connections out, a
terminal program that closes its connection. An operator who sees `hsb_terminals_connected`
fall needs the cause, not 10,000 log lines: each drop is counted by its cause (the metric
`hsb_terminal_disconnects`), the last minute's are in status (`hsbctl status`), and one
`terminals_disconnected` line a second at most sums up the drops since the last.

The causes: `closed` (the terminal ended its connection, or its process died), `reset`,
`timed_out` (TCP keepalive gave up: the terminal or the line to it went silent), an error
code the CP closed it with (`idle_timeout`, `unconfirmed_replies`, a protocol error's code),
`classic_path` (a switch found no standby session for it: it logs on again at the new active),
`closed_unread` (closed or reset while the CP did not read it, at its bound), `closed_by_cp`
(the CP closed it otherwise: it stopped), and `logoff` (its bye: not a fault, and not in the
log line or the status's count).
"""

from __future__ import annotations

import collections
import time
from typing import Any

import structlog

log = structlog.get_logger("hsb.cp")

RECENT_S = 60.0  # the window of status's `recent`
RECENT_MAX = 200_000  # drops remembered for it at most (a CP restart's 100,000 terminals fit)
SAY_EVERY_S = 1.0
NORMAL = "logoff"  # a cause that is no fault


class Drops:
    """The terminal connections this CP lost, by cause."""

    def __init__(self) -> None:
        self.total: collections.Counter[str] = collections.Counter()
        self._recent: collections.deque[tuple[float, str]] = collections.deque(maxlen=RECENT_MAX)
        self._unsaid: collections.Counter[str] = collections.Counter()
        self._said_at = 0.0

    def add(self, why: str, now: float | None = None) -> None:
        self.total[why] += 1
        if why != NORMAL:
            self._recent.append((time.monotonic() if now is None else now, why))
            self._unsaid[why] += 1

    def recent(self, now: float | None = None) -> dict[str, int]:
        """The drops of the last RECENT_S seconds (logoffs aside), by cause."""
        now = time.monotonic() if now is None else now
        while self._recent and self._recent[0][0] < now - RECENT_S:
            self._recent.popleft()
        return dict(collections.Counter(why for _, why in self._recent))

    def tick(self, now: float, connected: int) -> None:
        """Once a second at most: one line for the drops since the last (logoffs aside)."""
        if not self._unsaid or now - self._said_at < SAY_EVERY_S:
            return
        self._said_at = now
        n, why = sum(self._unsaid.values()), dict(self._unsaid.most_common())
        self._unsaid.clear()
        log.info("terminals_disconnected", n=n, why=why, connected=connected, msg=hint(why))

    def status(self, now: float | None = None) -> dict[str, Any]:
        return {"total": dict(self.total), "recent": self.recent(now), "recent_s": RECENT_S}


def hint(why: dict[str, int]) -> str:
    """What the commonest cause usually means (docs/operations.md, terminals that drop)."""
    top = max(why, key=lambda k: why[k]) if why else ""
    return {
        "timed_out": "TCP keepalive gave up on them: the terminals or the lines to them went silent ([cp] terminal_keepalive)",
        "reset": "reset by the terminals or by something on the way (a NAT, a firewall, a load balancer)",
        "closed": "closed by the terminals (a restart of the terminal program, a logoff without bye)",
        "idle_timeout": "nothing received from them for [cp] terminal_idle_timeout",
        "classic_path": "no standby session at the switch: they log on again at the new active",
        "closed_unread": "closed or reset by the terminals while the CP was not reading them (their held bound)",
    }.get(top, "the terminals reconnect and resume; see their own logs")
