"""The hosts' `journal` service files as evidence (SPEC §5.6): reading them, and the one rule
every failover check applies to them: an id processed again, on the same host or another, is
marked redelivered every time after its first."""

from __future__ import annotations

from pathlib import Path

Journals = dict[str, dict[tuple[str, int], list[int]]]


def read_host_journal(path: Path, host: str | None = None) -> dict[tuple[str, int], list[int]]:
    """{(terminal, id): [redelivered mark of each line, in the file's order]}. A last line
    without its newline is a write a kill cut short: never answered (the service replies once
    its line is durable), so it is re-delivered elsewhere and is not counted."""
    out: dict[tuple[str, int], list[int]] = {}
    if path.exists():
        for line in path.read_text().split("\n")[:-1]:
            h, term, mid, red = line.split()
            assert host is None or h == host, f"{path}: a line of {h}"
            out.setdefault((term, int(mid)), []).append(int(red))
    return out


def unmarked_repeats(j: Journals) -> list[tuple[str, int]]:
    """Ids processed again without the redelivered mark: a line of one host's journal after
    the id's first there unmarked, or more than one unmarked line over all journals."""
    bad = {k for e in j.values() for k, marks in e.items() if not all(marks[1:])}
    unmarked: dict[tuple[str, int], int] = {}
    for e in j.values():
        for k, marks in e.items():
            unmarked[k] = unmarked.get(k, 0) + marks.count(0)
    return sorted(bad | {k for k, n in unmarked.items() if n > 1})
