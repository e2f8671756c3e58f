"""Whole-file report for `hsbctl file inspect`: header, batch area, ring, bad records.

Unlike the daemons' readers, which stop at the first bad record, this reads
every record once and lists what it finds: batch entries, the ring records of
the current generation (seq order), and every bad record with its reason.
File-level problems (missing, not a file, bad magic, truncated) still raise
TakeoverFileError, as they leave nothing to inspect.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from hsb import gcpolicy
from hsb.takeover.fileio import FreshReader, check_file
from hsb.takeover.layout import KIND_BATCH, KIND_RING
from hsb.takeover.records import BadRecord, Header, decode_payload, kind_name, parse_record
from hsb.takeover.startup_id import describe_startup_id

_CHUNK_BYTES = 1 << 20


def inspect_file(path: str) -> dict[str, Any]:
    """A JSON-able report; see docs/takeover-file.md for its keys."""
    path = os.fspath(path)
    h = check_file(path)
    r, b, n, e = h.record_size, h.batch_records, h.records, h.entries_per_record
    errors: list[dict[str, Any]] = []
    batch: list[dict[str, Any]] = []
    ring: list[dict[str, Any]] = []
    stale = never = 0
    per = max(1, _CHUNK_BYTES // r)
    with FreshReader(path, r) as f, gcpolicy.paused():
        for first in range(1, n, per):
            count = min(per, n - first)
            view = f.read(first, count)
            for i in range(count):
                recno = first + i
                if (i + 1) * r > len(view):
                    errors.append({"record": recno, "reason": "short read: the file ends here"})
                    continue
                in_batch = recno <= b
                try:
                    rec = parse_record(view[i * r : (i + 1) * r])
                except BadRecord as exc:
                    errors.append({"record": recno, "reason": exc.reason})
                    continue
                if rec is None:
                    if in_batch:
                        errors.append({"record": recno, "reason": "batch record never written"})
                    else:
                        never += 1
                    continue
                if rec.generation != h.generation or rec.attempt != h.attempt:
                    if in_batch and rec.generation != h.generation:
                        errors.append({"record": recno, "reason": f"generation {rec.generation}, header says {h.generation}"})
                    elif in_batch:
                        errors.append(
                            {
                                "record": recno,
                                "reason": f"attempt {rec.attempt:08x}, header says {h.attempt:08x} (another batch write of this generation)",
                            }
                        )
                    else:
                        stale += 1  # left over from an earlier generation (or a failed try of this one): normal
                    continue
                want_kind = KIND_BATCH if in_batch else KIND_RING
                if rec.kind != want_kind:
                    errors.append({"record": recno, "reason": f"a {kind_name(rec.kind)} record where a {kind_name(want_kind)} record belongs"})
                    continue
                try:
                    if rec.n_entries > e:
                        raise ValueError(f"{rec.n_entries} entries, at most {e} fit")
                    items = decode_payload(rec.payload, rec.n_entries)
                except ValueError as exc:
                    errors.append({"record": recno, "reason": str(exc)})
                    continue
                if in_batch:
                    batch.extend({"terminal": t, "attrs": a, "open": o} for t, a, o in items)
                elif (rec.seq - 1) % (n - 1 - b) != recno - b - 1:
                    errors.append({"record": recno, "reason": f"seq {rec.seq} does not belong in this record"})
                else:
                    ring.append({"seq": rec.seq, "record": recno, "entries": [{"terminal": t, "attrs": a, "open": o} for t, a, o in items]})
    if h.batch_records and len(batch) != h.batch_entries and not any(x["record"] <= b for x in errors):
        errors.append({"record": 0, "reason": f"header says {h.batch_entries} batch entries, the batch area holds {len(batch)}"})
    ring.sort(key=lambda x: x["seq"])
    seqs = [x["seq"] for x in ring]
    gaps = sum(1 for a, c in zip(seqs, seqs[1:], strict=False) if c != a + 1)
    if gaps:
        errors.append({"record": None, "reason": f"ring sequence has {gaps} gap(s) within the current generation"})
    return {
        "path": path,
        "format_version": 1,
        "record_size": r,
        "records": n,
        "entry_size": h.entry_size,
        "entries_per_record": e,
        "startup_id": h.startup_id,
        "startup_id_text": describe_startup_id(h.startup_id),
        "batch_records": b,
        "batch_entries": h.batch_entries,
        "generation": h.generation,
        "attempt": f"{h.attempt:08x}" if h.attempt else None,  # (which try of the generation: docs/takeover-file.md §7)
        "writer_host": h.writer_host,
        "pair_tag": f"{h.pair_tag:08x}" if h.pair_tag else None,  # (hsb.takeover.pair: which pair wrote it)
        "written_at": _iso(h),
        "ring": {
            "first_record": b + 1,
            "slots": n - 1 - b,
            "first_seq": seqs[0] if seqs else None,
            "last_seq": seqs[-1] if seqs else None,
            "count": len(seqs),
            "entries": sum(len(x["entries"]) for x in ring),
            "stale_records": stale,
            "never_written": never,
            "records": ring,
        },
        "batch": batch,
        "errors": errors,
    }


def _iso(h: Header) -> str | None:
    if not h.written_at_ms:
        return None
    return datetime.fromtimestamp(h.written_at_ms / 1000, UTC).isoformat(timespec="milliseconds")
