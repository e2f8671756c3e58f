"""The repository's Markdown documents as tests/test_docs_truth*.py read them: README.md and
docs/*.md, their fenced code blocks, their prose lines and its inline code, their headings."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OPERATIONS = ROOT / "docs" / "operations.md"


def rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


@cache
def doc_text(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class Block:
    """A fenced code block: its info string, first line number (of its body) and body."""

    lang: str
    line: int
    body: str


def split_markdown(text: str) -> tuple[list[Block], list[tuple[int, str]]]:
    """The fenced code blocks, and the prose lines (number, text) outside them."""
    blocks: list[Block] = []
    prose: list[tuple[int, str]] = []
    fence: str | None = None
    lang, start = "", 0
    body: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", line)
        if fence is None and m:
            fence, lang, start, body = m.group(1), m.group(2), n + 1, []
        elif fence is not None and line.strip().startswith(fence):
            blocks.append(Block(lang, start, "\n".join(body)))
            fence = None
        elif fence is not None:
            body.append(line)
        else:
            prose.append((n, line))
    return blocks, prose


def inline_code(prose: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    for n, line in prose:
        for m in re.finditer(r"(`+)(.+?)\1", line):
            yield n, m.group(2)


@dataclass(frozen=True)
class Heading:
    line: int
    level: int
    number: str | None  # `## 18. Two CP machines`: "18"; `### 5.1 The active starts`: "5.1"
    title: str


def headings_of(text: str) -> list[Heading]:
    _, prose = split_markdown(text)
    out = []
    for n, line in prose:
        m = re.match(r"^(#{1,6})\s+(?:(\d+(?:\.\d+)*)\.?\s+)?(.+?)\s*$", line)
        if m:
            out.append(Heading(n, len(m.group(1)), m.group(2), m.group(3)))
    return out


@cache
def headings(name: str) -> list[Heading]:
    return headings_of(doc_text(name))


def slug(title: str) -> str:
    """GitHub's anchor for a heading's text."""
    return re.sub(r"[^\w\- ]", "", title.lower().replace("`", "")).replace(" ", "-")
