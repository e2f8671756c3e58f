"""systemd readiness notification (sd_notify protocol): silent unless NOTIFY_SOCKET is set."""

from __future__ import annotations

import os
import socket


def notify(**fields: str | int) -> bool:
    """Send e.g. READY=1, STATUS=..., STOPPING=1 to systemd; False when not under systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace
    msg = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
            s.sendall(msg)
        return True
    except OSError:
        return False
