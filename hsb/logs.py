"""structlog set-up, done once per process: JSON lines off a TTY, colours on one."""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import structlog

LEVELS = ("debug", "info", "warning", "error", "critical")
_configured = False


def _drop_secrets(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if "secret" in key and key != "secret_file":
            event[key] = "***"
    return event


# Warnings any client can have a daemon write once per connection it opens, knowing nothing (no
# secret, no certificate; a terminal's name is easily guessed): one client looping on connect,
# garbage, close had hsbcpd write 2 MB of log a second. Each such event is logged in a burst of
# up to BURST lines, then at most RATE a second; the next line written says how many were left
# out (`left_out`). The counts (hsb_protocol_errors_total) still count every one.
PER_CONNECTION = frozenset({"protocol_error", "idle_timeout", "auth_failed", "terminal_refused", "tls_refused"})
BURST, RATE = 100, 10.0


class Throttle:
    """A structlog processor: the events of PER_CONNECTION, each in a token bucket of its own."""

    def __init__(self, burst: int = BURST, rate: float = RATE, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.rate, self.clock = burst, rate, clock
        self.tokens: dict[str, float] = {}
        self.at: dict[str, float] = {}
        self.left_out: Counter[str] = Counter()

    def __call__(self, _: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        name = event.get("event")
        if name not in PER_CONNECTION:
            return event
        now = self.clock()
        tokens = min(float(self.burst), self.tokens.get(name, self.burst) + (now - self.at.get(name, now)) * self.rate)
        self.at[name] = now
        if tokens < 1.0:
            self.tokens[name] = tokens
            self.left_out[name] += 1
            raise structlog.DropEvent
        self.tokens[name] = tokens - 1.0
        if n := self.left_out.pop(name, 0):
            event["left_out"] = n  # lines of this event not written before this one (more than RATE a second)
        return event


def setup(level: str = "info", *, process: str | None = None, force_json: bool | None = None, cache: bool = False) -> None:
    """Configure structlog for this process; safe to call more than once. `cache`: each module's
    logger is built once, at its first use (the daemons, configured once: a filtered-out debug
    call then costs well under a microsecond instead of ~7 µs, which per-terminal events at a
    mass logon or logoff add up to). Off where logging is reconfigured later (tests)."""
    global _configured
    lvl = getattr(logging, level.upper())
    as_json = force_json if force_json is not None else not sys.stderr.isatty()
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        Throttle(),
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secrets,
    ]
    if process:
        processors.insert(0, _bind_process(process))
    if as_json:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=True)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        # one write per line, its newline included: print() writes the newline apart, and with
        # unbuffered output (PYTHONUNBUFFERED) hsbcpd's master and worker, sharing one log file,
        # then interleaved each other's lines (two JSON lines run together, both events lost)
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=cache,
    )
    _configured = True


def _bind_process(name: str) -> Any:
    def proc(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("proc", name)
        return event

    return proc
