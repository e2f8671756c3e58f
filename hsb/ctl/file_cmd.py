"""`hsbctl file create|inspect`: tools for the session takeover file."""

from __future__ import annotations

import click


@click.group("file")
def file_group() -> None:
    """Create or inspect a session takeover file (SPEC §4)."""
