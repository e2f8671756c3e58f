"""The CP's journal (SPEC §5.7, docs/cp-journal.md): everything the CP has promised, durable
before it is promised, so that a crash, an OOM kill or an upgrade of hsbcpd loses nothing.

- `format`: the record bytes of a segment file, and telling a torn tail from damage;
- `recovery`: reading a journal directory back into what the CP must restore;
- `store`: appending with group commit off the event loop, the deadline, and dropping settled
  segments, through io_uring (hsb.uring) or a writer thread;
- `null`: `NullJournal`, `durability = "none"`.
"""

from hsb.cp.journal.format import JournalDamaged
from hsb.cp.journal.null import NullJournal
from hsb.cp.journal.recovery import Recovered, recover
from hsb.cp.journal.store import Journal
from hsb.cp.journal.writer import JournalIOUnavailable

__all__ = ["Journal", "JournalDamaged", "JournalIOUnavailable", "NullJournal", "Recovered", "recover"]
