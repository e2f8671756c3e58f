"""The session opens of this host that the CP refused (`open_failed`): counted by kind, and the
last few terminals still refused kept with the CP's reason, for the host's status, its metrics
and hsbctl status. A refused active session is a terminal this host does not serve, and a log
line alone left the operator nothing to see."""

from __future__ import annotations

import time
from typing import Any

KEEP = 8  # refused terminals shown (the newest); the counts cover every refusal


class OpenFailures:
    def __init__(self) -> None:
        self.counts = {"active": 0, "standby": 0}
        self.recent: dict[str, dict[str, Any]] = {}  # terminal -> its last refusal, oldest first

    def failed(self, terminal: str, kind: str, reason: str) -> None:
        """The CP refused an open of `terminal` (`kind` "active" or "standby")."""
        kind = "standby" if kind == "standby" else "active"
        self.counts[kind] += 1
        self.recent.pop(terminal, None)  # (moved to the newest end)
        self.recent[terminal] = {"terminal": terminal, "kind": kind, "reason": reason[:200], "at": time.time()}
        while len(self.recent) > KEEP:
            del self.recent[next(iter(self.recent))]

    def opened(self, terminal: str) -> None:
        """A session of `terminal` opened at the CP since: no longer shown as refused."""
        self.recent.pop(terminal, None)

    def status(self) -> dict[str, Any]:
        return {**self.counts, "recent": list(self.recent.values())}
