"""hsb: hot standby with high-speed switching (JP H06-342382 as asyncio daemons)."""

__version__ = "0.5.0"

# The version of the links between hsb's own processes (host, peer and admin links). A daemon
# refuses a peer that speaks another one, naming both: install the same version everywhere.
# (The terminal link is public and stable: docs/protocol.md §1.)
LINK_PROTOCOL = 5
