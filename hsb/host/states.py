"""The states of hsbd's state machine (hsb.host.ha), per role: names only, shared by the
machine and its read-only views."""

from __future__ import annotations

# States, per role.
STARTING = "starting"
SERVING = "serving"  # active without an established standby
BATCH_WRITING = "batch_writing"
ESTABLISHED = "established"
WAITING = "waiting_for_active"  # standby: no active to follow yet
AWAITING_BATCH = "awaiting_batch"  # standby: STANDBY STARTUP sent
BATCH_READING = "batch_reading"
BATCH_RETRY = "batch_retry"  # standby: a batch read failed; asks again after a backoff
ACTIVE_STOPPED = "active_stopped"  # standby: the active ended normally (§5.3)
STOPPING = "stopping"
RELEASING = "releasing"  # planned switchover: no new deliveries
HANDING_OVER = "handing_over"
FENCED = "fenced"

__all__ = [
    "ACTIVE_STOPPED",
    "AWAITING_BATCH",
    "BATCH_READING",
    "BATCH_RETRY",
    "BATCH_WRITING",
    "ESTABLISHED",
    "FENCED",
    "HANDING_OVER",
    "RELEASING",
    "SERVING",
    "STARTING",
    "STOPPING",
    "WAITING",
]
