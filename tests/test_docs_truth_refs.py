"""The documentation's references against the repository (the second half of the mechanical
checks of README.md and docs/*.md; tests/test_docs_truth.py has metrics, options and config keys):

4. every cross-reference (`§N`, `§N.M`, `docs/X.md §N`, `[X.md](X.md) §N`, `operations §N`,
   `§N, "Name"`, `§N, *Name*`, `§ "Name"`) points to an existing section of the cited document
   (operations.md, protocol.md, tls.md, takeover-file.md and design.md number theirs `## N.
   Title` / `### N.M Title`), a name to a heading (or a paragraph's bold label) in it; every
   Markdown link to a repository file reaches one, and its `#anchor` a heading there;
5. every repository path mentioned (`configs/…`, `scripts/…`, `bench/…`, `tests/…`, `hsb/…`,
   `docs/…`, `{a,b}` alternatives and globs included) exists, and every Python module named
   (`hsb.cp.core`, `hsb.service.ledger:LedgerService`) has the attributes said.

Each check is a function of a document's text, so that the last tests can show it finds one
line of a real document broken on purpose."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.markdown import DOCS, ROOT, doc_text, headings, rel, slug

pytestmark = pytest.mark.timeout(60)


# --- 4. cross-references -------------------------------------------------------------------------


def section_text(name: str, number: str) -> str | None:
    """The text of section `number` of document `name` (its heading to the next one of its
    level or above), or None: it has no such section."""
    hs = headings(name)
    for i, h in enumerate(hs):
        if h.number == number:
            end = next((x.line for x in hs[i + 1 :] if x.level <= h.level), None)
            return "\n".join(doc_text(name).splitlines()[h.line - 1 : None if end is None else end - 1])
    return None


def _named_in(text: str, title: str) -> bool:
    """Whether `title` heads a part of `text`: a heading, or a paragraph's bold or italic label."""
    return bool(re.search(rf"^#+\s+(?:[\d.]+\s+)?{re.escape(title)}\s*$|\*\*?{re.escape(title)}[.:]?\*\*?", text, re.M | re.I))


# a document named just before a reference: `docs/tls.md §2`, `[protocol.md](protocol.md) §3`,
# `operations §18`, `the operations guide §5`, `design §5.4`
DOC_BEFORE = re.compile(
    r"(?:(?:docs/)?([\w-]+)\.md(?:\]\([^)]*\))?|\b(operations|design|protocol|takeover-file|cp-journal|tls|ledger)(?: guide)?)\s*$"
)
REF = re.compile(r"§\s?(\d+(?:\.\d+)*)?(?:,?\s*(?:\"([^\"]+)\"|\*([^*]+)\*))?")


def reference_targets(name: str, text: str) -> Iterator[tuple[int, str, str | None, str | None]]:
    """(line, document, section number, section name) of every § reference in `text`, document
    `name` (the SPEC's excepted): a document named just before it, as the reference before it
    in a list (`docs/operations.md §12, §17`), or else the document itself."""
    for n, line in enumerate(text.splitlines(), 1):
        target, last_end = name, -1
        for m in REF.finditer(line):
            before = line[: m.start()]
            if re.search(r"SPEC\s*$", before) or re.match(r"\s*of the SPEC", line[m.end() :]):
                continue
            d = DOC_BEFORE.search(before)
            if d:
                target = "README.md" if d.group(1) == "README" else f"docs/{d.group(1) or d.group(2)}.md"
            elif not (last_end >= 0 and re.fullmatch(r"[,\s]*(?:and\s+|or\s+)?", line[last_end : m.start()])):
                target = name
            last_end = m.end()
            if m.group(1) or m.group(2) or m.group(3):
                yield n, target, m.group(1), m.group(2) or m.group(3)


def reference_problems(name: str, text: str) -> list[str]:
    problems = []
    for n, target, number, title in reference_targets(name, text):
        if not (ROOT / target).is_file():
            problems.append(f"{n}: {target}: no such document")
            continue
        where = section_text(target, number) if number else doc_text(target)
        if where is None:
            problems.append(f"{n}: {target} has no section §{number}")
        elif title and not _named_in(where, title):
            problems.append(f"{n}: {target}{' §' + number if number else ''} has no part named {title!r}")
    return problems


LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(name: str) -> set[str]:
    return {slug(h.title if h.number is None else f"{h.number}. {h.title}") for h in headings(name)}


def link_problems(name: str, text: str) -> list[str]:
    """Markdown links to repository files that do not exist, or to an anchor no heading has."""
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        for m in LINK.finditer(line):
            url = m.group(1)
            if re.match(r"^[a-z]+:", url):
                continue
            path, _, anchor = url.partition("#")
            target = ((ROOT / name).parent / path).resolve() if path else ROOT / name
            if not target.exists():
                problems.append(f"{n}: {url}: no such file")
            elif anchor and target.suffix == ".md" and anchor not in anchors(rel(target)):
                problems.append(f"{n}: {url}: {rel(target)} has no heading with that anchor")
    return problems


def test_the_references_are_found() -> None:
    """The parsing sees what it is meant to: each form of reference, to each kind of document."""
    refs = {(rel(d), t) for d in DOCS for _, t, _, _ in reference_targets(rel(d), d.read_text(encoding="utf-8"))}
    assert {("README.md", "docs/operations.md"), ("docs/design.md", "docs/protocol.md"), ("docs/operations.md", "docs/operations.md")} <= refs
    assert ("docs/protocol.md", "docs/design.md") in refs  # `design §5.4`
    line = 'see docs/tls.md §2, §5 and [protocol.md](protocol.md) §3; operations §18, "Machines and addresses"; §7; SPEC §5.2, §5.4 of the SPEC'
    assert list(reference_targets("docs/design.md", line)) == [
        (1, "docs/tls.md", "2", None),
        (1, "docs/tls.md", "5", None),
        (1, "docs/protocol.md", "3", None),
        (1, "docs/operations.md", "18", "Machines and addresses"),
        (1, "docs/design.md", "7", None),
    ]
    assert sum(1 for d in DOCS for _ in reference_targets(rel(d), d.read_text(encoding="utf-8"))) >= 250


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_every_section_reference_is_to_a_section_there(doc: Path) -> None:
    assert reference_problems(rel(doc), doc.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_every_link_reaches_a_file_and_its_anchor_a_heading(doc: Path) -> None:
    assert link_problems(rel(doc), doc.read_text(encoding="utf-8")) == []


# --- 5. repository paths and modules ------------------------------------------------------------

PATH_TOKEN = re.compile(r"(?<![\w/.~:$@-])((?:configs|scripts|bench|tests|hsb|docs)/[\w.*/{},@-]*[\w*/}])")
# paths in the docs that are no file of the repository on purpose, each with what it is (none yet)
NOT_REPO_PATHS: dict[str, str] = {}


def _expand(path: str) -> list[str]:
    """`a/{b,c}.py` -> a/b.py, a/c.py."""
    m = re.search(r"\{([^{}]*)\}", path)
    return [p for alt in m.group(1).split(",") for p in _expand(path[: m.start()] + alt + path[m.end() :])] if m else [path]


def path_problems(text: str) -> list[str]:
    problems = []
    for n, line in enumerate(text.splitlines(), 1):
        for tok in PATH_TOKEN.findall(line):
            for path in _expand(tok):
                if path not in NOT_REPO_PATHS and not (any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()):
                    problems.append(f"{n}: {path}: not in the repository")
    return problems


MODULE_TOKEN = re.compile(r"(?<![\w/.-])(hsb(?:\.[A-Za-z_]\w*)+(?::[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)?)")


def module_problem(ref: str) -> str | None:
    """`hsb.cp.core`, `hsb.cp.core.CP.status`, `hsb.service.ledger:LedgerService`: the longest
    prefix that is a module of the repository must be more than `hsb`, and the rest attributes of it."""
    parts = ref.replace(":", ".").split(".")
    k = next(
        (
            k
            for k in range(len(parts), 1, -1)
            if ROOT.joinpath(*parts[:k]).with_suffix(".py").is_file() or (ROOT.joinpath(*parts[:k]) / "__init__.py").is_file()
        ),
        0,
    )
    if k == 0:
        return "no such module"
    obj: Any = importlib.import_module(".".join(parts[:k]))
    for attr in parts[k:]:
        if not hasattr(obj, attr):
            return f"{'.'.join(parts[:k])} has no {'.'.join(parts[k:])}"
        obj = getattr(obj, attr)
    return None


def module_problems(text: str) -> list[str]:
    return [f"{n}: {ref}: {why}" for n, line in enumerate(text.splitlines(), 1) for ref in MODULE_TOKEN.findall(line) if (why := module_problem(ref))]


def test_the_paths_are_found() -> None:
    found = {p for d in DOCS for line in d.read_text(encoding="utf-8").splitlines() for t in PATH_TOKEN.findall(line) for p in _expand(t)}
    assert {"configs/systemd/hsbd@.service", "configs/prometheus/", "docs/operations.md"} <= found and len(found) >= 100
    assert "hsb/secret" not in found  # (/etc/hsb/secret is no repository path)
    assert _expand("tests/{a,b}.py") == ["tests/a.py", "tests/b.py"]


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_every_repository_path_mentioned_exists(doc: Path) -> None:
    assert path_problems(doc.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("doc", DOCS, ids=rel)
def test_every_module_named_has_what_is_said(doc: Path) -> None:
    assert module_problems(doc.read_text(encoding="utf-8")) == []


# --- each check finds a real document's line broken on purpose ----------------------------------


def broken(name: str, old: str, new: str) -> str:
    text = doc_text(name)
    assert text.count(old) == 1, f"{name} no longer has {old!r} once: pick another line"
    return text.replace(old, new)


def line_of(text: str, snippet: str) -> int:
    """The number of the one line of `text` holding `snippet` (the broken line of a real doc)."""
    [n] = [i for i, line in enumerate(text.splitlines(), 1) if snippet in line]
    return n


def test_a_reference_to_a_missing_section_or_name_is_found() -> None:
    text = broken(
        "README.md",
        "[docs/operations.md §18](docs/operations.md#18-two-cp-machines)). A",
        "[docs/operations.md §81](docs/operations.md#18-two-cp-machines)). A",
    )
    assert reference_problems("README.md", text) == [f"{line_of(text, '§81')}: docs/operations.md has no section §81"]
    text = broken(
        "docs/tls.md", 'during a CA change (operations.md §19, "Changing the CA")', 'during a CA change (operations.md §19, "Changing the CAs")'
    )
    assert reference_problems("docs/tls.md", text) == [
        f"{line_of(text, 'Changing the CAs')}: docs/operations.md §19 has no part named 'Changing the CAs'"
    ]
    assert reference_problems("docs/design.md", "see design.md §5.9") == ["1: docs/design.md has no section §5.9"]


def test_a_broken_link_or_anchor_is_found() -> None:
    text = broken(
        "README.md", "[docs/operations.md §2](docs/operations.md#2-installing)", "[docs/operations.md §2](docs/operations.md#2-installation)"
    )
    assert [p.split(":", 1)[1] for p in link_problems("README.md", text)] == [
        " docs/operations.md#2-installation: docs/operations.md has no heading with that anchor"
    ]
    assert link_problems("README.md", "[x](docs/nothing.md)") == ["1: docs/nothing.md: no such file"]


def test_a_missing_path_or_module_attribute_is_found() -> None:
    text = broken("docs/operations.md", "`configs/systemd/hsbd@.service` (both hosts)", "`configs/systemd/hsbd.service` (both hosts)")
    assert [p.split(": ", 1)[1] for p in path_problems(text)] == ["configs/systemd/hsbd.service: not in the repository"]
    assert module_problems("hsb.service.ledger:LedgerService and hsb.cp.core.CP") == []
    assert module_problems("hsb.service.ledger:LedgerServis, hsb.cp.cores") == [
        "1: hsb.service.ledger:LedgerServis: hsb.service.ledger has no LedgerServis",
        "1: hsb.cp.cores: hsb.cp has no cores",
    ]
