"""hsbd settings: the declarative schema of a host's TOML config (see README, config reference)."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from hsb.config import (
    Addr,
    ConfigPath,
    ConnectAddr,
    OptAddr,
    Partial,
    Rule,
    Ruled,
    Strict,
    TLSLinks,
    key_text,
    listen_clashes,
    resolve_under,
    same_addr,
)
from hsb.fsutil import path_problem
from hsb.host.takeover_size import size_problem
from hsb.terminals import TerminalDef, TerminalGroup, TerminalSpec, attrs_problem, raw_table_problems, table_problems
from hsb.wire.framing import DEFAULT_MAX_FRAME, LOGIN_MAX


class HostSection(Ruled):
    """`[host]`; its rules across keys (RULES) checked at once, each one line."""

    name: str = Field(min_length=1, max_length=64)
    peer: ConnectAddr
    peer_listen: Addr
    cp: ConnectAddr
    admin_listen: Addr
    http_listen: OptAddr = ""
    secret_file: ConfigPath
    fast_switch: bool = True
    heartbeat_interval: float = Field(default=0.1, ge=0.01, le=60)  # (below: a loop that never sleeps)
    heartbeat_timeout: float = Field(default=0.5, ge=0.05, le=600)
    ring_poll_interval: float = Field(default=0.05, ge=0.001, le=60)
    service: str = "echo"
    on_role_change: str = ""  # a command run with: ROLE STATE EPOCH REASON (hsb.host.hooks)
    hook_timeout: float = Field(default=10.0, ge=0.1, le=3600)
    max_frame: int = Field(default=DEFAULT_MAX_FRAME, ge=LOGIN_MAX, le=64 * 1024 * 1024)

    @field_validator("on_role_change")
    @classmethod
    def _hook(cls, v: str) -> str:
        """The command is split as a shell would and its program found now, not at the first role
        change (a failover) where a typo would only be logged."""
        if not v:
            return v
        try:
            argv = shlex.split(v)
        except ValueError as exc:
            raise ValueError(f"{exc}: quote the command as a shell would") from None
        if not argv:
            raise ValueError('no command in it: leave it out (or "") for none')
        if shutil.which(argv[0]) is None:
            raise ValueError(f"{argv[0]!r} is not an executable program: give its full path, executable by hsbd's user")
        return v

    RULES = (
        Rule(("heartbeat_timeout", "heartbeat_interval"), lambda v: _heartbeat_rule(v["heartbeat_timeout"], v["heartbeat_interval"])),
        Rule(
            ("peer", "peer_listen"),
            lambda v: ["host.peer must be the other host's peer_listen, not this host's own"] if same_addr(v["peer"], v["peer_listen"]) else [],
        ),
        # (the listeners that are valid: one given wrong is said, not counted free)
        Rule((), lambda v: listen_clashes({k: v.get(k, "") for k in ("peer_listen", "admin_listen", "http_listen")})),
    )


def _heartbeat_rule(timeout: float, interval: float) -> list[str]:
    if timeout <= 2 * interval:
        return [
            f"heartbeat_timeout ({timeout}s) must be greater than two heartbeat intervals "
            f"({2 * interval}s), or one late heartbeat looks like a dead peer; raise host.heartbeat_timeout above"
            f" {2 * interval}s or lower host.heartbeat_interval below {timeout / 2}s"
        ]
    return []


class TakeoverSection(Strict):
    path: ConfigPath
    records: int = Field(ge=4, le=0xFFFF_FFFF)  # (the file format's bound: hsb.takeover.layout.MAX_RECORDS)
    record_size: int = Field(default=4096, ge=512, le=1 << 20)
    storage_timeout: float = Field(default=2.0, ge=0.05, le=600)

    @field_validator("record_size")
    @classmethod
    def _rs(cls, v: int) -> int:
        if v % 512:
            raise ValueError("record_size must be a multiple of 512 (whole, aligned records)")
        return v


def service_paths(service: str, options: dict[str, Any], base: Path | None) -> dict[str, Any]:
    """`options` of `service` with its file options (the journal service's `journal`, the
    ledger's `sqlite`) relative to `base`, the config file's folder, as every path in the config is."""
    from hsb.service.api import path_options

    out = dict(options)
    for key, default in path_options(service).items():
        value = out.get(key, default)
        if isinstance(value, str) and value:
            out[key] = resolve_under(value, base)
    return out


class HostConfig(Strict):
    host: HostSection
    takeover: TakeoverSection
    tls: TLSLinks | None = None
    service_options: dict[str, Any] = Field(default_factory=dict, validate_default=True)
    terminals: list[TerminalDef] = Field(default_factory=list)
    terminal_groups: list[TerminalGroup] = Field(default_factory=list)
    _defs: dict[str, TerminalSpec] = PrivateAttr(default_factory=dict)

    @field_validator("service_options")
    @classmethod
    def _service_paths(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        """The built-in services' file options (the journal service's `journal`, the ledger's
        `sqlite`) are relative to the config file's folder, as every path in the config is."""
        names = [key_text(k) for k in v if not k.isidentifier()]
        if names:  # (the factory's keyword arguments: Python's error would give the key as it came, a line break too)
            raise ValueError(f"{', '.join(names)}: not an option name (letters, digits and _); remove it or check the service's options")
        host = info.data.get("host")
        if host is None:  # (its own errors are reported)
            return v
        from hsb.service.api import path_options

        out = service_paths(host.service, v, (info.context or {}).get("base"))
        bad = [f"{k} {why}" for k in path_options(host.service) if isinstance(out.get(k), str) and (why := path_problem(out[k]))]
        if bad:
            raise ValueError(f"{'; '.join(bad)}: give a plain file path")
        return out

    @model_validator(mode="after")
    def _terms(self) -> HostConfig:
        # the session attributes of each terminal fit one entry of the file (whether a terminal
        # is standby-capable is the CP's to say: a host cannot know which ones the file will hold)
        self._defs, problems = table_problems(self.terminals, self.terminal_groups, attrs_problem)
        # the size check of the takeover file (N >= 3B+1) on the config's records: what the start
        # checks against the file itself refused here already (the file looked at for the fix)
        t = self.takeover
        problems += size_problem(t.records, len(self._defs), t.record_size, t.path, t.storage_timeout)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @classmethod
    def checks_despite(cls, part: Partial) -> list[str]:
        """The terminal table's problems and the takeover file's size check when another part of
        the config failed (its check above then never runs), on what of them is valid: every
        error at once."""
        problems, size = raw_size_keys(part)
        return problems + (size_problem(*size) if size is not None else [])

    @property
    def terminal_table(self) -> dict[str, TerminalSpec]:
        """This host's terminal definitions (attrs = this host's session attributes)."""
        return self._defs


def raw_size_keys(part: Partial) -> tuple[list[str], tuple[int, int, int, str, float] | None]:
    """Of a config that failed its schema: its terminal table's problems, and when every entry
    of the table is valid and so are the takeover keys, what the file's size checks take
    (records, terminals, record_size, path resolved, storage_timeout); else None. A problem of
    the table's (an entry's attrs too big, say) does not hide the size check: the full check
    says both too."""
    defs, problems = raw_table_problems(part.data, attrs_problem)
    t = part.values("takeover")
    if defs is None or not all(k in t for k in ("records", "record_size", "path", "storage_timeout")):
        return problems, None
    return problems, (t["records"], len(defs), t["record_size"], resolve_under(t["path"], part.base), t["storage_timeout"])
