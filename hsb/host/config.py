"""hsbd settings: the declarative schema of a host's TOML config (see README, config reference)."""

from __future__ import annotations

import shlex
import shutil
from typing import Any

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from hsb.config import Addr, ConfigPath, ConnectAddr, OptAddr, Strict, TLSLinks, listen_clashes, resolve_path, same_addr
from hsb.terminals import TerminalDef, TerminalGroup, TerminalSpec, attrs_problem, raw_table_problems, table_problems
from hsb.wire.framing import DEFAULT_MAX_FRAME, LOGIN_MAX


class HostSection(Strict):
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

    @model_validator(mode="after")
    def _rules(self) -> HostSection:
        """Every rule across this section's keys at once (one line each, joined)."""
        problems = []
        if self.heartbeat_timeout <= 2 * self.heartbeat_interval:
            problems.append(
                f"heartbeat_timeout ({self.heartbeat_timeout}s) must be greater than two heartbeat intervals "
                f"({2 * self.heartbeat_interval}s), or one late heartbeat looks like a dead peer"
            )
        if same_addr(self.peer, self.peer_listen):
            problems.append("host.peer must be the other host's peer_listen, not this host's own")
        problems += listen_clashes({"peer_listen": self.peer_listen, "admin_listen": self.admin_listen, "http_listen": self.http_listen})
        if problems:
            raise ValueError("; ".join(problems))
        return self


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


def _size_problem(records: int, terminals: int, record_size: int, path: str) -> list[str]:
    from hsb.takeover.errors import TakeoverFileTooSmall
    from hsb.takeover.layout import size_check

    try:
        size_check(records, terminals, record_size, path=path)
    except TakeoverFileTooSmall as exc:
        return [f"takeover.records: {exc}"]
    return []


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
        from hsb.service.api import path_options

        host = info.data.get("host")
        if host is None:  # (its own errors are reported)
            return v
        out = dict(v)
        for key, default in path_options(host.service).items():
            value = out.get(key, default)
            if isinstance(value, str) and value:
                out[key] = resolve_path(value, info)
        return out

    @model_validator(mode="after")
    def _terms(self) -> HostConfig:
        # the session attributes of each terminal fit one entry of the file (whether a terminal
        # is standby-capable is the CP's to say: a host cannot know which ones the file will hold)
        self._defs, problems = table_problems(self.terminals, self.terminal_groups, attrs_problem)
        # the size check of the takeover file (N >= 3B+1), from the config alone: what the start
        # checks against the file itself refused here already
        problems += _size_problem(self.takeover.records, len(self._defs), self.takeover.record_size, self.takeover.path)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @classmethod
    def checks_despite(cls, data: dict[str, Any]) -> list[str]:
        """The terminal table's problems and the takeover file's size check when another part of
        the config failed (its check above then never runs): every error at once."""
        table = raw_table_problems(data, attrs_problem)
        if table is None:
            return []
        defs, problems = table
        t = data.get("takeover")
        if not problems and isinstance(t, dict) and isinstance(t.get("records"), int) and isinstance(t.get("record_size", 4096), int):
            problems += _size_problem(t["records"], len(defs), t.get("record_size", 4096), str(t.get("path", "")))
        return problems

    @property
    def terminal_table(self) -> dict[str, TerminalSpec]:
        """This host's terminal definitions (attrs = this host's session attributes)."""
        return self._defs
