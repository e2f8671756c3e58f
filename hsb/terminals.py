"""Terminal definitions as both the CP and the hosts write them in their configs.

A config lists terminals one by one (`[[terminals]]`) or as numbered groups
(`[[terminal_groups]]`, e.g. prefix "T", count 10000 → T00001..T10000), so that
a 10,000-terminal setup stays readable.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from hsb.config import Strict

NAME_MAX = 48  # bytes of UTF-8; bounds the takeover file's entry size


def _check_name(v: str) -> str:
    if not v or len(v.encode()) > NAME_MAX or any(c.isspace() for c in v):
        raise ValueError(f"terminal name must be 1..{NAME_MAX} bytes with no spaces")
    return v


class TerminalDef(Strict):
    name: str
    standby_capable: bool = True
    attrs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v)


class TerminalGroup(Strict):
    prefix: str
    count: int = Field(ge=1, le=1_000_000)
    start: int = Field(default=1, ge=0)
    width: int = Field(default=5, ge=1, le=12)
    standby_capable: bool = True
    attrs: dict[str, Any] = Field(default_factory=dict)

    def expand(self) -> list[TerminalDef]:
        # The group's fields are already validated; names are checked in expand_all.
        # Validating 10,000 members again cost about a quarter of a second at start.
        return [
            TerminalDef.model_construct(name=f"{self.prefix}{i:0{self.width}d}", standby_capable=self.standby_capable, attrs=dict(self.attrs))
            for i in range(self.start, self.start + self.count)
        ]


def expand_all(terms: list[TerminalDef], groups: list[TerminalGroup]) -> dict[str, TerminalDef]:
    """All definitions by name; a name defined twice is a ValueError naming it."""
    out: dict[str, TerminalDef] = {}
    for t in [*terms, *(t for g in groups for t in g.expand())]:
        _check_name(t.name)
        if t.name in out:
            raise ValueError(f"terminal {t.name!r} is defined twice")
        out[t.name] = t
    return out
