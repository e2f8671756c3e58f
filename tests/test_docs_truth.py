"""The documentation (README.md and every docs/*.md) against the code, mechanically (the
references and paths are in tests/test_docs_truth_refs.py):

1. every Prometheus metric the docs name (`hsb_…`, `process_…`; a counter as NAME_total, a
   histogram as NAME or NAME_bucket/_sum/_count) is one the daemons export, and every hsb_
   metric exported is in docs/operations.md. The names come from running the collectors of
   hsb/ops/metrics.py (the only place metrics are made) on statuses that take every branch,
   not from reading its source;
2. every option shown with a command (`hsbctl … --flag`, `hsbd --flag`, `hsbcpd --flag`,
   `hsbterm … --flag`, in code blocks and inline code) is one that (sub)command's click
   definition takes, and every subcommand shown exists (the entry points of pyproject.toml);
3. every config key in the docs' ```toml blocks (settings shown commented out too, and
   [service_options] against the service's own factory) is one the schema --check-config
   validates with knows for its section; so is every `section.key` / `[section] key` in
   inline code; and README's configuration reference has every key of the schema, none it
   lacks, each with the schema's default.

Not repeated here (their own tests): the log events of operations.md's tables
(test_operations_events.py), the README's command table answering --help (test_operator.py),
the alert rules' metrics and section names (test_prometheus.py).

Each check is a function of a document's text, so that the last tests can show it finds one
line of a real document broken on purpose."""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import pytest

from tests.support.markdown import DOCS, ROOT, doc_text, inline_code, rel, split_markdown

pytestmark = pytest.mark.timeout(60)

OPERATIONS = ROOT / "docs" / "operations.md"


# --- 1. metrics ----------------------------------------------------------------------------------

# hsb_ words in the docs that are no metric, each with what it is
NOT_METRICS = {
    "hsb_cp": "keepalived's vrrp_instance name in the two-CP-machines setup (operations.md §18)",
    "hsb_idempotency": "the ledger service's database table (ledger.md)",
}
# exported metrics left out of docs/operations.md on purpose, each with the reason (none yet)
UNDOCUMENTED_METRICS: dict[str, str] = {}


def _families(collector: Any) -> list[Any]:
    return list(collector.collect())


@cache
def families_by_daemon() -> dict[str, dict[str, str]]:
    """Every metric family each daemon can export ({name: type}), from running their collectors
    on statuses that take every branch (TLS on, --supervise, a serving CP with a fsync journal,
    its held bytes and switch history)."""
    import tempfile

    from hsb.config import load
    from hsb.cp.config import CPConfig
    from hsb.cp.core import CP
    from hsb.cp.journal.completion import SYNC_BUCKETS
    from hsb.ops.metrics import CPCollector, HostCollector, ProcessMetrics
    from tests.support.procs import cp_config
    from tests.test_prometheus import _host_status

    host = _host_status(tls={"enabled": True, "days_left": 30})
    with tempfile.TemporaryDirectory() as d:
        cp = CP(load(cp_config(Path(d), terminals=2, durability="none"), CPConfig), None)
        cp_st = cp.status()
    assert cp_st["state"] != "waiting"
    cp_st.update(
        tls={"enabled": True, "days_left": 30},
        supervisor={"restarts": 0},
        held_bytes={"total": 0, "kept": 0, "bound": 1, "reached": False},
        journal={"durability": "fsync", "state": "ok", "size_bytes": 0, "segments": 1, "stalls": 0},
    )
    journal = SimpleNamespace(sync_counts=[0] * len(SYNC_BUCKETS), sync_sum=0.0)
    from hsb.ops import runmark

    was, runmark.MARK.unclean = runmark.MARK.unclean, False  # (a mark file read: hsb_unclean_start said)
    try:
        by_daemon = {
            "hsbd": {f.name: f.type for f in [*_families(HostCollector(lambda: host)), *_families(ProcessMetrics())]},
            "hsbcpd": {
                f.name: f.type for f in [*_families(CPCollector(lambda: cp_st, lambda: journal, lambda: cp.history)), *_families(ProcessMetrics())]
            },
        }
    finally:
        runmark.MARK.unclean = was
    return by_daemon


def exported_families() -> dict[str, str]:
    by = families_by_daemon()
    return {**by["hsbd"], **by["hsbcpd"]}


def exposed_names() -> dict[str, str]:
    """Each name a scrape shows or a doc may use for it -> its family: a counter as NAME_total,
    a histogram as NAME (the family) and NAME_bucket/_sum/_count, others as NAME."""
    out = {}
    for name, kind in exported_families().items():
        if kind == "counter":
            out[name + "_total"] = name
        elif kind == "histogram":
            out.update({name + s: name for s in ("", "_bucket", "_sum", "_count")})
        else:
            out[name] = name
    return out


METRIC_TOKEN = re.compile(r"(?<![\w/.-])(?:hsb|process)_[a-z0-9_]*[a-z0-9]")


def unknown_metrics(text: str) -> list[str]:
    names = exposed_names()
    bad = []
    for n, line in enumerate(text.splitlines(), 1):
        for tok in METRIC_TOKEN.findall(line):
            if tok in names or tok in NOT_METRICS:
                continue
            fam = exported_families().get(tok)
            why = f"a {fam}, exported as {tok}_total" if fam == "counter" else "not exported"
            bad.append(f"{n}: {tok}: {why}")
    return bad


def undocumented_metrics(text: str) -> list[str]:
    said = {exposed_names()[t] for t in METRIC_TOKEN.findall(text) if t in exposed_names()}
    return sorted(f for f in exported_families() if f.startswith("hsb_") and f not in said and f not in UNDOCUMENTED_METRICS)


def metric_table_problems(text: str) -> list[str]:
    """The rows of operations.md's metrics table (`| metric | hsbd | hsbcpd | meaning |`) whose
    ✓ marks are not the daemons that export the metrics of the row."""
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) != 4 or not cells[0].startswith("`hsb_"):
            continue
        said = {d for d, c in zip(("hsbd", "hsbcpd"), cells[1:3], strict=True) if c.startswith("✓")}
        for tok in METRIC_TOKEN.findall(cells[0]):
            fam = exposed_names().get(tok)
            by = {d for d, fams in families_by_daemon().items() if fam in fams}
            if fam is not None and by != said:
                problems.append(f"{n}: {tok}: marked for {sorted(said)}, exported by {sorted(by)}")
    return problems


def test_the_metrics_table_marks_the_daemons_that_export_each() -> None:
    assert len([ln for ln in OPERATIONS.read_text(encoding="utf-8").splitlines() if ln.startswith("| `hsb_")]) >= 50
    assert metric_table_problems(OPERATIONS.read_text(encoding="utf-8")) == []


def test_the_metrics_are_found() -> None:
    """Every family hsb/ops/metrics.py names comes out of the collectors here: a new one behind
    a branch these statuses do not take would otherwise be checked by nothing."""
    fams = exported_families()
    src = (ROOT / "hsb" / "ops" / "metrics.py").read_text(encoding="utf-8")
    named = {n.removesuffix("_total") for n in re.findall(r'(?:_g|_c|_histogram|_kind_histogram|MetricFamily)\(\s*"((?:hsb|process)_\w+)"', src)}
    assert len(named) >= 60 and named <= set(fams), sorted(named - set(fams))
    assert {"hsb_serving", "hsb_journal_sync_seconds", "hsb_cp_worker_restarts", "hsb_tls_cert_expiry_days"} <= set(fams)
    assert fams["hsb_journal_sync_seconds"] == "histogram" and fams["hsb_replies"] == "counter"


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_every_metric_mentioned_is_exported(doc: Path) -> None:
    assert unknown_metrics(doc.read_text(encoding="utf-8")) == []


def test_every_exported_metric_is_in_the_operations_guide() -> None:
    assert undocumented_metrics(OPERATIONS.read_text(encoding="utf-8")) == []
    said = {t for d in DOCS for t in METRIC_TOKEN.findall(d.read_text(encoding="utf-8"))}
    assert set(NOT_METRICS) <= said, "NOT_METRICS names a word no document has now: remove it"
    assert set(UNDOCUMENTED_METRICS) <= set(exported_families()), "UNDOCUMENTED_METRICS names a metric no longer exported"


# --- 2. command-line options ---------------------------------------------------------------------

PROGRAMS = {"hsbctl": "hsb.ctl.main", "hsbd": "hsb.host.main", "hsbcpd": "hsb.cp.main", "hsbterm": "hsb.term.main"}
INVOCATION = re.compile(r"(?:^|(?<=[\s/(=$'\"`]))(hsbctl|hsbd|hsbcpd|hsbterm)(?=\s|$)")
# where a command starts: the line's or the span's start (after a prompt), a path (/usr/bin/),
# `ExecStart=`, `$(`, a quote, or after sudo, &&, ;, |, exec, "with", "use" ("create it with
# hsbctl file create …" in a message quoted). Not after another tool's option (`journalctl
# -u hsbcpd -o cat`), nor inside a message quoted in code ("… ask it, hsbctl asks it").
COMMAND_START = re.compile(r"(?:^\s*(?:[$#]\s+)?|[/='`]|\$\(|(?:sudo(?:\s+-u\s+\S+)?|&&|;|\||\{|--|:|exec|then|do|with|use|run)\s+)$")
PLACEHOLDER = re.compile(r"^(?:…|\.\.\.|[A-Z][A-Z0-9_|.-]*|<.*>|\[.*)$")


@cache
def program(name: str) -> click.Command:
    import importlib

    cmd = importlib.import_module(PROGRAMS[name]).main
    assert isinstance(cmd, click.Command)
    return cmd


def _option(cmd: click.Command, flag: str) -> click.Option | None | bool:
    """The option `flag` of `cmd`; True for the help flags; None: it has no such option."""
    if flag in (cmd.context_settings.get("help_option_names") or ["--help"]):
        return True
    for p in cmd.params:
        if isinstance(p, click.Option) and flag in (*p.opts, *p.secondary_opts):
            return p
    return None


def _words(rest: str) -> list[str]:
    rest = re.split(r"\s(?:\||\|\||&&|#|>|2>)\s|[`);'\"│]|,\s|\\\|", rest)[0]
    try:
        return shlex.split(rest)
    except ValueError:
        return rest.split()


def command_problems(prog: str, rest: str) -> list[str]:
    """What click would refuse in `prog rest` (one command, up to a pipe or the end): an option
    the (sub)command does not take, a subcommand its group does not have. Values and arguments
    are not checked; placeholders (`…`, `COMMAND`, `[--flag]`) stand for anything."""
    cmd = program(prog)
    path = [prog]
    words = _words(re.sub(r"\$\([^)]*\)", "VALUE", rest))
    problems = []
    i = 0
    while i < len(words):
        w = words[i].strip("[]")
        i += 1
        if w.startswith("$"):
            continue  # a shell variable ($CTL: `-c ctl.toml`)
        if w.startswith("-") and len(w) > 1 and not re.fullmatch(r"-\d[\d.]*", w):
            flag = w.split("=", 1)[0]
            opt = _option(cmd, flag)
            if opt is None:
                problems.append(f"{' '.join(path)} has no option {flag}")
            elif isinstance(opt, click.Option) and not (opt.is_flag or opt.count) and "=" not in w:
                i += 1  # its value
        elif isinstance(cmd, click.Group) and not isinstance(cmd, type(None)):
            if w in cmd.commands:
                cmd = cmd.commands[w]
                path.append(w)
            elif PLACEHOLDER.match(words[i - 1]) or "|" in w or "/" in w:
                return problems  # `hsbctl stop|promote`, `hsbctl COMMAND`: nothing more to know
            else:
                problems.append(f"{' '.join(path)} has no subcommand {w!r}")
                return problems
    return problems


def invocations(text: str) -> Iterator[tuple[int, str, str]]:
    """(line, program, the rest of its command line) of every command shown in code: in code
    blocks (a line continued with a backslash joined to the next) and in inline code."""
    blocks, prose = split_markdown(text)
    for b in blocks:
        lines = b.body.replace("\\\n", " ").splitlines()
        for k, line in enumerate(lines):
            if line.lstrip().startswith("#"):
                continue
            for m in INVOCATION.finditer(line):
                if COMMAND_START.search(line[: m.start()]):
                    yield b.line + k, m.group(1), line[m.end() :]
    for n, code in inline_code(prose):
        for m in INVOCATION.finditer(code):
            if COMMAND_START.search(code[: m.start()]):
                yield n, m.group(1), code[m.end() :]


def unknown_options(text: str) -> list[str]:
    return [f"{n}: {prog}{rest}: {p}" for n, prog, rest in invocations(text) for p in command_problems(prog, rest)]


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_every_option_shown_is_one_the_command_takes(doc: Path) -> None:
    assert unknown_options(doc.read_text(encoding="utf-8")) == []


# --- 3. config keys ------------------------------------------------------------------------------


@cache
def models() -> dict[str, Any]:
    """The schema of each config section, the one --check-config validates with: "tls" is
    hsbcpd's [tls], "host.tls" hsbd's (fewer keys)."""
    from hsb.config import TLSLinks, TLSSection
    from hsb.cp.config import CPConfig, CPSection
    from hsb.host.config import HostConfig, HostSection, TakeoverSection
    from hsb.terminals import TerminalDef, TerminalGroup

    assert set(CPConfig.model_fields) == {"cp", "tls", "terminals", "terminal_groups"}
    assert set(HostConfig.model_fields) == {"host", "takeover", "tls", "service_options", "terminals", "terminal_groups"}
    return {
        "cp": CPSection,
        "host": HostSection,
        "takeover": TakeoverSection,
        "tls": TLSSection,
        "host.tls": TLSLinks,
        "terminals": TerminalDef,
        "terminal_groups": TerminalGroup,
    }


@cache
def schema() -> dict[str, set[str]]:
    """The keys each section takes: the daemons' models, and hsbctl's ctl config ("" its top
    level, ".tls" its tls table)."""
    from hsb.ctl import target

    return {**{s: set(m.model_fields) for s, m in models().items()}, "": set(target.KNOWN_KEYS), ".tls": set(target._TLS_EXAMPLE)}


def _service_problem(service: str, options: dict[str, Any]) -> str:
    from hsb.service import api

    if service == "myapp.service:Orders":  # docs/ledger.md's own example: its factory is in that page
        from tests.test_ledger_doc_example import example

        ns: dict[str, Any] = {}
        exec(compile(example(), "docs/ledger.md", "exec"), ns)
        return api.unknown_options(service, ns["Orders"], options)
    try:
        return api.unknown_options(service, api._factory(service), options)
    except api.ServiceError as exc:
        return str(exc)


def _commented(line: str) -> dict[str, Any]:
    """The settings a comment line shows (`# key = value`, or several, comma-separated)."""
    m = re.match(r"^\s*#\s*([A-Za-z_]\w*\s*=\s*\S.*)$", line)
    if not m:
        return {}
    for parts in ([m.group(1)], re.split(r",\s*(?=[A-Za-z_]\w*\s*=)", m.group(1))):
        try:
            return {k: v for p in parts for k, v in tomllib.loads(p.split("  #")[0]).items()}
        except tomllib.TOMLDecodeError:
            continue
    return {}


def toml_tables(body: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(section, its settings) of a TOML block, its settings shown commented out too, each a
    table of its own; "" for the top level."""
    data = tomllib.loads(body)
    for name, v in data.items():
        for t in v if isinstance(v, list) else [v]:
            if isinstance(t, dict) and re.search(rf"^\s*\[\[?{name}\]", body, re.M):
                yield name, t
    yield "", {k: v for k, v in data.items() if not re.search(rf"^\s*\[\[?{k}\]", body, re.M)}
    section = ""
    for line in body.splitlines():
        m = re.match(r"^\s*\[\[?([\w.]+)\]\]?", line)
        section = m.group(1) if m else section
        if shown := _commented(line):
            yield section, shown


def toml_problems(body: str) -> list[str]:
    """The keys of one ```toml block that its section's schema does not know: a block with
    [section] headers is a daemon's config, one without is hsbctl's ctl config."""
    try:
        tables = list(toml_tables(body))
    except tomllib.TOMLDecodeError as exc:
        return [f"not TOML: {exc}"]
    daemon = any(name for name, _ in tables)
    host = any(name == "host" for name, _ in tables)
    service = next((t["service"] for name, t in tables if name == "host" and "service" in t), "echo")
    problems = []
    for name, table in tables:
        if name == "service_options":
            if why := _service_problem(service, dict.fromkeys(table)):
                problems.append(f"[service_options]: {why}")
            continue
        if daemon and not name:
            problems.extend(f"{k}: a daemon config's key outside any section" for k in table)
            continue
        known = schema().get("host.tls" if name == "tls" and host else name)
        if known is None:
            problems.append(f"[{name}]: no such section")
            continue
        problems.extend(f"[{name}] {k}: not a key of the section" if name else f"{k}: not a ctl config key" for k in table if k not in known)
        if not daemon and isinstance(table.get("tls"), dict):
            problems.extend(f"tls.{k}: not a key of the ctl config's tls" for k in table["tls"] if k not in schema()[".tls"])
    return problems


def toml_block_problems(text: str) -> list[str]:
    blocks, _ = split_markdown(text)
    return [f"{b.line}: {p}" for b in blocks if b.lang == "toml" for p in toml_problems(b.body)]


SECTION_KEY = re.compile(r"(?:^\[(cp|host|takeover|tls)\]\s+([a-z_]+)(?=\s*=|\s*$)|(?<![\w./'-])(cp|host|takeover|tls)\.([a-z_]+)\b(?![.(/'-]))")
# `section.word` in inline code that is no config key, each with what it is (and the crash points
# of hsb.faults.POINTS, `cp.mid_switch`: docs/design.md §13 lists them)
NOT_KEYS = {
    "cp.toml": "a config file",
    "host.toml": "a config file",
}


def inline_key_problems(text: str) -> list[str]:
    """Keys named with their section in the prose's inline code (`[cp] held_total_bytes`,
    `host.hook_timeout`, `takeover.records = 403`) that the section's schema does not know
    (`[tls]`: hsbcpd's, the larger)."""
    from hsb.faults import POINTS

    _, prose = split_markdown(text)
    problems = []
    for n, code in inline_code(prose):
        for m in SECTION_KEY.finditer(code):
            section, key = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
            if key not in schema()[section] and f"{section}.{key}" not in NOT_KEYS and f"{section}.{key}" not in POINTS:
                problems.append(f"{n}: {m.group(0)}: [{section}] has no key {key}")
    return problems


def reference_rows(text: str) -> Iterator[tuple[int, str, str, str]]:
    """(line, section, key, default cell) of each row of README's configuration reference
    tables: `name` under "### hsbcpd (`[cp]`)" is [cp]'s, `tls.x` there hsbcpd's [tls] and under
    "### hsbd" hsbd's ("host.tls"), `host.x`, `takeover.x`, `terminals[].x` as they say."""
    lines = text.splitlines()
    start = lines.index("## Configuration reference")
    daemon = ""
    for n, line in enumerate(lines[start + 1 :], start + 2):
        if line.startswith("## "):
            return
        if line.startswith("### "):
            m = re.search(r"\(`\[\[?(\w+)", line)
            daemon = m.group(1) if m else ""
        m = re.match(r"^\| `([\w.\[\]]+)` \| ([^|]*) \|", line)
        if not m or m.group(1).startswith("["):
            continue
        key = m.group(1)
        section, _, name = key.rpartition(".")
        section = section.removesuffix("[]") or daemon
        if section == "tls" and daemon == "host":
            section = "host.tls"
        yield n, section, name, m.group(2).strip()


def config_reference_problems(text: str) -> list[str]:
    """README's reference rows against the schema: the key exists in its section, and the default
    it shows (a TOML value in backticks, or "required") is the schema's."""
    models_ = models()
    problems = []
    seen: set[tuple[str, str]] = set()
    for n, section, key, default in reference_rows(text):
        seen.add((section, key))
        field = models_[section].model_fields.get(key) if section in models_ else None
        if field is None:
            problems.append(f"{n}: {section}.{key}: not a key of the schema")
            continue
        if default.startswith("required"):
            if not field.is_required():
                problems.append(f"{n}: {section}.{key}: shown as required, the schema's default is {field.get_default(call_default_factory=True)!r}")
            continue
        m = re.match(r"`([^`]+)`", default)
        if m is None:
            continue
        try:
            shown = tomllib.loads(f"v = {m.group(1)}")["v"]
        except tomllib.TOMLDecodeError:
            continue
        actual = None if field.is_required() else field.get_default(call_default_factory=True)
        if shown != actual or type(shown) is not type(actual) and not isinstance(actual, float):
            problems.append(f"{n}: {section}.{key}: default shown {shown!r}, the schema's {actual!r}")
    for section, model in models_.items():
        problems.extend(
            f"{section}.{k}: in the schema, not in README's configuration reference" for k in model.model_fields if (section, k) not in seen
        )
    return problems


def test_the_commands_are_found() -> None:
    """The parsing sees the commands shown, and click's definitions are read as the CLI has them."""
    found = {(prog, rest.split()[0] if rest.split() else "") for d in DOCS for _, prog, rest in invocations(d.read_text(encoding="utf-8"))}
    assert {("hsbctl", "status"), ("hsbd", "--role"), ("hsbcpd", "--config"), ("hsbterm", "load")} <= found
    assert sum(1 for d in DOCS for _ in invocations(d.read_text(encoding="utf-8"))) >= 250
    assert command_problems("hsbctl", "-c ctl.toml status --json --watch 2 | less") == []
    assert command_problems("hsbterm", "load --cp $(jq -r .cp x.json) -n 200 --rate 1000 > out &") == []
    assert list(invocations("journalctl -u hsbcpd -o cat\nsee `this hsbctl asks it`")) == []


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_every_config_key_in_a_toml_block_is_in_the_schema(doc: Path) -> None:
    assert toml_block_problems(doc.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_every_section_key_in_inline_code_is_in_the_schema(doc: Path) -> None:
    assert inline_key_problems(doc.read_text(encoding="utf-8")) == []


def test_the_readme_configuration_reference_is_the_schema() -> None:
    rows = list(reference_rows(doc_text("README.md")))
    assert len(rows) >= 60 and {r[1] for r in rows} == set(models())
    assert config_reference_problems(doc_text("README.md")) == []
    assert set(NOT_KEYS) <= {
        m.group(0) for d in DOCS for _, c in inline_code(split_markdown(d.read_text(encoding="utf-8"))[1]) for m in SECTION_KEY.finditer(c)
    }


# --- each check finds a real document's line broken on purpose ----------------------------------


def broken(name: str, old: str, new: str) -> str:
    text = doc_text(name)
    assert text.count(old) == 1, f"{name} no longer has {old!r} once: pick another line"
    return text.replace(old, new)


def test_a_metric_renamed_or_left_out_is_found() -> None:
    text = broken("docs/operations.md", "| `hsb_cp_active_connected` |", "| `hsb_cp_active_connection` |")
    assert unknown_metrics(text) == [
        f"{text.splitlines().index('| `hsb_cp_active_connection` | | ✓ | 1 while an active host is connected |') + 1}: hsb_cp_active_connection: not exported"
    ]
    assert undocumented_metrics(text) == ["hsb_cp_active_connected"]
    assert unknown_metrics("rate(hsb_replies[1m]), hsb_journal_sync_seconds_bucket, hsb_serving") == [
        "1: hsb_replies: a counter, exported as hsb_replies_total"
    ]


def test_an_option_or_subcommand_the_cli_lacks_is_found() -> None:
    text = broken("docs/operations.md", "hsbctl $CTL switchover --yes  ", "hsbctl $CTL switchover --yse  ")
    assert [p.split(": ")[-1] for p in unknown_options(text)] == ["hsbctl switchover has no option --yse"]
    text = broken("README.md", "| `hsbcpd --config FILE --supervise` |", "| `hsbcpd --config FILE --supervised` |")
    assert [p.split(": ")[-1] for p in unknown_options(text)] == ["hsbcpd has no option --supervised"]
    assert [p.split(": ")[-1] for p in unknown_options("`hsbctl file inspec PATH`")] == ["hsbctl file has no subcommand 'inspec'"]


def test_a_key_the_schema_lacks_is_found() -> None:
    text = broken("docs/operations.md", "held_total_bytes = 1073741824    #", "held_totals_bytes = 1073741824    #")
    assert [p.split(": ", 1)[1] for p in toml_block_problems(text)] == ["[cp] held_totals_bytes: not a key of the section"]
    text = broken("docs/tls.md", '# terminal_ca_file = "/etc/hsb/tls/terminal-ca.pem"', '# terminal_ca = "/etc/hsb/tls/terminal-ca.pem"')
    assert [p.split(": ", 1)[1] for p in toml_block_problems(text)] == ["[tls] terminal_ca: not a key of the section"]
    text = broken("docs/ledger.md", "# pool_size = 10, command_timeout = 10.0,", "# pool_size = 10, command_timeout_s = 10.0,")
    assert [p.split(": ", 1)[1] for p in toml_block_problems(text)] == [
        "[service_options]: unknown option 'command_timeout_s' (ledger takes: dsn, sqlite, pool_size, command_timeout, tx_idle_timeout,"
        " keep_hours, keep_last, busy_timeout, idempotency, logon_ms)"
    ]
    assert toml_problems('cp = "a:1"\nhost = "b:2"\ntls = { ca_file = "x", cert = "y" }') == [
        "host: not a ctl config key",
        "tls.cert: not a key of the ctl config's tls",
    ]
    assert toml_problems("[host]\nname = 'a'\n[tls]\nterminals = true") == ["[tls] terminals: not a key of the section"]  # hsbd's [tls]
    assert inline_key_problems("see `host.hook_timeouts` and `[cp] held_bound = 3`, `[cp] hold = 3`") == [
        "1: host.hook_timeouts: [host] has no key hook_timeouts",
        "1: [cp] hold: [cp] has no key hold",
    ]


def test_a_reference_row_unlike_the_schema_is_found() -> None:
    text = broken("README.md", "| `held_bound` | `256` (1", "| `held_bound` | `255` (1")
    assert [p.split(": ", 1)[1] for p in config_reference_problems(text)] == ["cp.held_bound: default shown 255, the schema's 256"]
    text = broken("README.md", "| `tls.terminals` | `false` |", "| `tls.terminal` | `false` |")
    assert sorted(p.split(": ", 1)[-1] for p in config_reference_problems(text)) == [
        "in the schema, not in README's configuration reference",
        "tls.terminal: not a key of the schema",
    ]
    text = broken("README.md", "| `host.peer` | required |", '| `host.peer` | `""` |')
    assert [p.split(": ", 1)[1] for p in config_reference_problems(text)] == ["host.peer: default shown '', the schema's None"]


def test_a_metric_marked_for_the_wrong_daemon_is_found() -> None:
    text = broken("docs/operations.md", "| `hsb_paused` | | ✓ |", "| `hsb_paused` | ✓ | ✓ |")
    assert [p.split(": ", 1)[1] for p in metric_table_problems(text)] == ["hsb_paused: marked for ['hsbcpd', 'hsbd'], exported by ['hsbcpd']"]
