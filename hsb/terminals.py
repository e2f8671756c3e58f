"""Terminal definitions as both the CP and the hosts write them in their configs.

A config lists terminals one by one (`[[terminals]]`) or as numbered groups
(`[[terminal_groups]]`, e.g. prefix "T", count 10000 → T00001..T10000), so that
a 10,000-terminal setup stays readable.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import msgpack
from pydantic import Field, field_validator

from hsb.config import Strict

NAME_MAX = 48  # bytes of UTF-8; bounds the takeover file's entry size

# the places in the config of the `[[terminals]]` and `[[terminal_groups]]` entries given
Positions = tuple[Sequence[int], Sequence[int]]


_SPACE = re.compile(r"\s")  # (the characters str.isspace() says are spaces, all of them)


def name_problem(v: object) -> str | None:
    """Why `v` is no terminal name (None: it is one), to follow "terminal name": 1..NAME_MAX bytes
    of UTF-8, no spaces. The configs' rule (CP and hosts), and the hosts' check of the names the
    CP sends them (hsb.host.sessions_ctl): cheap enough for every delivery."""
    if type(v) is not str:
        return f"must be text, not {type(v).__name__}"
    n = len(v)
    if not n or n > NAME_MAX or (n > NAME_MAX // 4 and len(v.encode()) > NAME_MAX) or _SPACE.search(v) is not None:
        return f"must be 1..{NAME_MAX} bytes with no spaces"
    return None


def _check_name(v: str) -> str:
    why = name_problem(v)
    if why is not None:
        raise ValueError(f"terminal name {why}")
    return v


def attrs_problem(name: str, attrs: dict[str, Any]) -> str | None:
    """Why the takeover file cannot hold terminal `name`'s session attributes in one entry, or
    None (a host's standby-capable terminals: else the active's ring writes would fail at that
    terminal's logon, again and again)."""
    from hsb.takeover.layout import ENTRY_SIZE  # (here: hsb.takeover imports this module)

    try:
        size = len(msgpack.packb([name, True, attrs]))
    except (TypeError, ValueError, OverflowError) as exc:
        return f"attrs cannot be kept in the takeover file ({exc}): use strings, numbers, booleans, arrays and tables"
    if size > ENTRY_SIZE:
        return f"attrs of {name!r} take {size} bytes in the takeover file, whose entry holds {ENTRY_SIZE}: shorten them"
    return None


SENT_ATTRS_MAX = 2048  # bytes: a terminal's attrs in the CP's config, sent in each session request


def sent_attrs_problem(name: str, attrs: dict[str, Any]) -> str | None:
    """Why the CP cannot send terminal `name`'s attrs (from its config) to the hosts in a frame,
    or None: else each session request for it would fail, or its frame be refused, at run time."""
    try:
        size = len(msgpack.packb(attrs))
    except (TypeError, ValueError, OverflowError) as exc:
        return f"attrs cannot be sent to the hosts ({exc}): use strings, numbers, booleans, arrays and tables"
    if size > SENT_ATTRS_MAX:
        return f"attrs of {name!r} take {size} bytes; the CP sends them with each session request: keep them under {SENT_ATTRS_MAX}"
    return None


def table_problems(
    terminals: list[TerminalDef],
    groups: list[TerminalGroup],
    attrs_check: Callable[[str, dict[str, Any]], str | None],
    need_one: bool = False,
    at: Positions | None = None,
) -> tuple[dict[str, TerminalSpec], list[str]]:
    """The terminal table of a config and every problem with it: a name twice, none at all
    (`need_one`), attrs `attrs_check(name, attrs)` refuses (`at`: as in `expand_all`)."""
    problems: list[str] = []
    ti, gi = at or (range(len(terminals)), range(len(groups)))
    try:
        defs = expand_all(terminals, groups, at)
    except ValueError as exc:
        defs = {}
        problems.append(str(exc))
    else:
        if need_one and not defs:
            problems.append("no terminals defined; add [[terminals]] or [[terminal_groups]]")
    entries = [(f"terminals[{i}]", t.name, t.attrs) for i, t in zip(ti, terminals, strict=True)]
    entries += [(f"terminal_groups[{i}]", g.last_name(), g.attrs) for i, g in zip(gi, groups, strict=True)]
    problems += [f"{key}.attrs: {why}" for key, name, attrs in entries if (why := attrs_check(name, attrs))]
    return defs, problems


def raw_table_problems(
    data: dict[str, Any], attrs_check: Callable[[str, dict[str, Any]], str | None], need_one: bool = False
) -> tuple[dict[str, TerminalSpec] | None, list[str]]:
    """`table_problems` of a config's raw data, when the rest of it failed its checks (the model's
    own check of the table then never ran): of the entries that are valid (the others' errors
    are reported), so a name twice among them is said too. The table is None when an entry was
    left out (its size would be wrong); none at all is said only when none was given."""
    from pydantic import ValidationError

    lists: list[Any] = []
    at: list[list[int]] = []  # the valid entries' places in the config
    whole = True
    for key, model in (("terminals", TerminalDef), ("terminal_groups", TerminalGroup)):
        entries = data.get(key, [])
        valid, places = [], []
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            try:
                valid.append(model.model_validate(entry))
            except ValidationError:
                continue
            places.append(i)
        whole = whole and isinstance(entries, list) and len(valid) == len(entries)
        lists.append(valid)
        at.append(places)
    defs, problems = table_problems(lists[0], lists[1], attrs_check, need_one and whole, (at[0], at[1]))
    return (defs if whole else None), problems


class TerminalDef(Strict):
    name: str
    standby_capable: bool = True
    attrs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v)


class Member:
    """One terminal of a `[[terminal_groups]]` entry: the group's fields, validated once for the
    whole group. A plain object, not a model: 10,000 models cost about 0.1 s of every start."""

    __slots__ = ("name", "standby_capable", "attrs")

    def __init__(self, name: str, standby_capable: bool, attrs: dict[str, Any]) -> None:
        self.name = name
        self.standby_capable = standby_capable
        self.attrs = attrs  # the group's dict, shared: nothing changes a terminal's attributes in place


# What the daemons read of a terminal's definition, one-by-one or from a group.
TerminalSpec = TerminalDef | Member


class TerminalGroup(Strict):
    prefix: str
    count: int = Field(ge=1, le=1_000_000)
    start: int = Field(default=1, ge=0)
    width: int = Field(default=5, ge=1, le=12)
    standby_capable: bool = True
    attrs: dict[str, Any] = Field(default_factory=dict)

    def last_name(self) -> str:
        """The longest of its names (the prefix and the last number)."""
        return f"{self.prefix}{self.start + self.count - 1:0{self.width}d}"

    def expand(self) -> list[Member]:
        # The group's fields are validated once; so are its names, by the longest of them (the
        # prefix and the last number): every other name is the prefix and a number no longer.
        _check_name(self.last_name())
        p, w, sc, attrs = self.prefix, self.width, self.standby_capable, self.attrs
        return [Member(f"{p}{i:0{w}d}", sc, attrs) for i in range(self.start, self.start + self.count)]


MAX_TERMINALS = 1_000_000  # in one table, all groups together (each group's count has the same bound)


def expand_all(terms: list[TerminalDef], groups: list[TerminalGroup], at: Positions | None = None) -> dict[str, TerminalSpec]:
    """All definitions by name. A ValueError names every problem (its entry, one each): a name
    defined twice, a group's names refused, more than MAX_TERMINALS in all. `at`: the entries'
    places in the config, as its errors name them (default: 0, 1, ...; other entries left out)."""
    ti, gi = at or (range(len(terms)), range(len(groups)))
    total = len(terms) + sum(g.count for g in groups)
    if total > MAX_TERMINALS:  # (before expanding: a mistyped count must not take the memory)
        raise ValueError(f"{total:,} terminals in all: at most {MAX_TERMINALS:,} (check the groups' counts)")
    out: dict[str, TerminalSpec] = {}
    problems: list[str] = []
    for i, t in zip(ti, terms, strict=True):  # each name validated with its entry
        if t.name in out:
            problems.append(f"terminals[{i}]: terminal {t.name!r} is defined twice")
        out[t.name] = t
    for i, g in zip(gi, groups, strict=True):
        try:
            members = g.expand()
        except ValueError as exc:
            problems.append(f"terminal_groups[{i}] (prefix {g.prefix[:60]!r}): {exc}")
            continue
        if not out.keys().isdisjoint(m.name for m in members):
            dup = next(m.name for m in members if m.name in out)
            problems.append(f"terminal_groups[{i}]: terminal {dup!r} is defined twice")
        out.update((m.name, m) for m in members)
    if problems:
        raise ValueError("; ".join(problems))
    return out
