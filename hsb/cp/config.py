"""hsbcpd settings: the declarative schema of the CP's TOML config (see README, config reference)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from hsb.config import Addr, ConfigPath, OptAddr, OptConfigPath, Partial, Rule, Ruled, Strict, TLSSection, address_ip, listen_clashes, parse_addr
from hsb.terminals import TerminalDef, TerminalGroup, TerminalSpec, raw_table_problems, sent_attrs_problem, table_problems
from hsb.wire.framing import DEFAULT_MAX_FRAME, LOGIN_MAX

# The CP grants the active role to another host only once the old active's lease has surely
# run out: host_timeout must exceed host_lease by at least this much (scheduling delay between
# a host checking its lease and acting on it, and clock rate; docs/design.md, the lease rule).
LEASE_MARGIN = 0.1
LEASE_MIN = 0.01  # the least host_lease the schema takes
HOST_TIMEOUT_MAX = 3600.0  # the most host_timeout the schema takes
LISTEN_KEYS = ("terminal_listen", "host_listen", "admin_listen", "http_listen")  # [cp]'s listening addresses


def _on_wake_journal(takeover: str, durability: str) -> list[str]:
    if takeover == "on_wake" and durability == "none":
        return ['takeover = "on_wake" needs the journal (durability = "fsync"): the CP taking over reads it']
    return []


def _on_wake_address(takeover: str, terminal_listen: str) -> list[str]:
    if takeover == "on_wake" and ((ip := address_ip(terminal_listen)) is None or ip.is_unspecified):
        host = parse_addr(terminal_listen)[0]
        return [
            f'takeover = "on_wake" needs terminal_listen on the virtual address keepalived moves, not {host!r}:'
            " a wildcard or a name is held on every machine, so the CP could take over where the address is not"
        ]
    return []


def _secs(x: float) -> str:
    """A number of seconds as the config would write it: short (0.35), but never rounded (a
    :g of 1234.56789 said 1234.57)."""
    short = f"{x:g}"
    return short if float(short) == x else repr(x)


def _plus(a: float, b: float) -> str:
    """a + b as decimals, exactly (0.3 - 0.1 is 0.2, not 0.19999999999999998 nor, rounded, above it)."""
    return format((Decimal(repr(a)) + Decimal(repr(b))).normalize(), "f")


def _lease_rule(host_timeout: float, host_lease: float) -> list[str]:
    if CPSection.lease_allows(host_timeout, host_lease):
        return []
    # each fix only where the schema's bounds allow it: a lease of LEASE_MIN fits below
    # host_timeout; host_timeout can go above host_lease + the margin (HOST_TIMEOUT_MAX)
    below, above = _plus(host_timeout, -LEASE_MARGIN), _plus(host_lease, LEASE_MARGIN)
    lower = CPSection.lease_allows(host_timeout, LEASE_MIN)
    higher = CPSection.lease_allows(HOST_TIMEOUT_MAX, host_lease)
    if lower and higher:
        fix = f"lower cp.host_lease below {below} or raise cp.host_timeout above {above}"
    elif lower:
        fix = f"lower cp.host_lease below {below} (cp.host_timeout is at most {HOST_TIMEOUT_MAX:g})"
    elif higher:
        fix = f"raise cp.host_timeout above {above} (no lease of {LEASE_MIN:g} s or more fits below {_secs(host_timeout)})"
    else:
        fix = f"raise cp.host_timeout and lower cp.host_lease so that host_lease + {LEASE_MARGIN:g} < host_timeout (the defaults: 0.5 and 0.35)"
    return [
        f"host_lease ({_secs(host_lease)} s) + margin ({LEASE_MARGIN:g} s) must be less than host_timeout"
        f" ({_secs(host_timeout)} s): the old active's lease must surely run out before the CP gives its"
        f" role to another host; {fix}"
    ]


class CPSection(Ruled):
    """`[cp]`; its rules across keys (RULES) checked at once, each one line."""

    name: str = Field(default="cp", min_length=1, max_length=64)  # (as a host's: its certificate names it)
    terminal_listen: Addr = "127.0.0.1:7000"
    host_listen: Addr = "127.0.0.1:7001"
    admin_listen: Addr = "127.0.0.1:7002"
    http_listen: OptAddr = ""
    secret_file: ConfigPath
    held_bound: int = Field(default=256, ge=1, le=1_000_000)
    held_bytes: int = Field(default=8 * 1024 * 1024, ge=LOGIN_MAX, le=1 << 40)  # per terminal, messages (and replies kept)
    # all terminals together: past it, a terminal whose messages wait for the active is not read
    # until they are answered (the per-terminal bounds alone allow 8 MiB x the terminals: an
    # out-of-memory kill, then the same again at every restart on the journal)
    held_total_bytes: int = Field(default=1 << 30, ge=LOGIN_MAX, le=1 << 44)
    host_timeout: float = Field(default=0.5, ge=0.05, le=HOST_TIMEOUT_MAX)
    host_lease: float = Field(default=0.35, ge=LEASE_MIN, le=3600)
    auth_timeout: float = Field(default=5.0, ge=0.1, le=3600)
    terminal_idle_timeout: float = Field(default=0.0, ge=0, le=86400)
    # TCP keepalive on terminal connections: a dead terminal's connection (its machine gone, its
    # reset lost) is dropped about this + 3 s after it went silent, so the terminal can log on again
    terminal_keepalive: float = Field(default=10.0, ge=0, le=7200)
    max_frame: int = Field(default=DEFAULT_MAX_FRAME, ge=LOGIN_MAX, le=64 * 1024 * 1024)
    # terminals flipped per turn of the event loop at a grant (hsb.cp.flip; about 1 µs each)
    flip_slice: int = Field(default=4096, ge=1, le=10_000_000)
    # after a restart the active names its open sessions and keeps them (hsb.cp.adopt); one whose
    # terminal is not back this many seconds later is closed. 0: every terminal logs on again
    resume_window: float = Field(default=60.0, ge=0, le=86400)
    # on taking over from another CP machine, a tickle ACK to each of its terminal connections
    # (hsb.cp.tickle; needs CAP_NET_RAW): terminals reconnect at once instead of by keepalive
    tickle_acks: bool = True
    # the CP's journal (docs/cp-journal.md): what it accepted and what it owes, durable first
    journal: ConfigPath = Field(default="cp-journal", validate_default=True)  # relative: to the config file
    durability: Literal["fsync", "none"] = "fsync"
    journal_timeout: float = Field(default=2.0, ge=0.05, le=600)
    # how a group commit reaches the disk (docs/cp-journal.md): "auto" uses io_uring where the
    # kernel allows it and the writer thread elsewhere; "io_uring" refuses to start without it
    journal_io: Literal["auto", "io_uring", "thread"] = "auto"
    # a segment is closed past this size of records (and four times its checkpoint); a restart replays the live ones
    journal_segment_kib: int = Field(default=1024, ge=16, le=1024 * 1024)
    # two CP machines (docs/operations.md, "Two CP machines"): "at_start" takes the journal over at
    # once; "on_wake" waits (config loaded, admin and /health up) until keepalived's notify script
    # sends SIGUSR1 on this machine becoming master, or until this machine holds terminal_listen's
    # address while the serving CP's heartbeat has not moved for takeover_stale seconds
    takeover: Literal["at_start", "on_wake"] = "at_start"
    takeover_stale: float = Field(default=0.3, ge=0.2, le=600)  # the serving CP beats every 0.1 s
    # woken while this CP waits (keepalived made this machine master: SIGUSR1, or the wake file
    # turning MASTER) and holding the address this long while the other CP still beats: take the
    # journal over all the same. The address's traffic goes to the newest master (its gratuitous
    # ARP), where nothing would listen: the other machine's keepalived died or hangs (it keeps the
    # address), or a VRRP split brain. 0: never (wait while the other CP beats)
    split_brain_takeover: float = Field(default=2.0, ge=0, le=600)
    # written by keepalived's notify script: MASTER, BACKUP, FAULT or STOP (level, not edge: a
    # hsbcpd started after the transition still reads it); "": SIGUSR1 only
    wake_file: OptConfigPath = ""  # relative: to the config file

    @field_validator("wake_file")
    @classmethod
    def _wake_file(cls, v: str) -> str:
        """Not there yet is fine (keepalived's notify script writes it); a directory never works:
        it was read as "not master" for ever, in silence."""
        if v and Path(v).is_dir():
            raise ValueError(f"{v} is a directory: name the file keepalived's notify script writes (docs/operations.md, two CP machines)")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if any(c.isspace() for c in v):
            raise ValueError(f"{v!r} has a space: a CP's name is one word (hosts and certificates name it)")
        return v

    RULES = (
        Rule(("takeover", "durability"), lambda v: _on_wake_journal(v["takeover"], v["durability"])),
        Rule(("takeover", "terminal_listen"), lambda v: _on_wake_address(v["takeover"], v["terminal_listen"])),
        # (the listeners that are valid: one given wrong is said, not counted free)
        Rule((), lambda v: listen_clashes({k: v.get(k, "") for k in LISTEN_KEYS})),
        Rule(("host_timeout", "host_lease"), lambda v: _lease_rule(v["host_timeout"], v["host_lease"])),
    )

    @staticmethod
    def lease_allows(host_timeout: float, host_lease: float) -> bool:
        """The lease rule: a lease of `host_lease` surely runs out before `host_timeout`."""
        return host_lease + LEASE_MARGIN < host_timeout

    @staticmethod
    def reload_host_timeout(applied: list[str], restart: list[str], host_timeout: float, running_lease: float) -> tuple[list[str], list[str]]:
        """A reload's keys (applied, needs a restart) under the lease rule: the hosts hold leases
        of the running host_lease, so a host_timeout that no longer exceeds it would grant too
        early and waits for a restart."""
        if CPSection.lease_allows(host_timeout, running_lease):
            return applied, restart
        return [k for k in applied if k != "cp.host_timeout"], [
            *restart,
            f"cp.host_timeout (below the running host_lease {running_lease:g} s + margin)",
        ]


class CPConfig(Strict):
    cp: CPSection
    tls: TLSSection | None = None
    terminals: list[TerminalDef] = Field(default_factory=list)
    terminal_groups: list[TerminalGroup] = Field(default_factory=list)
    _defs: dict[str, TerminalSpec] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _terms(self) -> CPConfig:
        defs, problems = table_problems(self.terminals, self.terminal_groups, sent_attrs_problem, need_one=True)
        if problems:
            raise ValueError("; ".join(problems))
        self._defs = defs
        return self

    @classmethod
    def checks_despite(cls, part: Partial) -> list[str]:
        """The terminal table's problems when another part of the config failed (its check above
        then never runs): every error at once (hsb.config.validate)."""
        return raw_table_problems(part.data, sent_attrs_problem, need_one=True)[1]

    @property
    def terminal_table(self) -> dict[str, TerminalSpec]:
        return self._defs
