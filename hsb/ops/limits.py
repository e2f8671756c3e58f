"""The open-files limit: each terminal is one socket in hsbcpd, and one process may hold only
as many as RLIMIT_NOFILE allows. The daemons raise their soft limit to the hard one at start
(systemd's `LimitNOFILE` sets the hard one) and say plainly when the configured terminals do
not fit."""

from __future__ import annotations

import resource
import time

import structlog

log = structlog.get_logger("hsb.ops")

SPARE = 256  # descriptors besides the terminals: hosts, admin, journal, logs, the loop's own
OWN = 32  # of those, what a CP holds before any terminal connects (measured 21-26)


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
    room = max(soft - reserve(soft) - OWN, 0)  # (about as many as get in)
    fate = f"terminals beyond about {room} will be refused" if terminals > room else f"only about {room - terminals} to spare"
    return (
        f"{terminals} terminals need about {terminals + SPARE} open files, the limit is {soft}: {fate};"
        f" raise it (systemd: LimitNOFILE={max(2 * terminals, 65536)} in hsbcpd.service; a shell: ulimit -n),"
        " or split the terminals over several CPs (docs/operations.md §20)"
    )


SOMAXCONN = "/proc/sys/net/core/somaxconn"
BACKLOG_MIN = 4096


def listen_backlog(terminals: int) -> int:
    """The terminal port's listen backlog: room for every terminal connecting at once (a CP
    restart or takeover brings all of them back within a second). The kernel caps it at
    net.core.somaxconn, which `accept_queue_fits` checks."""
    return max(BACKLOG_MIN, terminals + SPARE)


def somaxconn(path: str = SOMAXCONN) -> int:
    """net.core.somaxconn of this network namespace (-1: unknown, not Linux)."""
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return -1


def accept_queue_fits(terminals: int, cap: int) -> str | None:
    """None if `terminals` connecting at once fit the accept queue, else what to do about it. A
    connection that finds the queue full is dropped by the kernel and its SYN retried only a
    second later (then 3, 7 s): in a logon storm those terminals come back seconds late."""
    if cap < 0 or terminals + SPARE <= cap:
        return None
    want = 1 << max(terminals + SPARE, 1).bit_length()
    return (
        f"net.core.somaxconn is {cap}, below the {terminals} terminals plus {SPARE} spare: when they all reconnect at once (a CP"
        f" restart or takeover) the accept queue overflows and those beyond it wait a second or more for TCP to"
        f" retry; raise it (sysctl -w net.core.somaxconn={want}, and a file in /etc/sysctl.d/)"
    )


def check_warnings(terminals: int) -> list[str]:
    """What a start with `terminals` would warn of this machine (open_files_too_few,
    accept_queue_too_small), said beforehand by --check-config: the open-files limit the start
    raises its own to (this process's hard one; under systemd the unit's LimitNOFILE instead)
    and net.core.somaxconn."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    fit = terminals_fit(terminals, -1 if hard == resource.RLIM_INFINITY else hard)
    queue = accept_queue_fits(terminals, somaxconn())
    return [
        *([f"{fit} (this shell's hard limit; the service has its unit's LimitNOFILE)"] if fit else []),
        *([queue] if queue else []),
    ]


STORM_TERMINALS = 10_000  # above this many terminals per CP, storms want a longer host_timeout
STORM_HOST_TIMEOUT_S = 2.0


def storm_timing(terminals: int, host_timeout: float) -> str | None:
    """None unless a CP with this many terminals has a host_timeout that a storm of all of
    them connecting or logging off at once can approach: the turn of hsbcpd's event loop that
    reads them stops it for a while, and the hosts hear nothing meanwhile (docs/operations.md,
    the connection storm)."""
    if terminals <= STORM_TERMINALS or host_timeout >= STORM_HOST_TIMEOUT_S:
        return None
    return (
        f"{terminals} terminals with cp.host_timeout {host_timeout:g} s: when they all connect or log off at once, the turn"
        f" of hsbcpd's loop that reads them can last 0.4-0.6 s on a small machine (19,000 on 2 cores), and the hosts,"
        f" hearing nothing meanwhile, drop their CP link past their heartbeat_timeout (default 0.5 s) and register again;"
        f" above {STORM_TERMINALS:,} terminals set heartbeat_timeout = {STORM_HOST_TIMEOUT_S:g} on both hosts and"
        f" cp.host_timeout = {STORM_HOST_TIMEOUT_S:g} here (docs/operations.md §20, a connection storm)"
    )


# Descriptors a daemon keeps free for itself: its journal's segments and directory, the links
# it makes (a host's to the CP and its peer), its logs. A client that opens connections and
# leaves them idle (each held until its hello, auth or HTTP request times out) could otherwise
# take every descriptor under the limit: the CP's journal could not be written and every
# acknowledgement stopped, for the terminals already logged on too.
FD_RESERVE = 64
REFUSED_LOG_S = 10.0  # one line at most this often while connections are refused, with the count


class _Refusals:
    """Connections refused for want of descriptors, and when that was last said."""

    said_at = -REFUSED_LOG_S

    def __init__(self) -> None:
        self.links: dict[str, int] = {}  # since the last line, by link: the line names every one

    @property
    def count(self) -> int:
        """Refused since the last line, all links."""
        return sum(self.links.values())


REFUSALS = _Refusals()


# In a daemon that serves terminals (hsbcpd), the links that run the pair, a few at a time: the
# hosts', hsbctl's (admin), the health check's and the metrics' (http). Terminals, by the
# thousand, must leave the whole reserve free; these only half of it, so terminals beyond the
# limit can never keep the hosts from registering, hsbctl from asking or keepalived's health
# check from being answered. In hsbd (no terminal links) every link leaves the whole reserve:
# a takeover still opens its service's database pool, the role hook's pipes and its links
CONTROL_LINKS = frozenset({"host", "peer", "admin", "http"})


class _Tiers:
    on = False  # set by hsbcpd at its start (serves_terminals)


TIERS = _Tiers()


def serves_terminals() -> None:
    """This process serves terminals: the pair's own links may use half of the reserve."""
    TIERS.on = True


def reserve(soft: int, link: str = "terminal") -> int:
    """The descriptors kept free under a limit of `soft` when `link` connects: FD_RESERVE, but
    never more than a quarter of the limit (a limit of 64 or less must still let connections
    in); half of that for the pair's own links (CONTROL_LINKS) in a process serving terminals."""
    kept = min(FD_RESERVE, soft // 4)
    return kept // 2 if TIERS.on and link in CONTROL_LINKS else kept


def nofile_soft() -> int:
    """The soft open-files limit (-1: unlimited), read each time (prlimit may change it)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return -1 if soft == resource.RLIM_INFINITY else soft


def fd_watch(open_now: int, soft: int | None = None) -> bool:
    """Whether a connection just accepted must have its descriptor checked (`fd_room`): once the
    connections open (`open_now`, counted by the caller) reach half the limit. Below it the
    reserve is out of reach (a daemon's other descriptors are some hundreds: SPARE), and the check
    is not free: asking the transport for its socket on every connection cost the CP about 8 % more
    CPU in a reconnect storm of 10,000 terminals (measured side by side, BENCHMARKS.md, session 63)."""
    soft = nofile_soft() if soft is None else soft
    return soft >= 0 and open_now >= soft // 2


def fd_room(fd: int, link: str, peer: str, soft: int | None = None) -> bool:
    """Whether a connection just accepted as descriptor `fd` may stay: False (said in one line
    at most every REFUSED_LOG_S, with the count) when it leaves fewer than `reserve(soft, link)` free.
    Descriptors are handed out lowest first, so `fd` is the lowest one that was free: every one
    below it is taken, and at most limit - fd remain."""
    soft = nofile_soft() if soft is None else soft
    if soft < 0 or fd < soft - reserve(soft, link):
        return True
    REFUSALS.links[link] = REFUSALS.links.get(link, 0) + 1
    now = time.monotonic()
    if now - REFUSALS.said_at >= REFUSED_LOG_S:
        REFUSALS.said_at = now
        log.warning(
            "connection_refused",
            link=link,
            peer=peer,
            refused=REFUSALS.count,
            links=dict(REFUSALS.links),
            reason=(
                f"{fd + 1} of the {soft} open files allowed are in use: new connections are closed at once"
                f" ({REFUSALS.count} since the last such line: {', '.join(f'{k} {v}' for k, v in REFUSALS.links.items())}), the last {reserve(soft, link)} kept for"
                + (
                    " the journal"
                    if TIERS.on and link in CONTROL_LINKS
                    else " the hosts', hsbctl's and the health check's links and the journal"
                    if TIERS.on
                    else " the journal and the links this daemon makes"
                )
                + "; a client holding many connections open (ss -tn state established"
                " names it), or too low a limit (systemd: LimitNOFILE; a shell: ulimit -n)"
            ),
        )
        REFUSALS.links.clear()
    return False
