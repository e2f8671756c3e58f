"""A stand-in for a module's structlog logger that keeps every event it is given: for tests that
assert on what was logged. (structlog's capture_logs sees nothing from a logger cached before it,
which a daemon set up earlier in the same test process makes happen.)"""

from __future__ import annotations

from typing import Any


class RecordingLog:
    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def _log(self, level: str) -> Any:
        def log(event: str, **kw: Any) -> None:
            self.entries.append({"event": event, "level": level, **kw})

        return log

    def __getattr__(self, level: str) -> Any:  # debug, info, warning, error, exception, ...
        return self._log(level)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["event"] == name]
