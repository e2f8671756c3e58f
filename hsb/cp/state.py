"""What the CP knows about each terminal: connection, dual sessions, held messages.

Plain data with __slots__ (10,000+ of these live at once). The behaviour that
changes it lives in `hsb.cp.core`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hsb.terminals import TerminalSpec

if TYPE_CHECKING:
    from hsb.cp.host_link import HostProtocol
    from hsb.cp.terminal_link import TerminalProtocol


class Session:
    """A session of one host to one terminal. Whether it is the active or the standby session
    is where the terminal holds it (`Term.active`, `Term.standby`): a flip moves it over."""

    __slots__ = ("host", "attrs", "stale")

    def __init__(self, host: HostProtocol, attrs: dict[str, Any]) -> None:
        self.host = host
        self.attrs = attrs
        # a standby session of a run that has logged off since (its bye came while its standby
        # host had not yet closed it): never switched to a later run of the terminal
        self.stale = False


class Held:
    """A terminal message acknowledged to the terminal and not yet discarded by the active.

    `delivered_epoch` is the epoch of the active it was last delivered to (0: never),
    so a message is re-delivered, marked so, to each new active exactly once. `t` is
    when it was acknowledged (monotonic): a switch's worst pause is measured from it.
    """

    __slots__ = (
        "id",
        "data",
        "delivered_epoch",
        "redelivered",
        "t",
        "seg",
        "replying",
        "recovered",
        "wire",
        "early",
        "prev",
        "made_here",
        "discarding",
    )

    def __init__(self, mid: int, data: Any, t: float, seg: int = 0) -> None:
        self.id = mid
        self.data = data
        self.delivered_epoch = 0  # -1: recovered from the journal (maybe delivered before the crash)
        self.redelivered = False
        self.t = t
        self.seg = seg  # the journal segment its record sits in (hsb.cp.journal)
        self.replying = False  # its reply is being made durable: a second one is ignored
        self.recovered = False  # restored from the journal: the terminal may hold its reply already
        self.wire: bytes | None = None  # its deliver_batch item, encoded once (hsb.cp.deliver)
        # delivered before its record was durable, its reply came first: the reply's data, acted
        # on once the record is durable (the ack always goes before the reply)
        self.early: Any = None
        self.prev = 0  # the id of the terminal's message held before it when it came (0: none)
        self.made_here = False  # answered by the CP's own error (too large for the active's frames): no host served it
        # answered, its discard ("d") on the way: its reply goes out only once that is durable
        # (kept then if its terminal is away): no confirmation may pass it until then
        self.discarding = False


class Kept:
    """A reply kept for a resuming terminal until it confirms it (docs/protocol.md §1)."""

    __slots__ = ("id", "data", "seg", "sent", "at")

    def __init__(self, mid: int, data: Any, seg: int, sent: bool = False) -> None:
        self.id = mid
        self.data = data
        self.seg = seg
        # written to a connection of its terminal by this CP process (one recovered from the
        # journal was not): until it is, no claim of the terminal's lets the CP forget it
        self.sent = sent
        # the terminal's reply frame it was last written as (Term.reply_frames then): a confirm
        # whose `seen` does not reach it was written before the reply got there
        self.at = 0


class Counts:
    """What `status` reports of all terminals together, kept as it changes: a walk over every
    terminal at each status call (each /health probe) took tens of ms at 100,000."""

    __slots__ = ("active", "standby", "held", "kept", "paused", "held_data", "kept_data", "paused_terms")

    def __init__(self) -> None:
        self.active = 0  # terminals with an active session
        self.standby = 0  # terminals with a standby session
        self.held = 0  # held messages
        self.kept = 0  # replies kept until confirmed
        self.paused = 0  # terminals back-pressured: not read (held bound), or read for confirmations only (kept replies)
        self.held_data = 0  # bytes of data of the held messages (the CP's own bound, held_total_bytes)
        self.kept_data = 0  # ... and of the kept replies
        self.paused_terms: set[Term] = set()  # the paused ones (hsb.cp.core.CP.sweep_unread asks after their peers)


class Term:
    __slots__ = (
        "name",
        "defn",
        "conn",
        "_active",
        "_standby",
        "counts",
        "held",
        "held_bytes",
        "kept_bytes",
        "last_acked",
        "durable_acked",
        "handed_floor",
        "deliv_upto",
        "deliv_epoch",
        "_paused",
        "leaving",
        "bye_unannounced",
        "logoff_upto",
        "bye_upto",
        "notice",
        "resuming",
        "replies",
        "confirmed",
        "flight",
        "flight_epoch",
        "flipped",
        "reply_frames",
    )

    def __init__(self, defn: TerminalSpec, counts: Counts | None = None) -> None:
        self.name = defn.name
        self.defn = defn
        self.counts = counts if counts is not None else Counts()  # the CP's, shared by all its terminals
        self.conn: TerminalProtocol | None = None
        self._active: Session | None = None
        self._standby: Session | None = None
        # held and replies: whoever adds or removes an entry adjusts counts.held / counts.kept, and
        # whoever changes held_bytes / kept_bytes adjusts counts.held_data / counts.kept_data
        self.held: dict[int, Held] = {}  # insertion order = id order
        self.held_bytes = 0  # the data of `held`, and of `replies` below (the bound in bytes)
        self.kept_bytes = 0
        self.last_acked = 0  # highest id accepted
        self.durable_acked = 0  # highest id whose journal record is durable (acknowledged)
        # the highest id that may have reached a service before: named by the active at adoption
        # (what it handed to its service), or sent again by the terminal (`resent`) and new here.
        # A message up to it, delivered for the first time here, is marked redelivered (delivered
        # early, its record died with the CP, and its terminal sent it again)
        self.handed_floor = 0
        # its delivery mark: every held message up to deliv_upto went to the active of deliv_epoch
        # (all paths deliver in id order), so early delivery needs no walk of what is held
        self.deliv_upto = 0
        self.deliv_epoch = 0
        self._paused = False
        self.leaving = False
        # its last run logged off with no session here to close (a CP restarted, its active not
        # yet naming its sessions): a session of that run the active names later is closed as a
        # logoff, never adopted for a later run
        self.bye_unannounced = False
        # its last bye's highest acknowledged id (journalled, "o"), and the same once the connection
        # that said it is gone: replies up to logoff_upto are told nobody, not even a later logon
        self.bye_upto = 0
        self.logoff_upto = 0
        self.notice: bytes | None = None  # a switch notice owed to the terminal (CP._grant)
        self.resuming = False  # said last_reply in its hello: its replies are kept until confirmed
        self.replies: dict[int, Kept] = {}  # kept replies, id order
        self.confirmed = 0  # highest id the terminal confirmed holding every reply up to
        # messages held at the grant of epoch `flight_epoch` and not yet answered (hsb.cp.switchrec)
        self.flight = 0
        self.flight_epoch = 0
        self.flipped = 0  # the epoch whose grant's flip has reached it (hsb.cp.flip): not flipped twice
        self.reply_frames = 0  # reply frames written to its connections by this CP process (a `confirm`'s `seen`)

    @property
    def active(self) -> Session | None:
        return self._active

    @active.setter
    def active(self, s: Session | None) -> None:
        if (s is None) != (self._active is None):
            self.counts.active += 1 if s is not None else -1
        self._active = s

    @property
    def standby(self) -> Session | None:
        return self._standby

    @standby.setter
    def standby(self, s: Session | None) -> None:
        if (s is None) != (self._standby is None):
            self.counts.standby += 1 if s is not None else -1
        self._standby = s

    @property
    def paused(self) -> bool:
        return self._paused

    @paused.setter
    def paused(self, p: bool) -> None:
        if p != self._paused:
            self.counts.paused += 1 if p else -1
            if p:
                self.counts.paused_terms.add(self)
            else:
                self.counts.paused_terms.discard(self)
        self._paused = p

    def delivered(self, mid: int, epoch: int) -> None:
        """Its message `mid` went to the active of `epoch` (every path goes in id order: the mark)."""
        if self.deliv_epoch != epoch:
            self.deliv_epoch, self.deliv_upto = epoch, mid
        elif mid > self.deliv_upto:
            self.deliv_upto = mid

    def forget(self) -> None:
        """Removed from the CP's table (only when it holds no message and keeps no reply): take
        its sessions out of the totals."""
        self.active = self.standby = None
        self.paused = False
