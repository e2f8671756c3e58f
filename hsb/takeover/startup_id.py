"""The startup identifier (511/512, [0063]): 48 bits naming one start of a standby.

High 16 bits: the date, (year % 100) * 366 + day_of_year (1 January = 1).
Low 32 bits: milliseconds since local midnight (0 .. 86,399,999).
The standby sends it in STANDBY STARTUP; the active writes it into record 0;
the standby reads it back to prove that both hosts name the same file.
"""

from __future__ import annotations

from datetime import datetime, timedelta

MS_PER_DAY = 86_400_000
ID_BITS = 48
ID_MAX = (1 << ID_BITS) - 1


def startup_id(now: datetime | None = None, *, after: int = 0) -> int:
    """The startup identifier of `now` (local time; default: this instant).

    `after`: a previous identifier of this process; the result is made larger
    than it, so two starts within one millisecond still differ.
    """
    t = now if now is not None else datetime.now()
    date = (t.year % 100) * 366 + t.timetuple().tm_yday
    ms = ((t.hour * 60 + t.minute) * 60 + t.second) * 1000 + t.microsecond // 1000
    ident = (date << 32) | ms
    if ident <= after and (after >> 32) == date:
        # the next millisecond; after the day's last one, the next day's first (a date one
        # higher decodes as the next day, or the year's next: still larger, which is the point)
        ident = after + 1 if (after & 0xFFFF_FFFF) + 1 < MS_PER_DAY else ((after >> 32) + 1) << 32
    return ident


def decode_startup_id(ident: int) -> tuple[int, int, int]:
    """(year % 100, day of year, milliseconds since midnight)."""
    if not 0 <= ident <= ID_MAX:
        raise ValueError(f"startup identifier {ident} does not fit {ID_BITS} bits")
    date, ms = ident >> 32, ident & 0xFFFF_FFFF
    if date == 0:
        return 0, 0, ms  # no date (identifier 0: never set)
    return (date - 1) // 366, (date - 1) % 366 + 1, ms  # day 1..366, so 366 stays in its year


def describe_startup_id(ident: int, century: int = 2000) -> str:
    """Human form, e.g. '2024-12-31 23:59:59.999 local (0x8f4a_05265bff)'.

    The identifier holds only the year within its century; `century` fills it in.
    """
    if ident == 0:
        return "none (no standby has started on this file)"
    hexform = f"0x{ident >> 32:04x}_{ident & 0xFFFF_FFFF:08x}"
    try:
        yy, day, ms = decode_startup_id(ident)
    except ValueError:
        return f"invalid ({ident})"
    if day == 0 or ms >= MS_PER_DAY:
        return f"invalid date/time (year {yy:02d}, day {day}, ms {ms}) ({hexform})"
    first = datetime(century + yy, 1, 1)
    when = first + timedelta(days=day - 1, milliseconds=ms)
    if when.year != first.year:  # day 366 of a common year
        return f"invalid date (year {yy:02d} has no day {day}) ({hexform})"
    return f"{when:%Y-%m-%d %H:%M:%S}.{ms % 1000:03d} local ({hexform})"
