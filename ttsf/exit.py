"""The one way `ttsf` stops on bad input: `ttsf: error: ...` lines on stderr (each naming the flag a user
typed beside the config field), exit status 2 (1 for a run that failed)."""

from __future__ import annotations

import sys

import click

from ttsf.flags import flag_names


def fail(message: str, code: int = 2) -> None:
    for line in message.splitlines():
        click.echo(f"ttsf: error: {flag_names(line)}", err=True)
    sys.exit(code)
