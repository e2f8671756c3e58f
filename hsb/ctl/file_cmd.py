"""`hsbctl file create|inspect`: tools for the session takeover file (docs/takeover-file.md).

Every bad input (missing file, not a regular file, wrong magic, shorter than
its header says, too small for the terminal count...) is one line on stderr,
`error: <problem>; <fix>`, and a non-zero exit status: 1 for a file problem,
2 for a usage problem. `inspect` exits 1 as well when it found bad records.
"""

from __future__ import annotations

import base64
import json
import sys
from typing import Any, NoReturn

import click

from hsb import logs
from hsb.plural import many
from hsb.takeover.errors import CreateInterrupted, TakeoverError, TakeoverFileTooSmall
from hsb.takeover.fileio import check_file, create_file
from hsb.takeover.inspect import inspect_file
from hsb.takeover.layout import DEFAULT_RECORD_SIZE, check_record_size, entries_per_record, max_terminals, size_check


def _die(msg: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {' '.join(msg.split())}", err=True)
    sys.exit(code)


def _int_arg(value: str | None, what: str, flag: str) -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        _die(f"{flag} must be a whole number of {what}, not {value!r}", 2)
    if n < 0:
        _die(f"{flag} must not be negative ({value})", 2)
    return n


@click.group("file")
def file_group() -> None:
    """Create or inspect a session takeover file (docs/takeover-file.md)."""
    logs.setup("warning", process="hsbctl")


@file_group.command("create")
@click.argument("path")
@click.option("--records", "records_s", required=True, metavar="N", help="Number of records N (header + batch area + ring).")
@click.option(
    "--record-size",
    "record_size_s",
    default=str(DEFAULT_RECORD_SIZE),
    show_default=True,
    metavar="R",
    help="Record size in bytes, a multiple of 512.",
)
@click.option("--terminals", "terminals_s", default=None, metavar="T", help="Refuse unless N passes the size check (N >= 3·B+1) for T terminals.")
@click.option(
    "--force",
    count=True,
    help="Overwrite an existing file (its contents are lost), twice if a pair has written it (stop both hosts first);"
    " or create one through a link whose storage looks unmounted.",
)
def create_cmd(path: str, records_s: str, record_size_s: str, terminals_s: str | None, force: int) -> None:
    """Pre-allocate a takeover file of N records of R bytes, with an empty header."""
    records = _int_arg(records_s, "records", "--records")
    record_size = _int_arg(record_size_s, "bytes", "--record-size")
    terminals = _int_arg(terminals_s, "terminals", "--terminals")
    assert records is not None and record_size is not None
    try:
        if terminals is not None:
            try:
                check_record_size(record_size)
            except ValueError as exc:  # as create_file says it, with the fix
                _die(f"{exc}; choose e.g. --record-size 4096")
            size_check(records, terminals, record_size)
        h = create_file(path, records, record_size, force=force > 0, replace_used=force > 1)
    except TakeoverFileTooSmall as exc:
        _die(
            f"--records {records} is too small: {terminals} terminals need B={exc.batch_records} batch records "
            f"of {entries_per_record(record_size)} entries, so N must be at least {exc.needed} (3·B+1); "
            f"use --records {exc.needed} or more"
        )
    except CreateInterrupted as exc:
        _die(str(exc), 128 + exc.signum)  # (as if the signal had ended it, its temporary file removed)
    except (TakeoverError, ValueError) as exc:
        _die(str(exc))
    except OSError as exc:
        _die(f"cannot create {path}: {exc.strerror}; check the directory and its permissions")
    e = entries_per_record(record_size)
    size = h.records * h.record_size
    click.echo(
        f"created {path}: {h.records} records of {h.record_size} bytes ({_human_bytes(size)}), "
        f"{e} entries per record; enough for up to {max_terminals(h.records, h.record_size)} terminals"
    )


@file_group.command("inspect")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--terminals", "terminals_s", default=None, metavar="T", help="Also run the size check for T terminals.")
@click.option("--limit", default=20, show_default=True, help="Entries and ring records to list in the human form (0: all).")
def inspect_cmd(path: str, as_json: bool, terminals_s: str | None, limit: int) -> None:
    """Print a takeover file's header, batch area, ring and bad records."""
    terminals = _int_arg(terminals_s, "terminals", "--terminals")
    try:
        if terminals is not None:
            h = check_file(path)
            size_check(h.records, terminals, h.record_size, path=path)
        report = inspect_file(path)
    except TakeoverError as exc:
        _die(str(exc))
    except OSError as exc:
        _die(f"cannot read {path}: {exc.strerror}; check the path and its permissions")
    if as_json:
        click.echo(json.dumps(report, indent=2, default=_json_default))
    else:
        click.echo(_human(report, limit))
    sys.exit(1 if report["errors"] else 0)


def _json_default(o: Any) -> Any:
    if isinstance(o, (bytes, bytearray)):
        return {"base64": base64.b64encode(o).decode()}
    return str(o)


def _human_bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _attrs(a: dict[str, Any]) -> str:
    return json.dumps(a, default=_json_default, separators=(", ", ": "), sort_keys=True) if a else "{}"


def _human(r: dict[str, Any], limit: int) -> str:
    ring, batch, errors = r["ring"], r["batch"], r["errors"]
    n_open = sum(1 for x in batch if x["open"])
    lines = [
        f"takeover file {r['path']}",
        f"  layout       {r['records']} records x {r['record_size']} bytes "
        f"({_human_bytes(r['records'] * r['record_size'])}); {r['entries_per_record']} entries of <= {r['entry_size']} bytes per record",
        f"  header       generation {r['generation']}"
        + (f" (attempt {r['attempt']})" if r.get("attempt") else "")
        + f", written {r['written_at'] or 'never'}"
        + (f" by {r['writer_host']}" if r["writer_host"] else "")
        + (f" (pair tag {r['pair_tag']})" if r.get("pair_tag") else ""),
        f"  startup id   {r['startup_id']} = {r['startup_id_text']}",
    ]
    if r["batch_records"]:
        lines.append(
            f"  batch area   records 1..{r['batch_records']} (B={r['batch_records']}): "
            f"{many(len(batch), 'entry', 'entries')}, {n_open} open, {len(batch) - n_open} closed"
        )
    else:
        lines.append("  batch area   none yet (B=0: no batch takeover has been written)")
    if ring["count"]:
        span = f"seq {ring['first_seq']}..{ring['last_seq']} in {many(ring['count'], 'record')}, {many(ring['entries'], 'entry', 'entries')}"
    else:
        span = "empty in this generation"
    lines.append(
        f"  ring         records {ring['first_record']}..{r['records'] - 1} ({ring['slots']} slots): {span}; "
        f"{ring['stale_records']} stale from earlier generations, {ring['never_written']} never written"
    )
    lines.append(f"  errors       {len(errors) or 'none'}")
    for err in errors:
        where = f"record {err['record']}" if err["record"] is not None else "ring"
        lines.append(f"    {where}: {err['reason']}")
    if batch:
        shown = batch if limit <= 0 else batch[:limit]
        lines.append(f"batch entries ({len(shown)} of {len(batch)}):")
        width = max(len(x["terminal"]) for x in shown)
        lines += [f"  {x['terminal']:<{width}}  {'open  ' if x['open'] else 'closed'}  {_attrs(x['attrs'])}" for x in shown]
    if ring["records"]:
        recs = ring["records"] if limit <= 0 else ring["records"][-limit:]
        lines.append(f"ring records ({'last ' if len(recs) < ring['count'] else ''}{len(recs)} of {ring['count']}):")
        for x in recs:
            items = ", ".join(f"{e['terminal']} {'open' if e['open'] else 'closed'}" for e in x["entries"][:6])
            more = f", ... (+{len(x['entries']) - 6})" if len(x["entries"]) > 6 else ""
            lines.append(f"  seq {x['seq']:>6} @ record {x['record']}: {items}{more}")
    return "\n".join(lines)
