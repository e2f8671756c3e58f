"""A property-based audit of every config loader's error handling: configs built by mutating a
valid one (a key dropped, an unknown key added, a value of another type, a table nested wrongly)
are either accepted or refused with one line per problem naming its key, and the CLI path exits
78 (hsbd, hsbcpd) or 3 (hsbctl); never another exception (docs/operations.md §5, §17)."""

from __future__ import annotations

import contextlib
import copy
import datetime
import io
import math
import os
import re
import subprocess
import sys
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hsb.cli import EXIT_CONFIG, load_or_exit
from hsb.config import ConfigError, validate
from hsb.cp.config import CPConfig
from hsb.ctl.target import TargetError, load_target
from hsb.host.config import HostConfig

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

TERMS = {
    "terminals": [{"name": "KIOSK1", "standby_capable": False, "attrs": {"kind": "kiosk"}}],
    "terminal_groups": [{"prefix": "T", "count": 20, "attrs": {"protocol": "hsb1", "max_msg": 4096}}],
}
HOST: dict[str, Any] = {
    "host": {
        "name": "host-a",
        "peer_listen": "127.0.0.1:7111",
        "peer": "127.0.0.1:7121",
        "cp": "127.0.0.1:7001",
        "admin_listen": "127.0.0.1:7112",
        "http_listen": "127.0.0.1:7113",
        "secret_file": "secret",
        "service": "echo",
        "heartbeat_interval": 0.1,
        "heartbeat_timeout": 0.5,
    },
    "takeover": {"path": "takeover.dat", "records": 64, "record_size": 4096, "storage_timeout": 2.0},
    "service_options": {"logon_ms": 0},
    **TERMS,
}
CP: dict[str, Any] = {
    "cp": {
        "name": "cp",
        "terminal_listen": "127.0.0.1:7000",
        "host_listen": "127.0.0.1:7001",
        "admin_listen": "127.0.0.1:7002",
        "http_listen": "127.0.0.1:7080",
        "secret_file": "secret",
        "held_bound": 256,
        "host_timeout": 0.5,
        "host_lease": 0.35,
        "journal": "cp-journal",
        "durability": "fsync",
        "journal_io": "thread",
        "takeover": "at_start",
        "wake_file": "",
    },
    **TERMS,
}
CTL: dict[str, Any] = {"cp": ["127.0.0.1:7002", "127.0.0.1:7202"], "hosts": ["127.0.0.1:7103", "127.0.0.1:7203"], "secret_file": "secret"}
SERVICES: dict[str, dict[str, Any]] = {
    "journal": {"journal": "journal-a.log", "logon_ms": 0},
    "ledger": {"sqlite": "ledger.db", "keep_hours": 168.0, "keep_last": 256, "busy_timeout": 5.0},
}


def deep(n: int) -> Any:
    v: Any = 1
    for _ in range(n):
        v = [v]
    return v


SCALARS = st.one_of(
    st.sampled_from(["", "\0", "x" * 5000, "a\nb", "é✓", " ", "0", "-1", "nan", "127.0.0.1:0", "[::1]:7000", "h:99999", "/", "..", "a/\0/b"]),
    st.text(max_size=20),
    st.sampled_from([0, -1, 1, 2**31, 2**63 - 1, -(2**63)]),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, 5e-324, 0.5]),
    st.floats(),
    st.booleans(),
    st.datetimes(),
    st.dates(),
    st.times(),
)
WEIRD = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.dictionaries(st.text(max_size=6), SCALARS, max_size=3),
    st.lists(st.dictionaries(st.text(max_size=6), SCALARS, max_size=2), max_size=2),
    st.sampled_from([600, 5000]).map(deep),
    st.sampled_from(["[[]]", "[{}]", '{"": {}}']).map(eval),  # (fresh: a mutation may change it)
)
KEYS = st.one_of(
    st.sampled_from(["zz", "name ", "Name", "heartbeat_timout", "secret", "", "\0", "é", "x" * 300, "terminals", "0"]), st.text(max_size=8)
)


def paths(v: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in a config's data (keys of tables, items of arrays; 8 levels deep)."""
    if len(at) >= 8:
        return
    items = v.items() if isinstance(v, dict) else enumerate(v) if isinstance(v, list) else ()
    for k, x in items:
        yield (*at, k)
        yield from paths(x, (*at, k))


def at(data: Any, path: tuple[Any, ...]) -> Any:
    for k in path:
        data = data[k]
    return data


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    """`base` with 1-3 mutations, and the places mutated."""
    data = copy.deepcopy(base)
    where: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(1, 3))):
        places = list(paths(data))
        op = draw(st.sampled_from(["drop", "add", "swap", "swap", "wrap", "unwrap"]))
        if not places:
            op = "add"
        if op == "add":
            tables = [()] + [p for p in places if isinstance(at(data, p), dict)]
            p = draw(st.sampled_from(tables))
            key = draw(KEYS)
            at(data, p)[key] = draw(WEIRD)
            where.append((*p, key))
            continue
        p = draw(st.sampled_from(places))
        parent, key = at(data, p[:-1]), p[-1]
        if op == "drop":
            del parent[key]
        elif op == "swap":
            parent[key] = draw(WEIRD)
        elif op == "wrap":  # a table or value one level too deep: [host] as [[host]], a value as a table
            parent[key] = draw(st.sampled_from([[parent[key]], {"x": parent[key]}, [parent[key], parent[key]]]))
        else:  # one level too shallow: an array of tables as its first table, a table as one of its values
            v = parent[key]
            if isinstance(v, list) and v:
                parent[key] = v[0]
            elif isinstance(v, dict) and v:
                parent[key] = next(iter(v.values()))
            else:
                parent[key] = draw(WEIRD)
        where.append(p)
    return data, where


def escaped(o: int) -> str:
    return f"\\u{o:04X}" if o <= 0xFFFF else f"\\U{o:08X}"


def key_text(key: str) -> str:
    """A key as the errors give it: as TOML writes it, bare or quoted, what is not printable escaped."""
    if re.fullmatch(r"[A-Za-z0-9_-]+", key):
        return key
    esc = "".join(c if c.isprintable() and c not in '"\\' else "\\" + c if c in '"\\' else escaped(ord(c)) for c in key)
    return f'"{esc}"'


def key_names(where: list[tuple[Any, ...]]) -> set[str]:
    """The names an error about these places may give: each key on the way, and an item's [i]."""
    return {f"[{k}]" if isinstance(k, int) else key_text(str(k)) for p in where for k in p}


def one_line(line: str) -> None:
    """One line: no line break of any kind (str.splitlines'), no control character (a carriage
    return, an escape sequence)."""
    assert line.strip() and len(line.splitlines()) == 1, repr(line)
    assert not any(unicodedata.category(c) == "Cc" for c in line) and "Traceback" not in line, repr(line)


def check_config_error(exc: ConfigError, where: list[tuple[Any, ...]]) -> None:
    """Each error one line, and one of them names a key mutated (or a key on its way)."""
    assert exc.errors, "a ConfigError with no error"
    for e in exc.errors:
        one_line(e)
    names = key_names(where)
    assert any(n in e for e in exc.errors for n in names) or any("(top level)" in e or "TOML" in e for e in exc.errors), (exc.errors, where)


def toml_str(s: str) -> str:
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return toml_str(v)
    if isinstance(v, (datetime.datetime, datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, list) and len(v) == 1 and isinstance(v[0], list):  # (deep: not recursively)
        n = 0
        while isinstance(v, list) and len(v) == 1 and isinstance(v[0], list):
            v, n = v[0], n + 1
        return "[" * n + toml_value(v) + "]" * n
    if isinstance(v, dict):
        return "{" + ", ".join(f"{toml_str(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"
    return "[" + ", ".join(toml_value(x) for x in v) + "]"


def toml(data: dict[str, Any]) -> str:
    """The data as TOML: every top-level key on its own line, tables inline (the same data)."""
    return "".join(f"{toml_str(str(k))} = {toml_value(v)}\n" for k, v in data.items())


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fuzz")
    (d / "secret").write_text("s3cret\n")
    (d / "secret").chmod(0o600)
    return d


def case_of(base: dict[str, Any], path: tuple[Any, ...], value: Any) -> tuple[dict[str, Any], list[tuple[Any, ...]]]:
    """`base` with the value at `path` set (an explicit example of `mutated`)."""
    data = copy.deepcopy(base)
    at(data, path[:-1])[path[-1]] = value
    return data, [path]


LONG_NAME = "x" * 5000  # (too long a name: every stat() of it fails with ENAMETOOLONG, an OSError)


def accepted_or_config_error(data: dict[str, Any], model: Any, where: list[tuple[Any, ...]], base: Path) -> None:
    try:
        validate(data, model, "c.toml", base=base)
    except ConfigError as exc:
        check_config_error(exc, where)


@FUZZ
@given(case=mutated(HOST))
@example(case=case_of(HOST, ("host", "\r"), 1))  # an unknown key said as written: a line cut in two
@example(case=case_of(HOST, ("host", "secret_file"), "a\nb"))
@example(case=case_of(HOST, ("takeover", "path"), LONG_NAME))
def test_a_mutated_host_config_is_accepted_or_said_key_by_key(d: Path, case: tuple[dict[str, Any], list[Any]]) -> None:
    accepted_or_config_error(case[0], HostConfig, case[1], d)


@FUZZ
@given(case=mutated(CP))
@example(case=case_of(CP, ("cp", "wake_file"), LONG_NAME))  # an OSError out of the schema's check
@example(case=case_of(CP, ("cp", "journal"), "j\u2028"))
def test_a_mutated_cp_config_is_accepted_or_said_key_by_key(d: Path, case: tuple[dict[str, Any], list[Any]]) -> None:
    accepted_or_config_error(case[0], CPConfig, case[1], d)


def through_cli(d: Path, data: dict[str, Any], model: Any, checks: dict[str, Any]) -> tuple[int, list[str]]:
    """hsbd's or hsbcpd's load of the data written as TOML, in process (the start's path or
    --check-config's): config OK, or exit 78 with `config error:` lines; (its exit, stderr's lines)."""
    p = d / "c.toml"
    p.write_text(toml(data), encoding="utf-8")
    err = io.StringIO()
    code: Any = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            load_or_exit(p, model, **checks)
        except SystemExit as exc:
            code = exc.code
            assert code in (0, EXIT_CONFIG), code
            if code == EXIT_CONFIG:
                assert "config error:" in err.getvalue()
    lines = err.getvalue().splitlines()
    for line in lines:
        assert line.startswith(("config error: ", "config warning: ", "warning: ")), line
        one_line(line)
    return code, lines


def host_checks(check_config: bool) -> dict[str, Any]:
    from hsb.host.main import HostChecks, partial_checks

    looks = HostChecks(check_config)
    return {
        "check_only": check_config,
        "warnings": looks.warnings,
        "checks": looks.checks,
        "partial_checks": lambda part: partial_checks(part, check_config),
    }


def cp_checks(check_config: bool) -> dict[str, Any]:
    from hsb.cp.main import config_warnings, listen_addresses, listen_foreign, partial_problems, start_problems

    return {
        "check_only": check_config,
        "warnings": lambda c: config_warnings(c) + listen_foreign(c),
        "checks": lambda c: start_problems(c) + (listen_addresses(c) if check_config else []),
        "partial_checks": lambda part: partial_problems(part, check_config),
    }


def services(base: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """`base` with each built-in service and its options."""

    def with_service(name: str) -> dict[str, Any]:
        data = copy.deepcopy(base)
        if name != "echo":
            data["host"]["service"] = name
            data["service_options"] = dict(SERVICES[name])
        return data

    return st.sampled_from(["echo", "journal", "ledger"]).map(with_service)


@settings(FUZZ, max_examples=150)
@given(case=services(HOST).flatmap(mutated), check_config=st.booleans())
@example(case=case_of(HOST, ("host", "secret_file"), "\x1f"), check_config=False)  # the secret's line, cut
@example(case=case_of(dict(HOST, host={**HOST["host"], "service": "journal"}), ("service_options", "journal"), "a\rb"), check_config=True)
@example(case=case_of(dict(HOST, host={**HOST["host"], "service": "journal"}), ("service_options", "journal"), LONG_NAME), check_config=True)
def test_hsbd_says_a_mutated_config_in_lines_and_exits_78(d: Path, case: tuple[dict[str, Any], list[Any]], check_config: bool) -> None:
    through_cli(d, case[0], HostConfig, host_checks(check_config))


@settings(FUZZ, max_examples=150)
@given(case=mutated(CP), check_config=st.booleans())
@example(case=case_of(CP, ("cp", "journal"), LONG_NAME), check_config=False)  # an OSError out of the start's checks
@example(case=case_of(CP, ("cp", "secret_file"), "s\x1b[2K"), check_config=True)
def test_hsbcpd_says_a_mutated_config_in_lines_and_exits_78(d: Path, case: tuple[dict[str, Any], list[Any]], check_config: bool) -> None:
    through_cli(d, case[0], CPConfig, cp_checks(check_config))


@pytest.mark.parametrize("service", ["echo", "journal", "ledger"])
@pytest.mark.parametrize("logon_ms", [math.nan, math.inf, -1, 1e300, "5", [1], True])
@pytest.mark.parametrize("check_config", [False, True])
def test_a_logon_ms_that_is_no_time_is_said_with_its_key(d: Path, service: str, logon_ms: Any, check_config: bool) -> None:
    """A NaN or infinite logon_ms held every session open for ever (asyncio.sleep(nan) never
    returns), a string or a list was said without the key (float()'s own error)."""
    data = copy.deepcopy(HOST)
    data["host"]["service"] = service
    data["service_options"] = {**SERVICES.get(service, {}), "logon_ms": logon_ms}
    code, lines = through_cli(d, data, HostConfig, host_checks(check_config))
    assert code == EXIT_CONFIG and any("host.service:" in line and "logon_ms must be" in line for line in lines), lines


def multiline_factory(host: str, **options: Any) -> Any:
    """A service of one's own whose factory fails with an error of two lines."""
    raise ValueError("first line\nsecond line")


def test_a_service_that_fails_in_lines_and_an_option_name_with_a_line_break_are_each_one_line(d: Path) -> None:
    """A service's own error (a factory's, Python's own naming an unknown keyword argument as it
    came) came out as it was: a line break in it cut the line in two."""
    data = copy.deepcopy(HOST)
    data["host"]["service"] = "tests.test_config_fuzz:multiline_factory"
    code, lines = through_cli(d, data, HostConfig, host_checks(False))
    assert code == EXIT_CONFIG and any("first line\\nsecond line" in line for line in lines), lines
    data = copy.deepcopy(HOST)
    data["host"]["service"] = "ledger"
    data["service_options"] = {**SERVICES["ledger"], "a\x1fb": 1}
    code, lines = through_cli(d, data, HostConfig, host_checks(False))
    assert code == EXIT_CONFIG and any('service_options: "a\\u001Fb": not an option name' in line for line in lines), lines


LEDGER_BAD = [
    ("busy_timeout", math.nan),
    ("busy_timeout", -1),
    ("command_timeout", math.inf),
    ("tx_idle_timeout", "x"),
    ("pool_size", -3),
    ("keep_last", "x"),
    ("keep_last", 1.5),
    ("keep_hours", "x"),
    ("keep_hours", math.inf),
    ("idempotency", "no"),
    ("dsn", 5),
]


@pytest.mark.parametrize("key, value", LEDGER_BAD)
def test_a_ledger_option_of_the_wrong_kind_is_said_with_its_key(d: Path, key: str, value: Any) -> None:
    """Taken as they came (a NaN timeout, a pool of -3, idempotency = "no", a string: true), or
    refused with int()'s or float()'s own words, naming no key."""
    data = copy.deepcopy(HOST)
    data["host"]["service"] = "ledger"
    data["service_options"] = {**SERVICES["ledger"], key: value}
    code, lines = through_cli(d, data, HostConfig, host_checks(False))
    assert code == EXIT_CONFIG and any("host.service:" in line and f"{key} must be" in line for line in lines), lines


@FUZZ
@given(case=mutated(CTL))
@example(case=case_of(CTL, ("secret_file",), "a\nb"))
@example(case=case_of(CTL, ("hosts", 0), "a\nb:1"))
@example(case=case_of(CTL, ("cp",), ["\x00", "\x00", "\x00"]))  # (three CPs named, each a control character)
@example(case=case_of(CTL, ("hosts",), ["a\nb:1", "c:2", "d:3"]))
def test_a_mutated_ctl_config_is_accepted_or_said_in_lines(d: Path, case: tuple[dict[str, Any], list[Any]]) -> None:
    p = d / "ctl.toml"
    p.write_text(toml(case[0]), encoding="utf-8")
    try:
        load_target(str(p), None, (), None)
    except TargetError as exc:
        assert exc.errors
        for e in exc.errors:
            one_line(e)


def test_a_section_twice_is_one_line(d: Path) -> None:
    p = d / "twice.toml"
    text = "".join(f"[host]\nname = {toml_str(str(i))}\n" for i in range(2))
    p.write_text(text)
    for model, checks in ((HostConfig, host_checks(True)), (CPConfig, cp_checks(True))):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
            load_or_exit(p, model, **checks)
        assert exc.value.code == EXIT_CONFIG and "TOML syntax error" in err.getvalue()
        for line in err.getvalue().splitlines():
            one_line(line)


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=env)


CLI_CASES: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("a section as an array of tables", lambda c: c.__setitem__("terminals", {"name": "X"})),
    ("a NaN timing", lambda c: c[next(iter(c))].__setitem__("secret_file", math.nan)),
    ("a huge number", lambda c: c["terminal_groups"][0].__setitem__("count", 2**63 - 1)),
    ("a key with a NUL", lambda c: c[next(iter(c))].__setitem__("\0", "\0")),
]


@pytest.mark.parametrize("what, mutate", CLI_CASES, ids=[c[0] for c in CLI_CASES])
@pytest.mark.parametrize("mod, base", [("hsb.host", HOST), ("hsb.cp", CP)])
def test_the_daemons_check_config_exits_78_without_a_traceback(tmp_path: Path, mod: str, base: dict[str, Any], what: str, mutate: Any) -> None:
    (tmp_path / "secret").write_text("s3cret\n")
    (tmp_path / "secret").chmod(0o600)
    data = copy.deepcopy(base)
    mutate(data)
    (tmp_path / "c.toml").write_text(toml(data))
    r = run(mod, "--config", str(tmp_path / "c.toml"), "--check-config", cwd=tmp_path)
    assert r.returncode == EXIT_CONFIG, r.stderr
    assert "Traceback" not in r.stderr and all(line.startswith("config ") for line in r.stderr.splitlines()), r.stderr


def test_hsbctl_says_a_bad_ctl_config_and_exits_3(tmp_path: Path) -> None:
    (tmp_path / "ctl.toml").write_text(toml({"cp": math.nan, "hosts": "x", "tls": [1], "\0": 1, "secret_file": "\0"}))
    r = run("hsb.ctl", "--config", str(tmp_path / "ctl.toml"), "status", cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr and all(line.startswith("error: ") for line in r.stderr.splitlines()), r.stderr
