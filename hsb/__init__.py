"""hsb: hot standby with high-speed switching (JP H06-342382 as asyncio daemons)."""

__version__ = "0.6.0"

# The version of the links between hsb's own processes (host, peer and admin links). A daemon
# refuses a peer that speaks another one, naming both: install the same version everywhere.
# (The terminal link is public and stable: docs/protocol.md §1.)
LINK_PROTOCOL = 5

# The formats of what hsb keeps on disk, printed by every program's --version so that an operator
# can tell whether a build reads the files another one wrote (docs/operations.md, Rolling back).
TAKEOVER_FORMAT = 1  # the takeover file's layout (hsb.takeover.layout)
JOURNAL_FORMAT = 1  # the CP journal's records (hsb.cp.journal.format: a later hsbcpd raises it)


def version_line(prog: str) -> str:
    """What `PROG --version` prints: the version, the link protocol and the on-disk formats."""
    return (
        f"{prog}, version {__version__} (link protocol {LINK_PROTOCOL}, takeover file format {TAKEOVER_FORMAT}, CP journal format {JOURNAL_FORMAT})"
    )
