"""The events a simulated terminal reports (hsb.term.client.TerminalClient calls them): the
load's bookkeeping, the interactive session's printing and the tests each implement the ones
they need; every method is a no-op here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hsb.term.client import TerminalClient
    from hsb.wire.framing import ProtocolError


class Listener:
    """Receives a terminal's events; every method is a no-op here."""

    def on_sent(self, c: TerminalClient, msg_id: int, now: float) -> None:
        """A new message (not a resend) was recorded as outstanding."""

    def on_resent(self, c: TerminalClient, count: int, first: int = 0) -> None:
        """`count` unacknowledged messages were sent again after a welcome; `first` of them had
        never been written to a connection (submitted before the logon, or while away)."""

    def on_writable(self, c: TerminalClient) -> None:
        """Its connection takes writes again (the CP reads again): it can send."""

    def on_welcome(self, c: TerminalClient, first: bool) -> None:
        """Logged on; `first` is True for this terminal's first welcome ever."""

    def on_session(self, c: TerminalClient, state: str, epoch: int, reason: str | None, first_open: bool) -> None:
        """A session event; `first_open` is True for this terminal's first open session."""

    def on_ack(self, c: TerminalClient, msg_id: int, first: bool) -> None:
        """`first` is False for a re-acknowledgement (after a resend) or an ack of an unknown id."""

    def on_reply(self, c: TerminalClient, msg_id: int, data: Any, latency: float | None, kind: str) -> None:
        """`kind` is "first", "early" (a first reply that came before the message's ack),
        "duplicate" or "unexpected" (an id never sent); `latency` (s) is set for the first reply."""

    def on_switched(self, c: TerminalClient, epoch: int) -> None:
        pass

    def on_error(self, c: TerminalClient, code: str, msg: str) -> None:
        """The CP sent an error frame (it closes the connection next)."""

    def on_protocol_error(self, c: TerminalClient, exc: ProtocolError) -> None:
        """The CP sent something that breaks the protocol; the terminal drops the connection."""

    def on_disconnect(self, c: TerminalClient, exc: Exception | None, retry_in: float, welcomed: bool) -> None:
        """A connection dropped (`welcomed`: after logging on, else a refusal or a drop before
        the welcome); a reconnect follows in `retry_in` seconds."""

    def on_connect_failed(self, c: TerminalClient, exc: BaseException, retry_in: float) -> None:
        pass
