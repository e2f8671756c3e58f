"""The hosts' `journal` service files as evidence (SPEC §5.6): reading them, the one rule
every failover check applies to them (an id processed again, on the same host or another, is
marked redelivered every time after its first), and what a host processed that no terminal sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from hsb.term.verdict import ids


class Line(NamedTuple):
    """One processing of a message: its redelivered mark, and the epoch the host served at
    (None: a line of a journal written without it)."""

    redelivered: int
    epoch: int | None = None


Journals = dict[str, dict[tuple[str, int], list[Line]]]


def read_host_journal(path: Path, host: str | None = None) -> dict[tuple[str, int], list[Line]]:
    """{(terminal, id): [each line's mark and epoch, in the file's order]}. A last line without
    its newline is a write a kill cut short: never answered (the service replies once its line
    is durable), so it is re-delivered elsewhere and is not counted."""
    out: dict[tuple[str, int], list[Line]] = {}
    if path.exists():
        for line in path.read_text().split("\n")[:-1]:
            h, term, mid, red, *epoch = line.split()
            assert host is None or h == host, f"{path}: a line of {h}"
            out.setdefault((term, int(mid)), []).append(Line(int(red), int(epoch[0]) if epoch else None))
    return out


def unmarked_repeats(j: Journals) -> list[tuple[str, int]]:
    """Ids processed again without the redelivered mark. One host's lines are in its file's
    order; one id's lines on both hosts are in the order of their epochs (a host processes only
    at an epoch the CP granted it, and a later grant is a newer epoch), so a line after the
    first, on whichever host, that is unmarked is one: a first processing marked (a message the
    CP handed over again, that the host it had gone to never processed) and a later one unmarked
    on the other host included. Lines without their epoch (the service called outside a host)
    are judged without that order: more than one unmarked line over all journals."""
    bad = {k for e in j.values() for k, lines in e.items() if not all(x.redelivered for x in lines[1:])}
    every: dict[tuple[str, int], list[Line]] = {}
    for e in j.values():
        for k, lines in e.items():
            every.setdefault(k, []).extend(lines)
    for k, lines in every.items():
        if sum(not x.redelivered for x in lines) > 1:
            bad.add(k)
        elif all(x.epoch is not None for x in lines):  # (a stable sort: one host's file order at one epoch)
            if not all(x.redelivered for x in sorted(lines, key=lambda x: x.epoch or 0)[1:]):
                bad.add(k)
    return sorted(bad)


def never_sent(j: Journals, sent: dict[str, set[int]], base: int) -> list[tuple[str, int]]:
    """(terminal, id) processed that no terminal sent: of a terminal not in `sent` (it names
    every terminal of the run, with the ids each sent), or an id at or above the run's first
    (`base`) that its terminal never sent (another terminal's, misdelivered; a stale entry of
    the takeover file). An id below `base` is an earlier run's: not judged. The CP drops the
    reply of an id it does not hold, so the load never sees such processing: only this does."""
    return sorted({(t, i) for e in j.values() for t, i in e if t not in sent or (i >= base and i not in sent[t])})


def journal_counts(j: Journals, run_ids: dict[str, Any], base: int, others: dict[str, set[int]]) -> dict[str, int]:
    """A load's ids (its report's `ids`, the run's first id `base`) against the journals: the
    acknowledged ids in none (`missing`), the ids processed again without the mark, those
    processed more than once (each time but the first marked), and those `never_sent` (what a
    terminal sent: its acknowledged and answered ids; one sent and neither is counted too, and
    the run fails on it anyway, as unacknowledged; `others`: terminals beside the load's, with
    the ids they send)."""
    acked = {(t, i) for t, rec in run_ids.items() for i in ids(rec["acked"], rec["step"])}
    sent = {t: set(ids(rec["acked"], rec["step"])) | set(ids(rec["replied"], rec["step"])) for t, rec in run_ids.items()}
    times: dict[tuple[str, int], int] = {}
    for e in j.values():
        for k, lines in e.items():
            times[k] = times.get(k, 0) + len(lines)
    return {
        "missing": len(acked - times.keys()),
        "unmarked_repeats": len(unmarked_repeats(j)),
        "processed_more_than_once": sum(1 for v in times.values() if v > 1),
        "never_sent": len(never_sent(j, {**others, **sent}, base)),
    }
