"""`hsbctl`: the operator's command line. It talks to daemons only over their
admin links and never imports daemon internals (hsb.cp / hsb.host)."""

from __future__ import annotations

import click

from hsb.ctl.file_cmd import file_group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Operate an hsb hot-standby pair."""


main.add_command(file_group)
