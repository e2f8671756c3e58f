"""The open-files limit: each terminal is one socket in hsbcpd, and one process may hold only
as many as RLIMIT_NOFILE allows. The daemons raise their soft limit to the hard one at start
(systemd's `LimitNOFILE` sets the hard one) and say plainly when the configured terminals do
not fit."""

from __future__ import annotations

import resource

SPARE = 256  # descriptors besides the terminals: hosts, admin, journal, logs, the loop's own


def raise_nofile() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard one; (soft, hard) afterwards (-1: unlimited)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    except (ValueError, OSError):  # pragma: no cover - platform dependent
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    inf = resource.RLIM_INFINITY
    return (-1 if soft == inf else soft), (-1 if hard == inf else hard)


def terminals_fit(terminals: int, soft: int) -> str | None:
    """None if `terminals` connections fit under the limit, else what to do about it."""
    if soft < 0 or terminals + SPARE <= soft:
        return None
    return (
        f"{terminals} terminals need about {terminals + SPARE} open files, the limit is {soft}: terminals beyond"
        f" about {max(soft - SPARE, 0)} will be refused; raise it (systemd: LimitNOFILE={max(2 * terminals, 65536)} in"
        " hsbcpd.service; a shell: ulimit -n), or split the terminals over several CPs (docs/operations.md)"
    )
