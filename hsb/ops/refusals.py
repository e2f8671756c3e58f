"""Saying a refusal once: a link refused for a wrong secret or version is tried again slowly,
and logged the first time and then once a minute with a count, not at every attempt."""

from __future__ import annotations

import time
from typing import Any

import structlog

log = structlog.get_logger("hsb.ops")

EVERY_S = 60.0


class RefusalLog:
    def __init__(
        self, event: str, hint: str = "tried again every 5 s; fix the secret or install the same hsb version on both sides", **fields: Any
    ) -> None:
        self.event = event
        self.hint = hint
        self.fields = fields
        self.last: str | None = None
        self.count = 0
        self.logged_at = 0.0

    def seen(self, why: str) -> None:
        self.count += 1
        now = time.monotonic()
        if why != self.last or now - self.logged_at >= EVERY_S:
            log.error(
                self.event,
                reason=why,
                refusals=self.count,
                **self.fields,
                msg=self.hint,
            )
            self.last, self.logged_at = why, now

    def clear(self) -> None:
        if self.count:
            log.info(self.event + "_cleared", refusals=self.count, **self.fields)
        self.last, self.count = None, 0
