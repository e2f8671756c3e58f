"""Every warning or error a daemon logs is in the operations guide's event tables
(docs/operations.md: the tables headed `event (level)`, §12 and §18, or `you see`), or is in one of the two
lists below: described in the guide's prose instead, or left out of the guide on purpose.

The tables list a chosen set, and nothing made anyone choose: the start's
`takeover_header_corrupt` (a torn takeover-file header taken at a start after a power loss)
and a few dozen more warnings and errors were in no table, so an operator who met one in the
log found nothing to look it up by. A new warning or error now fails this test until it has a
row, or a line here saying why not.

An event name built at run time is resolved where the code says it (`Names`): a conditional
expression of names, `"journal_" + state`, an f-string, a module constant, a local assigned
so, an attribute `self.event` set so in its class, and a helper's parameter (`ha.fail(…,
"fenced")`, `RefusalLog("cp_link_refused")`) from every call of the helper. A log call whose
name is none of these fails the test until AT_RUN_TIME lists the names it can log."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from functools import cache
from itertools import product
from pathlib import Path

from hsb.takeover.reader import PollStatus

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "operations.md"
LEVELS = {"warning", "warn", "error", "critical", "exception"}  # (structlog's; info and debug are not asked for)
LOG_METHODS = LEVELS | {"debug", "info", "msg", "fatal"}
NAME = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+")
EVENT = re.compile(r"[a-z][a-z0-9_]*")  # (a name resolved from a log call: `paused` is one)

# log calls whose event name the resolution cannot follow, with the names each can log:
# (file, the function around it, its event argument) -> names. Each must still be in the code.
AT_RUN_TIME: dict[tuple[str, str, str], set[str]] = {
    # the ring's stop status, once per problem; NOTHING_NEW is not logged and NEW returns
    # before it (test_the_ring_statuses_logged_are_the_ones_listed checks the enum)
    ("hsb/takeover/reader.py", "RingReader.poll", "'takeover_ring_' + stop.status.value"): {
        "takeover_ring_lapped",
        "takeover_ring_new_generation",
        "takeover_ring_torn",
        "takeover_ring_corrupt",
    },
}

# described in the guide's prose, in the section named, not in a table
IN_PROSE = {
    "config_reread_failed": "§11",
    "config_reread_incomplete": "§11",
    "cp_worker_crash_loop": "§11",
    "cp_worker_died": "§11",
    "cp_worker_died_ending": "§11",
    "cp_worker_died_stopping": "§11",
    "cp_worker_failed": "§11",
    "host_timeout_short_for_storms": "§20",
    "journal_close_abandoned_write": "§11",
    "journal_not_drained": "§11",
    "journal_storage_error": "§18",
    "lease_lost": "§5, and in the cp_loop_stalled row",
    "peer_took_over": "in the two_actives_claimed row",
    "role_hook_failed": "§9",
    "role_hook_timeout": "§9",
    "stale_epoch_refused": "in the fenced row",
    "stop_not_registered": "§9",
    "switchover_undone": "§8",
    "tls_files_broken_since": "§19",
}

# left out of the guide: nothing for an operator to do, or not met outside tests
LEFT_OUT = {
    "applied_config_not_kept": "the master's copy for a worker forked again; that worker reads the config file instead",
    "applied_config_unreadable": "as applied_config_not_kept",
    "applied_tls_not_kept": "as applied_config_not_kept, for the certificate files",
    "cp_counts_mismatch": "tests only (HSB_AUDIT_COUNTS=1)",
    "grant_superseded": "a race the CP settles itself; the failover's own events say the outcome",
    "granted_host_lost": "as grant_superseded",
    "journal_io_fallback": "io_uring's trouble, the journal goes on through its thread: docs/cp-journal.md",
    "journal_io_uring_error": "as journal_io_fallback",
    "journal_io_uring_failed": "as journal_io_fallback",
    "ring_write_outstanding": "a switchover's short wait for a ring write; storage trouble has its own events",
    "standby_kept_incomplete": "a short wait after a grant, then every standby session is opened again",
    "tickle_list_unreadable": "a list being replaced or damaged is passed over; tickle_acks_failed says the outcome",
}


Func = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass
class Module:
    rel: str  # hsb/host/ha.py
    dotted: str  # hsb.host.ha
    tree: ast.Module


class Names:
    """The strings an expression in hsb/ can be, followed through the code; None where it
    cannot say (what it does not follow, or a call of a helper that passes on what it cannot)."""

    def __init__(self, modules: list[Module]) -> None:
        self.modules = modules
        self.unparsed: dict[str, str] = {}  # a module's text, unparsed once (it is slow)
        self.parent: dict[ast.AST, ast.AST] = {}
        self.module_of: dict[ast.AST, Module] = {}
        for m in modules:
            for node in ast.walk(m.tree):
                self.module_of[node] = m
                for child in ast.iter_child_nodes(node):
                    self.parent[child] = node

    def _unparsed(self, m: Module) -> str:
        if m.dotted not in self.unparsed:
            self.unparsed[m.dotted] = ast.unparse(m.tree)
        return self.unparsed[m.dotted]

    def around(self, node: ast.AST, kind: type | tuple[type, ...]) -> ast.AST | None:
        while (up := self.parent.get(node)) is not None:
            if isinstance(up, kind):
                return up
            node = up
        return None

    def qualname(self, node: ast.AST) -> str:
        names = []
        while (node := self.parent.get(node)) is not None:  # type: ignore[assignment]
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.append(node.name)
        return ".".join(reversed(names)) or "<module>"

    def strings(self, e: ast.expr, at: ast.AST, depth: int = 0) -> set[str] | None:
        """What `e`, written at `at`, can be."""
        if depth > 10:  # (a helper that passes its parameter to itself)
            return None
        if isinstance(e, ast.Constant):
            return {e.value} if isinstance(e.value, str) else None
        if isinstance(e, ast.IfExp):
            return _union([self.strings(x, at, depth + 1) for x in (e.body, e.orelse)])
        if isinstance(e, ast.BinOp) and isinstance(e.op, ast.Add):
            return _joined([self.strings(x, at, depth + 1) for x in (e.left, e.right)])
        if isinstance(e, ast.JoinedStr):
            if any(isinstance(v, ast.FormattedValue) and (v.conversion != -1 or v.format_spec) for v in e.values):
                return None
            return _joined([self.strings(v.value if isinstance(v, ast.FormattedValue) else v, at, depth + 1) for v in e.values])
        if isinstance(e, ast.Name):
            return self._name(e.id, at, depth)
        if isinstance(e, ast.Attribute) and ast.unparse(e.value) == "self" and (cls := self.around(at, ast.ClassDef)):
            sets = [  # (every `self.x = …` in its class)
                self.strings(node.value, node, depth + 1)
                for node in ast.walk(cls)
                if isinstance(node, ast.Assign) and f"self.{e.attr}" in [ast.unparse(t) for t in node.targets]
            ]
            return _union(sets) if sets else None
        return None

    def _name(self, name: str, at: ast.AST, depth: int) -> set[str] | None:
        func = self.around(at, (ast.FunctionDef, ast.AsyncFunctionDef))
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = func.args
            if name in [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]:
                found = self._argument(func, name, depth)
            else:
                found = self._assigned(func, name, depth)
            if found is not None:
                return found - self._ruled_out(name, at, func)
        return self._assigned(self.module_of[at].tree, name, depth)  # (a module's constant)

    def _assigned(self, scope: ast.AST, name: str, depth: int) -> set[str] | None:
        """Every value assigned to `name` in `scope` (a function, or a module's top level); None
        if there is none, or it is bound there another way too (a loop, `+=`, a tuple)."""
        values: list[set[str] | None] = []
        for n in ast.walk(scope):
            if not (isinstance(n, ast.Name) and n.id == name and isinstance(n.ctx, ast.Store)):
                continue
            if self.around(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)) not in (scope, None):
                continue  # (a nested function's own)
            up = self.parent[n]
            if isinstance(up, ast.Assign) and up.targets == [n] or isinstance(up, ast.AnnAssign) and up.value is not None:
                values.append(self.strings(up.value, up, depth + 1))  # type: ignore[arg-type]
            else:
                return None
        return _union(values) if values else None

    def _ruled_out(self, name: str, at: ast.AST, func: ast.AST) -> set[str]:
        """The values `name` cannot have at `at`: in the else of `if name == "x"`, or in the body
        of `if name != "x"` (`"journal_" + state` is logged only for a state not "ok")."""
        out: set[str] = set()
        node = at
        while node is not func and (up := self.parent.get(node)) is not None:
            t = up.test if isinstance(up, ast.If) else None
            if isinstance(t, ast.Compare) and len(t.ops) == 1 and ast.unparse(t.left) == name:
                lit = t.comparators[0]
                if isinstance(lit, ast.Constant) and isinstance(lit.value, str):
                    if isinstance(up, ast.If) and (
                        (isinstance(t.ops[0], ast.Eq) and node in up.orelse) or (isinstance(t.ops[0], ast.NotEq) and node in up.body)
                    ):
                        out.add(lit.value)
            node = up
        return out

    def _argument(self, func: Func, name: str, depth: int) -> set[str] | None:
        """What `func`'s parameter `name` is given at every call of `func` in the modules that
        can call it (its own package's, and those that name its module); None if any call
        cannot say, or there is none."""
        cls = self.around(func, ast.ClassDef)
        a = func.args
        positional = [p.arg for p in a.posonlyargs + a.args]
        defaults = dict(zip(positional[::-1], a.defaults[::-1], strict=False)) | {
            p.arg: d for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d is not None
        }
        if cls is not None and not any(ast.unparse(d) == "staticmethod" for d in func.decorator_list):
            positional = positional[1:]  # (self)
        callee = cls.name if isinstance(cls, ast.ClassDef) and func.name == "__init__" else func.name
        home = self.module_of[func].dotted
        sets: list[set[str] | None] = []
        for m in self.modules:
            if m.dotted.rpartition(".")[0] != home.rpartition(".")[0] and home not in self._unparsed(m):
                continue
            for call in ast.walk(m.tree):
                if not (isinstance(call, ast.Call) and callee in (getattr(call.func, "id", None), getattr(call.func, "attr", None))):
                    continue
                given = {k.arg: k.value for k in call.keywords}
                if any(isinstance(x, ast.Starred) for x in call.args) or None in given:
                    return None
                if name in given:
                    sets.append(self.strings(given[name], call, depth + 1))
                elif name in positional and positional.index(name) < len(call.args):
                    sets.append(self.strings(call.args[positional.index(name)], call, depth + 1))
                elif name in defaults:
                    sets.append(self.strings(defaults[name], func, depth + 1))
                else:
                    return None
        return _union(sets) if sets else None


def _union(sets: list[set[str] | None]) -> set[str] | None:
    return None if any(s is None for s in sets) else set().union(*sets)  # type: ignore[arg-type]


def _joined(sets: list[set[str] | None]) -> set[str] | None:
    if any(s is None for s in sets):
        return None
    return {"".join(p) for p in product(*sets)}  # type: ignore[arg-type]


@dataclass
class Logged:
    names: dict[str, set[str]] = field(default_factory=dict)  # event name -> its levels
    unresolved: list[str] = field(default_factory=list)  # a line for each log call not followed
    listed_used: set[tuple[str, str, str]] = field(default_factory=set)  # AT_RUN_TIME's keys met

    def add(self, name: str, levels: set[str]) -> None:
        self.names.setdefault(name, set()).update(levels)


def _modules() -> list[Module]:
    out = []
    for path in sorted((ROOT / "hsb").rglob("*.py")):
        rel = path.relative_to(ROOT)
        dotted = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        out.append(Module(str(rel), dotted, ast.parse(path.read_text(), str(path))))
    return out


def _loggers(tree: ast.Module) -> set[str]:
    """The names a module binds to `structlog.get_logger(…)`."""
    return {
        t.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and ast.unparse(node.value.func).endswith("get_logger")
        for t in node.targets
        if isinstance(t, ast.Name)
    }


@cache  # (two tests read it; following the names through hsb/ takes seconds)
def logged_events() -> Logged:
    """Every event name a log call in hsb/ can log, with its levels. A name written out as a
    call's first argument counts whatever the call (as before the names were followed); a
    structlog call (`log.warning(…)`, `getattr(log, level)(…)`) with any other first argument
    at warning or above has its names followed, or taken from AT_RUN_TIME."""
    modules = _modules()
    names = Names(modules)
    out = Logged()
    for m in modules:
        loggers = _loggers(m.tree)
        for node in ast.walk(m.tree):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            first, f = node.args[0], node.func
            if isinstance(f, ast.Attribute) and isinstance(first, ast.Constant) and isinstance(first.value, str):
                if NAME.fullmatch(first.value):
                    out.add(first.value, {f.attr})
                continue
            levels: set[str] | None
            if isinstance(f, ast.Attribute) and f.attr in LOG_METHODS and ast.unparse(f.value) in loggers:
                levels = {f.attr}
            elif isinstance(f, ast.Call) and ast.unparse(f.func) == "getattr" and ast.unparse(f.args[0]) in loggers:
                levels = names.strings(f.args[1], node)
            else:
                continue
            where = f"{m.rel}:{node.lineno} ({names.qualname(node)}): {ast.unparse(node.func)}({ast.unparse(first)}, …)"
            if levels is not None and not levels & LEVELS:
                continue
            key = (m.rel, names.qualname(node), ast.unparse(first))
            found = AT_RUN_TIME.get(key) if levels is not None else None
            if found is not None:
                out.listed_used.add(key)
            else:
                found = names.strings(first, node)
            if levels is None or found is None:
                out.unresolved.append(where)
                continue
            for name in found:
                if EVENT.fullmatch(name):
                    out.add(name, levels)
                else:
                    out.unresolved.append(f"{where}: {name!r} is no event name")
    return out


def tabled_events(text: str) -> set[str]:
    """The names in the first column of the guide's tables headed `| event` or `| you see` (§12's
    start failures and §19's refusals, whose rows begin with the event or line met)."""
    out: set[str] = set()
    header: str | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            header = None
            continue
        if header is None:
            header = line
        elif header.startswith(("| event", "| you see")) and not line.startswith("|---"):
            out |= set(re.findall(r"`([a-z][a-z0-9_]+)`", line.split(" | ")[0]))
    return out


def test_every_warning_and_error_logged_is_in_the_guides_event_tables() -> None:
    text = GUIDE.read_text()
    tabled = tabled_events(text)
    assert {"fenced", "cp_waiting", "takeover_header_recovered"} <= tabled  # (the tables are found)
    logged = logged_events()
    assert logged.unresolved == [], (
        "log calls whose event name this test cannot follow (a name built at run time): list the names each can log in"
        f" AT_RUN_TIME (tests/test_operations_events.py), or write them out: {logged.unresolved}"
    )
    warned = {name for name, levels in logged.names.items() if levels & LEVELS}
    assert "takeover_header_corrupt" in warned  # (the log calls are found)
    assert {"journal_stalled", "cp_link_refused", "switchover_not_sent"} <= warned  # (and names built at run time)
    missing = sorted(warned - tabled - IN_PROSE.keys() - LEFT_OUT.keys())
    assert missing == [], f"warnings and errors logged in hsb/ that docs/operations.md's event tables lack: {missing}"


def test_the_lists_of_events_not_in_the_tables_are_true() -> None:
    """An event of the lists is still logged, at warning or above, and not in a table; one in
    IN_PROSE is named in the guide, one in LEFT_OUT is not; each log call of AT_RUN_TIME is
    still in the code, its names not followed."""
    text = GUIDE.read_text()
    tabled, logged = tabled_events(text), logged_events()
    for name in IN_PROSE.keys() | LEFT_OUT.keys():
        assert logged.names.get(name, set()) & LEVELS, f"{name} is no longer logged as a warning or error: take it off the list"
        assert name not in tabled, f"{name} has a row in the guide's event tables: take it off the list"
    assert IN_PROSE.keys() & LEFT_OUT.keys() == set()
    named = set(re.findall(r"`([a-z][a-z0-9_]+)`", text))
    assert sorted(IN_PROSE.keys() - named) == [], "events said to be in the guide's prose that it does not name"
    assert sorted(LEFT_OUT.keys() & named) == [], "events said to be left out of the guide that it names: give them a row"
    stale = sorted(AT_RUN_TIME.keys() - logged.listed_used)
    assert stale == [], f"AT_RUN_TIME lists log calls no longer in the code (file, function, event argument): {stale}"


def test_the_ring_statuses_logged_are_the_ones_listed() -> None:
    """AT_RUN_TIME's takeover_ring_ names are PollStatus's values but the two never logged."""
    (names,) = [v for (path, _, _), v in AT_RUN_TIME.items() if path == "hsb/takeover/reader.py"]
    statuses = {s.value for s in PollStatus} - {PollStatus.NEW.value, PollStatus.NOTHING_NEW.value}
    assert names == {"takeover_ring_" + s for s in statuses}


def test_names_built_at_run_time_are_followed() -> None:
    """The resolution on a module of its own: a conditional, a sum, an f-string, a constant, a
    helper's parameter (with its default), an attribute set from one, a branch ruling a value out;
    and a name it cannot follow is said."""
    src = """
import structlog
log = structlog.get_logger("x")
PREFIX = "cp_"
def helper(event, level="error"):
    getattr(log, level)(event)
class Refusals:
    def __init__(self, event):
        self.event = event
    def seen(self):
        log.warning(self.event)
def f(a, state, other):
    log.warning("paused" if a else "resumed")
    log.error(f"{PREFIX}link_{state}")
    helper("one_event")
    helper("two_event", level="warning")
    Refusals("refused_event")
    if state == "ok":
        log.info("ok")
    elif state != "x":
        log.error("journal_" + state)
    log.warning(other.name)
def g():
    f(True, "ok", None)
    f(False, "down", None)
"""
    module = Module("hsb/x.py", "hsb.x", ast.parse(src))
    names, calls = Names([module]), [n for n in ast.walk(module.tree) if isinstance(n, ast.Call)]

    def resolve(text: str) -> set[str] | None:
        (call,) = [c for c in calls if ast.unparse(c).startswith(text)]
        return names.strings(call.args[0], call)

    assert resolve("log.warning('paused'") == {"paused", "resumed"}
    assert resolve("log.error(f'") == {"cp_link_ok", "cp_link_down"}
    assert resolve("getattr(log, level)(event") == {"one_event", "two_event"}
    (getattr_call,) = [c for c in calls if ast.unparse(c).startswith("getattr(log, level)(")]
    assert isinstance(getattr_call.func, ast.Call)
    assert names.strings(getattr_call.func.args[1], getattr_call) == {"error", "warning"}
    assert resolve("log.warning(self.event)") == {"refused_event"}
    assert resolve("log.error('journal_'") == {"journal_down"}
    assert resolve("log.warning(other.name)") is None
