"""What the CP knows about each terminal: connection, dual sessions, held messages.

Plain data with __slots__ (10,000+ of these live at once). The behaviour that
changes it lives in `hsb.cp.core`.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from hsb.terminals import TerminalDef

if TYPE_CHECKING:
    from hsb.cp.host_link import HostProtocol
    from hsb.cp.terminal_link import TerminalProtocol


class Session:
    """A session of one host to one terminal: `kind` is "active" or "standby"."""

    __slots__ = ("host", "kind", "attrs", "epoch")

    def __init__(self, host: "HostProtocol", kind: str, attrs: dict[str, Any], epoch: int) -> None:
        self.host = host
        self.kind = kind
        self.attrs = attrs
        self.epoch = epoch


class Held:
    """A terminal message acknowledged to the terminal and not yet discarded by the active.

    `delivered_epoch` is the epoch of the active it was last delivered to (0: never),
    so a message is re-delivered, marked so, to each new active exactly once. `t` is
    when it was acknowledged (monotonic): a switch's worst pause is measured from it.
    """

    __slots__ = ("id", "data", "delivered_epoch", "redelivered", "t")

    def __init__(self, mid: int, data: Any, t: float) -> None:
        self.id = mid
        self.data = data
        self.delivered_epoch = 0
        self.redelivered = False
        self.t = t


class Term:
    __slots__ = ("name", "defn", "conn", "active", "standby", "held", "last_acked", "outbox", "paused", "leaving", "notice")

    def __init__(self, defn: TerminalDef) -> None:
        self.name = defn.name
        self.defn = defn
        self.conn: "TerminalProtocol | None" = None
        self.active: Session | None = None
        self.standby: Session | None = None
        self.held: dict[int, Held] = {}  # insertion order = id order
        self.last_acked = 0
        self.outbox: deque[dict[str, Any]] | None = None  # replies owed while disconnected
        self.paused = False
        self.leaving = False
        self.notice: bytes | None = None  # a switch notice owed to the terminal (CP._grant)
