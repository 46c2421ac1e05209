"""The ``p2pfs`` command line: a thin shell over the rooms and the client library.

``base`` holds what every command shares (global options, exit codes, error
reporting, output helpers); each other module registers one group of commands
on ``base.cli``: ``admin`` (identities, the daemon), ``cluster`` (members,
status, fsck, leave), ``files`` (put, get, cat, ls, stat, rm) and ``testnet``.
A module is imported when one of its commands is asked for (``base.COMMAND_MODULES``),
so ``cli.commands`` holds only those loaded so far: ``cli.get_command`` loads one.
"""

from __future__ import annotations

from p2pfs.cli.base import ExitCode, cli, exit_code_for

__all__ = ["ExitCode", "cli", "exit_code_for", "main"]


def main() -> None:
    cli(prog_name="p2pfs")
