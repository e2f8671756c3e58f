"""More mechanical checks of the documents against the repository (the first ones are in
tests/test_docs_truth.py and tests/test_docs_truth_refs.py):

6. BENCHMARKS.md (the rule: every figure has its raw JSON in bench/results/ and the command that
   made it): every `bench/results/…` file it names exists (`{a,b}` alternatives and `{1..4}`
   ranges expanded; a name with a placeholder, `<code>`, `<n>`, `-N.`, `…` or `*`, matches at
   least one file), every bench/results/*.json parses as JSON, every `bench/NAME.py` it names
   exists, and every `--flag` shown with `bench/NAME.py` in a command is one that script's
   argparse parser takes (its `--help`, run once per script);
7. docs/operations.md §17: every exit status its table gives hsbd/hsbcpd and hsbctl is one their
   code exits with, and every status their code exits with is in the table. The code's statuses
   are read from its syntax tree: the `EXIT_*` constants, the arguments of sys.exit, os._exit,
   SystemExit and the daemons' die(), and (hsbctl) what its int-returning functions return and
   what it sets `exit_status` to;
8. every crash-point name in docs/ and README.md (`host.…`/`cp.…` of the form `mid_…`,
   `after_…`, `before_…`, `between_…`) is one of hsb.faults.POINTS, and every point in POINTS is
   named in docs/;
9. every configs/**/*.toml is one tests/test_config.py runs `--check-config` on (the daemons'),
   or the ctl config, which hsbctl loads here.

Each check is a function of a document's text (or the code's statuses), so that the last tests
can show it finds one line of a real document broken on purpose."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest

from tests.support.markdown import DOCS, ROOT, doc_text, inline_code, rel, split_markdown

pytestmark = pytest.mark.timeout(60)

BENCH = ROOT / "BENCHMARKS.md"


# --- 6. BENCHMARKS.md: raw results and commands ---------------------------------------------------

RESULT_TOKEN = re.compile(r"bench/results/[\w.{},<>*…-]*")
# raw files an old entry's command pattern names but that were never made: the entry records what
# was run then and is not rewritten; each with its session and why
NOT_MADE: dict[str, str] = {
    "bench/results/cprestart-ab23-base23-3.json": "session 23: `ab23` had runs 1 and 2 only (the line after the command says so)",
    "bench/results/cprestart-ab23-new23-3.json": "session 23: `ab23` had runs 1 and 2 only (the line after the command says so)",
    "bench/results/scale-19000-notices-paced6-1.json": "session 17: paced 1 + 6 ms ran in rounds 4 and 5 only (its table's empty cells)",
    "bench/results/scale-19000-notices-paced6-2.json": "session 17: paced 1 + 6 ms ran in rounds 4 and 5 only (its table's empty cells)",
    "bench/results/scale-19000-notices-paced6-3.json": "session 17: paced 1 + 6 ms ran in rounds 4 and 5 only (its table's empty cells)",
}


def expand(path: str) -> list[str]:
    """`a-{b,c}-{1..3}.json` -> a-b-1.json, …, a-c-3.json (bash's brace expansion, one level)."""
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", m.group(1))
    alts = [str(i) for i in range(int(r.group(1)), int(r.group(2)) + 1)] if r else m.group(1).split(",")
    return [p for alt in alts for p in expand(path[: m.start()] + alt + path[m.end() :])]


def as_glob(path: str) -> str:
    """A name with placeholders (`<code>`, `…`, `-N.`) as a glob; a plain name unchanged."""
    return re.sub(r"<[^<>]*>|…|(?<=-)N(?=[.-])", "*", path)


def result_problems(text: str) -> list[str]:
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        for tok in RESULT_TOKEN.findall(line):
            for path in expand(tok):
                pattern = as_glob(path)
                found = any(ROOT.glob(pattern)) if "*" in pattern else (ROOT / path).exists()
                if not found and path not in NOT_MADE:
                    problems.append(f"{n}: {path}: {'no file matches' if '*' in pattern else 'not in bench/results'}")
    return problems


def code_spans(text: str) -> list[str]:
    """Inline code (one may go on over a line break) and the lines of fenced blocks."""
    blocks, prose = split_markdown(text)
    joined = "\n".join(line for _, line in prose)
    spans = [m.group(2) for m in re.finditer(r"(`+)((?:(?!\1)[^\n]|\n(?!\n))+?)\1", joined)]
    return spans + [line for b in blocks for line in b.body.splitlines()]


SCRIPT = re.compile(r"bench/(\w+)\.py((?:(?!bench/\w+\.py|;|&&|\|).)*)", re.S)
FLAG = re.compile(r"(?<![\w-])(--[A-Za-z][\w-]*)")


def commands(text: str) -> dict[str, set[str]]:
    """{script: the --flags shown with it} from the code in `text`."""
    out: dict[str, set[str]] = {}
    for span in code_spans(text):
        for m in SCRIPT.finditer(span):
            out.setdefault(m.group(1), set()).update(FLAG.findall(m.group(2)))
    return out


def _help_options(script: str) -> frozenset[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # (this checkout's hsb, whatever the caller's path)
    r = subprocess.run([sys.executable, f"bench/{script}.py", "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"bench/{script}.py --help: {r.stderr[-500:]}"
    # the options section: each option's line starts with its strings, then two spaces and its help
    return frozenset(f for line in r.stdout.splitlines() if re.match(r"^\s+-", line) for f in FLAG.findall(re.split(r"\s{2,}", line.strip())[0]))


@cache
def accepted_options() -> dict[str, frozenset[str]]:
    """The options each bench script BENCHMARKS.md shows with flags takes, from its --help."""
    scripts = sorted(s for s, flags in commands(doc_text("BENCHMARKS.md")).items() if flags and (ROOT / "bench" / f"{s}.py").is_file())
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(scripts, pool.map(_help_options, scripts), strict=True))


def command_problems(text: str, accepted: dict[str, frozenset[str]]) -> list[str]:
    """Scripts named (in code or not) that do not exist, and flags shown that a script does not take."""
    problems = [
        f"bench/{s}.py: no such script" for s in sorted(set(re.findall(r"bench/(\w+)\.py", text))) if not (ROOT / "bench" / f"{s}.py").is_file()
    ]
    for script, flags in sorted(commands(text).items()):
        if (ROOT / "bench" / f"{script}.py").is_file():
            problems += [f"bench/{script}.py: does not take {f}" for f in sorted(flags - accepted.get(script, frozenset()))]
    return problems


def test_the_results_and_commands_are_found() -> None:
    text = doc_text("BENCHMARKS.md")
    found = {p for line in text.splitlines() for t in RESULT_TOKEN.findall(line) for p in expand(t)}
    assert {"bench/results/campaign.json", "bench/results/cp-room-after-2.json", "bench/results/cprestart-ab22-new-4.json"} <= found
    assert len(found) >= 400
    assert expand("r/a-{x,y}-{1..2}.json") == ["r/a-x-1.json", "r/a-x-2.json", "r/a-y-1.json", "r/a-y-2.json"]
    assert as_glob("r/s-ab-<code>-<n>.json") == "r/s-ab-*-*.json" and as_glob("r/c-base-N.json") == "r/c-base-*.json"
    cmds = commands(text)
    assert {"--sizes", "--reps", "--recovery", "--modes", "--no-write", "--json"} <= cmds["cprestart"]
    assert "--term-keepalive" in cmds["switchover"] and len(cmds) >= 25
    assert {"--sizes", "--json", "--no-write"} <= accepted_options()["scale"]
    assert "--help" in accepted_options()["scale"] and "--h" not in accepted_options()["scale"]


def test_every_raw_result_named_exists() -> None:
    assert result_problems(doc_text("BENCHMARKS.md")) == []


def test_the_files_never_made_are_still_named() -> None:
    named = {p for t in RESULT_TOKEN.findall(doc_text("BENCHMARKS.md")) for p in expand(t)}
    assert set(NOT_MADE) <= named and not any((ROOT / p).exists() for p in NOT_MADE)


def json_problems(files: list[Path]) -> list[str]:
    bad = []
    for f in files:
        try:
            json.loads(f.read_text(encoding="utf-8"))
        except ValueError as exc:
            bad.append(f"{f.name}: {exc}")
    return bad


def test_every_raw_result_is_json() -> None:
    files = sorted((ROOT / "bench" / "results").glob("*.json"))
    assert len(files) >= 500 and json_problems(files) == []


def test_every_bench_command_shown_is_one_its_script_takes() -> None:
    assert command_problems(doc_text("BENCHMARKS.md"), accepted_options()) == []


# --- 7. operations.md §17, exit statuses ----------------------------------------------------------

EXIT_CALLS = {"exit", "_exit", "SystemExit", "die", "_die"}  # sys.exit, os._exit, ctx.exit, the daemons' and hsbctl file's die
# statuses the code exits with that the table leaves out on purpose, each with the reason
NOT_IN_TABLE = {
    ("daemons", "70"): "hsbcpd's count audit (hsb/cp/status_view.py), on only in tests with HSB_AUDIT_COUNTS=1",
}


def _statuses(node: ast.AST | None, constants: dict[str, int]) -> set[str]:
    """The exit statuses an expression can be: int literals, EXIT_* names, `a if c else b`, `128 + N`."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return {str(node.value)}
    if isinstance(node, ast.Name) and node.id in constants:
        return {str(constants[node.id])}
    if isinstance(node, ast.IfExp):
        return _statuses(node.body, constants) | _statuses(node.orelse, constants)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add) and isinstance(node.left, ast.Constant) and node.left.value == 128:
        return {"128 + N"}
    return set()


def _exit_constants(files: list[Path]) -> dict[str, int]:
    out = {}
    for f in files:
        for node in ast.parse(f.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and type(node.value.value) is int:
                out.update({t.id: node.value.value for t in node.targets if isinstance(t, ast.Name) and t.id.startswith("EXIT_")})
    return out


def code_statuses(files: list[Path], returns: bool) -> dict[str, set[str]]:
    """{status: the files that exit with it}: the EXIT_* constants defined, the statuses given to
    an exit call, what `exit_status` is set to, and (`returns`) what int-returning functions return."""
    constants = _exit_constants(files)
    out: dict[str, set[str]] = {}
    for f in files:
        found: set[str] = {str(v) for k, v in _exit_constants([f]).items()}
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if name in EXIT_CALLS and node.args:
                    found |= _statuses(node.args[-1] if name in ("die", "_die") and len(node.args) > 1 else node.args[0], constants)
            elif isinstance(node, ast.Assign) and any(
                (isinstance(t, ast.Name) and t.id in ("exit_status", "exit_code"))
                or (isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant) and t.slice.value == "exit_status")
                for t in node.targets
            ):
                found |= _statuses(node.value, constants)
            elif isinstance(node, ast.Dict):
                found |= {
                    s
                    for k, v in zip(node.keys, node.values, strict=True)
                    if isinstance(k, ast.Constant) and k.value == "exit_status"
                    for s in _statuses(v, constants)
                }
            elif returns and isinstance(node, ast.FunctionDef) and node.returns is not None and ast.unparse(node.returns) in ("int", "int | None"):
                found |= {s for r in ast.walk(node) if isinstance(r, ast.Return) for s in _statuses(r.value, constants)}
        for s in found:
            out.setdefault(s, set()).add(rel(f))
    return out


def _py(*parts: str) -> list[Path]:
    return sorted(p for part in parts for p in ([ROOT / part] if part.endswith(".py") else (ROOT / part).rglob("*.py")))


@cache
def statuses_of_code() -> dict[str, dict[str, set[str]]]:
    return {
        "daemons": code_statuses(_py("hsb/cli.py", "hsb/cp", "hsb/host"), returns=False),
        "hsbctl": code_statuses(_py("hsb/ctl"), returns=True),
    }


def table_statuses(text: str) -> dict[str, dict[str, int]]:
    """{"daemons" / "hsbctl": {status: the table's line}} from §17's table in `text` (a row with
    no program goes on with the one above)."""
    start = text.index("\n## 17. Exit statuses")
    end = text.index("\n## ", start + 1)
    first = text[:start].count("\n") + 2
    out: dict[str, dict[str, int]] = {"daemons": {}, "hsbctl": {}}
    program = ""
    for n, line in enumerate(text[start:end].splitlines(), first):
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) < 3 or cells[1] in ("status", "---"):
            continue
        program = cells[0] or program
        group = "daemons" if re.match(r"hsb(d|cpd)\b", program) else "hsbctl" if program.startswith("hsbctl") else None
        if group is None or cells[1] == "any":  # (hsbcpd --supervise: its worker's status, any)
            continue
        for s in cells[1].split("/"):
            out[group].setdefault(s.strip(), n)
    return out


def status_problems(text: str, code: dict[str, dict[str, set[str]]]) -> list[str]:
    problems = []
    table = table_statuses(text)
    for group in ("daemons", "hsbctl"):
        for s, n in table[group].items():
            if s not in code[group]:
                problems.append(f"{n}: {group} {s}: no code exits with it")
        for s, where in sorted(code[group].items()):
            if s not in table[group] and (group, s) not in NOT_IN_TABLE:
                problems.append(f"{group} {s} ({', '.join(sorted(where))}): not in the table")
    return problems


def test_the_statuses_are_found() -> None:
    table = table_statuses(doc_text("docs/operations.md"))
    assert set(table["daemons"]) >= {"0", "1", "2", "65", "73", "75", "76", "78"}
    assert set(table["hsbctl"]) >= {"0", "1", "2", "3", "128 + N"}
    code = statuses_of_code()
    assert {"1", "2", "65", "73", "75", "76", "78"} <= set(code["daemons"])
    assert "hsb/cp/stopping.py" in code["daemons"]["75"] and "hsb/cp/status_view.py" in code["daemons"]["70"]
    assert {"0", "1", "3", "128 + N"} <= set(code["hsbctl"]) and "hsb/ctl/verdict.py" in code["hsbctl"]["3"]


def test_every_exit_status_in_the_table_is_the_codes_and_back() -> None:
    assert status_problems(doc_text("docs/operations.md"), statuses_of_code()) == []


def test_the_statuses_left_out_still_are() -> None:
    code, table = statuses_of_code(), table_statuses(doc_text("docs/operations.md"))
    assert all(s in code[g] and s not in table[g] for g, s in NOT_IN_TABLE)


# --- 8. crash points ------------------------------------------------------------------------------

CRASH_POINT = re.compile(r"^(?:host|cp)\.(?:\w+_)?(?:mid|after|before|between)_\w+$")


def crash_points_named(text: str) -> set[tuple[int, str]]:
    """(line, name) of every crash-point-like name in the inline code of `text`."""
    _, prose = split_markdown(text)
    return {(n, code) for n, code in inline_code(prose) if CRASH_POINT.match(code)}


def crash_point_problems(text: str) -> list[str]:
    from hsb.faults import POINTS

    return [f"{n}: {name}: not in hsb.faults.POINTS" for n, name in sorted(crash_points_named(text)) if name not in POINTS]


def test_the_crash_points_are_found() -> None:
    named = {name for d in DOCS for _, name in crash_points_named(d.read_text(encoding="utf-8"))}
    assert "cp.reply_before_durable" in named
    from hsb.faults import POINTS

    assert all(CRASH_POINT.match(p) for p in POINTS)  # (each would be seen where named)
    assert not crash_points_named("`host.heartbeat_timeout`, `cp.held_bound`, `cp.host_lease`")


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_every_crash_point_named_is_one(doc: Path) -> None:
    assert crash_point_problems(doc.read_text(encoding="utf-8")) == []


def undocumented_points(texts: list[str]) -> list[str]:
    """The points of hsb.faults.POINTS none of `texts` names."""
    from hsb.faults import POINTS

    named = {name for text in texts for _, name in crash_points_named(text)}
    return sorted(set(POINTS) - named)


def test_every_crash_point_is_in_the_docs() -> None:
    assert undocumented_points([d.read_text(encoding="utf-8") for d in DOCS if d.parent.name == "docs"]) == []


# --- 9. the example configs -----------------------------------------------------------------------


def test_every_example_config_is_checked(tmp_path: Path) -> None:
    """The daemons' configs/**/*.toml are each in tests/test_config.py's --check-config run; the
    one left, the ctl config, loads here as hsbctl loads it (beside a secret file, as in
    test_config), every key known and well formed."""
    from hsb.ctl.target import load_target
    from tests.test_config import test_example_configs_check_ok

    (mark,) = [m for m in test_example_configs_check_ok.pytestmark if m.name == "parametrize"]  # type: ignore[attr-defined]  # (pytest.mark's)
    checked = {cfg for _, cfg in mark.args[1]}
    configs = {p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.toml")}
    assert configs - checked == {"ctl.toml"} and checked <= configs
    (tmp_path / "ctl.toml").write_text((ROOT / "configs" / "ctl.toml").read_text(encoding="utf-8"))
    (tmp_path / "secret").write_text("s3cret\n")
    (tmp_path / "secret").chmod(0o600)
    t = load_target(str(tmp_path / "ctl.toml"), None, (), None)
    assert t.cp == "127.0.0.1:7002" and len(t.hosts) == 2


# --- each check finds a real document's line broken on purpose ----------------------------------


def broken(name: str, old: str, new: str) -> str:
    text = doc_text(name)
    assert text.count(old) == 1, f"{name} no longer has {old!r} once: pick another line"
    return text.replace(old, new)


def test_a_missing_raw_result_or_one_not_json_is_found(tmp_path: Path) -> None:
    text = broken("BENCHMARKS.md", "bench/results/switchover-ka{1,10}-{1,2}.json", "bench/results/switchover-ka{1,10}-{1,2,3}.json")
    assert [p.split(": ", 1)[1] for p in result_problems(text)] == [
        "bench/results/switchover-ka1-3.json: not in bench/results",
        "bench/results/switchover-ka10-3.json: not in bench/results",
    ]
    text = broken("BENCHMARKS.md", "bench/results/scale-19000-ab-<code>-<n>.json", "bench/results/scale-19000-abc-<code>-<n>.json")
    assert [p.split(": ", 1)[1] for p in result_problems(text)] == ["bench/results/scale-19000-abc-<code>-<n>.json: no file matches"]
    raw = (ROOT / "bench" / "results" / "tls.json").read_text(encoding="utf-8")
    (tmp_path / "tls.json").write_text(raw.rstrip()[:-1])  # cut short: its last closing brace gone
    assert [p.split(":")[0] for p in json_problems([tmp_path / "tls.json"])] == ["tls.json"]


def test_a_script_or_flag_it_does_not_take_is_found() -> None:
    text = broken("BENCHMARKS.md", "--term-keepalive {1,10}", "--keepalive {1,10}")
    assert command_problems(text, accepted_options()) == ["bench/switchover.py: does not take --keepalive"]
    text = broken("BENCHMARKS.md", "Command: `.venv/bin/python bench/tls.py`", "Command: `.venv/bin/python bench/tls2.py`")
    assert command_problems(text, accepted_options()) == ["bench/tls2.py: no such script"]


def test_an_exit_status_the_code_lacks_or_the_table_lacks_is_found() -> None:
    text = broken("docs/operations.md", "\n| | 76 | `start_refused`", "\n| | 77 | `start_refused`")
    problems = status_problems(text, statuses_of_code())
    assert [p.split(": ", 1)[-1] for p in problems] == ["daemons 77: no code exits with it", "not in the table"]
    assert problems[1].startswith("daemons 76 (hsb/cli.py)")


def test_a_crash_point_misnamed_or_left_out_is_found() -> None:
    text = broken("docs/cp-journal.md", "`cp.reply_before_durable`", "`cp.reply_before_durables`")
    assert [p.split(": ", 1)[1] for p in crash_point_problems(text)] == ["cp.reply_before_durables: not in hsb.faults.POINTS"]
    text = broken("docs/design.md", "`cp.mid_recovery`", "`cp.mid_recover`")
    others = [d.read_text(encoding="utf-8") for d in DOCS if d.parent.name == "docs" and d.name != "design.md"]
    assert undocumented_points([text, *others]) == ["cp.mid_recovery"]
