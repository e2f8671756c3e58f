"""The size check of a host's config: `[takeover] records` against its terminals (N >= 3·B+1,
hsb.takeover.layout), with the fix that fits the file at takeover.path, whose header is the truth.

Only a config that fails the check looks at the file, and for no longer than its
storage_timeout (a hung mount does not hold a start that is refused anyway). The fix then is:
the file has the records needed: set records to the file's in the config; the file is too
small: recreate it (its contents are lost) or give the host fewer terminals; no file yet:
create it; its header torn by a crash (a power loss while it was rewritten): the same, going by
the file's size, which the start takes with the config's records; the file cannot be read now:
set the records needed, once the file has them.
And hsbd --check-config's look at a file there for a config that passes: the start's file
checks, or the check says the line the start would, and a warning for a torn header the start
takes (`geometry_look`).
"""

from __future__ import annotations

import os
from typing import NamedTuple

from hsb.takeover.errors import FileMissing, HeaderCorrupt, NotRegularFile, TakeoverError, TakeoverFileTooSmall
from hsb.takeover.fileio import check_file, torn_header_taken
from hsb.takeover.layout import max_terminals, needed_records, needs_text, size_check
from hsb.takeover.records import Header
from hsb.worker import within


class Torn(NamedTuple):
    """A file whose header is corrupt, most likely torn by a crash while it was rewritten: its
    size in bytes, all that tells how many records it holds."""

    size: int


def size_problem(records: int, terminals: int, record_size: int, path: str, timeout: float) -> list[str]:
    """`takeover.records: …`, one line, if the config's `records` are too few for `terminals`."""
    try:
        size_check(records, terminals, record_size)
    except TakeoverFileTooSmall:
        return [f"takeover.records: {_fix(records, terminals, record_size, path, timeout)}"]
    return []


def geometry_look(records: int, terminals: int, record_size: int, path: str, timeout: float, tag: int | None = None) -> tuple[list[str], list[str]]:
    """--check-config: ([the start's one line], []) if the file at `path` fails the start's file
    checks (hsb.takeover.fileio.check_file with the config's geometry, run read-only within
    `timeout`): another geometry than the config's, a bad magic, another format version, a file
    cut short, a corrupt header on a file short of the config's records. ([], [a warning]) for a
    header the start takes as torn (torn_header_taken): it says so only in its log. Nothing for
    no file (a warning: `takeover_missing`), one not a regular file (the writable check says it),
    one that cannot be read now (the start says it), or a config whose records are too few
    (`size_problem` says it, with the fix for the file there). With `tag` (this host's pair tag,
    from its secret): a warning for a file whose last batch another secret's pair wrote."""
    if records < needed_records(terminals, record_size):
        return [], []

    def look() -> tuple[list[str], list[str]]:
        try:
            h = check_file(path, record_size, records, terminals)
        except HeaderCorrupt as exc:
            try:
                taken = torn_header_taken(path, records, record_size)
            except OSError:
                return [], []
            return ([], [_torn(path, records, record_size)]) if taken else ([str(exc)], [])
        except (FileMissing, NotRegularFile):
            pass
        except TakeoverError as exc:
            return [str(exc)], []
        except OSError:
            pass
        else:
            if tag is not None and h.generation and h.pair_tag and h.pair_tag != tag:
                return [], [_other_secret(path, h.writer_host, h.generation)]
        return [], []

    done, said = within(timeout, look, "takeover-file-look")
    return said if done and said is not None else ([], [])


def _other_secret(path: str, writer: str | None, generation: int) -> str:
    return (
        f"takeover.path: takeover file {path} was last written by {writer or '?'} (generation {generation}) with another pair tag than"
        " this host's secret gives: this host's secret_file is not the one its pair runs with (a config restored from an old backup,"
        " or copied from another pair?), and the CP and the other host would refuse it; compare the secret file's sha256sum on"
        " the three machines (docs/operations.md §4)"
    )


def _torn_header(path: str) -> str:
    return f"the header (record 0) of takeover file {path} is corrupt, most likely torn by a crash while it was rewritten"


def _torn(path: str, records: int, record_size: int) -> str:
    return (
        f"takeover.path: {_torn_header(path)}: the start takes it, going by the config's records = {records} and record_size ="
        f" {record_size}, and the pair's active rewrites it at its next batch write (`hsbctl file inspect {path}` shows it)"
    )


def _fix(records: int, terminals: int, record_size: int, path: str, timeout: float) -> str:
    needed, needs = needed_records(terminals, record_size), needs_text(terminals, record_size)
    create = f"hsbctl file create {path} --records {needed} --record-size {record_size}"
    said = f"the config says records = {records}, but {needs}"
    header = _header(path, timeout)
    if isinstance(header, FileMissing):
        return f"{said}; there is no file there yet: create it with `{create}` and set records = {needed}"
    if isinstance(header, str):
        return f"{said}; set records = {needed} once the file there has that many ({header})"
    if isinstance(header, Torn):
        return f"{said}; {_torn_fix(path, header.size, records, terminals, record_size, create)}"
    of = f" of {header.record_size} bytes" if header.record_size != record_size else ""
    try:
        size_check(header.records, terminals, header.record_size)
    except TakeoverFileTooSmall:
        fewer = f"fewer terminals (at most {max_terminals(header.records, header.record_size)})"
        if header.records != records:
            fewer += f" and set records = {header.records}"
        return (
            f"takeover file {path} has {header.records} records{of}; {needs}; recreate it with `{create} --force`"
            f" (not under a running active) and set records = {needed}, or give this host {fewer}"
        )
    keys = f"records = {header.records}" + (f" and record_size = {header.record_size}" if of else "")
    return f"{said}; takeover file {path} has {header.records} records{of}, enough: set {keys} in the config (the file is the truth)"


def _torn_fix(path: str, size: int, records: int, terminals: int, record_size: int, create: str) -> str:
    """The fix for a file whose header is torn, by the records its size holds at the config's
    record_size: set records to them (the start takes a torn header going by the config's records
    when the file holds them, hsb.takeover.fileio.torn_header_taken), or, too few, recreate it."""
    held, needed = size // record_size, needed_records(terminals, record_size)
    torn = f"{_torn_header(path)}; by its size it holds {held} records of {record_size} bytes"
    if held >= needed:
        return (
            f"{torn}, enough: set records = {held} in the config (the start then takes the torn header, going by the config's"
            f" records and record_size, and the pair's active rewrites it at its next batch write; `hsbctl file inspect {path}` shows it)"
        )
    fewer = f"fewer terminals (at most {max_terminals(held, record_size)})" + (f" and set records = {held}" if held != records else "")
    return f"{torn}, too few: recreate it with `{create} --force` (not under a running active) and set records = {needed}, or give this host {fewer}"


def _header(path: str, timeout: float) -> Header | FileMissing | Torn | str:
    """The file's header; FileMissing; Torn (its size) for a corrupt header; or why it cannot be
    read (within `timeout`: a thread stuck on a hung mount is left behind, holding nothing the
    process needs)."""

    unreadable = f"its header cannot be read: `hsbctl file inspect {path}` says why"

    def look() -> Header | FileMissing | Torn | str:
        try:
            return check_file(path)
        except FileMissing as exc:
            return exc
        except HeaderCorrupt:
            try:
                return Torn(os.stat(path).st_size)
            except OSError:
                return unreadable
        except (TakeoverError, OSError):
            return unreadable

    done, header = within(timeout, look, "takeover-size-look")
    return header if done and header is not None else f"its storage did not answer within {timeout:g} s"
