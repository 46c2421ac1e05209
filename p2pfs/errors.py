"""Errors a user sees, and the exit codes the CLI maps them to.

Exit codes are part of the CLI's contract (documented in README.md):

    0  success
    1  other failure (a bug, or an error the node could not classify)
    2  bad input: a usage error, a bad name, a missing or unreadable file
    3  not found: no such name
    4  unavailable: a node is unreachable or a quorum could not be met
    5  authentication failure: a certificate or key problem, wrong cluster
    6  storage full
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1
    BAD_INPUT = 2
    NOT_FOUND = 3
    UNAVAILABLE = 4
    AUTH = 5
    STORAGE_FULL = 6


class UserError(Exception):
    """An error with a message a person can act on, and an exit code."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(UserError):
    """A configuration file or option is wrong; the message names the key."""

    exit_code = ExitCode.BAD_INPUT
