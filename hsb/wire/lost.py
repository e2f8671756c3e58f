"""Why a connection ended, in one word: for logs, metric labels and reports, on both sides of
the terminal link (the CP's hsb.cp.drops, hsbterm's report)."""

from __future__ import annotations

import errno
import ssl


def lost_why(exc: BaseException | None) -> str:
    """Why a connection ended, from what its `connection_lost` was given: `closed` (the peer's
    orderly end, or its process died and its kernel closed it), `reset`, `timed_out` (TCP
    keepalive or retransmissions gave up: the peer or the path went silent), `tls_error`, or
    the error's errno name (`ehostunreach`). A word for logs, metrics labels and reports."""
    if exc is None:
        return "closed"
    if isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
        return "reset"
    if isinstance(exc, TimeoutError):
        return "timed_out"
    if isinstance(exc, ssl.SSLError):
        return "tls_error"
    if isinstance(exc, OSError) and exc.errno:
        return errno.errorcode.get(exc.errno, "oserror").lower()
    return type(exc).__name__.lower()
