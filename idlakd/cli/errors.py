"""The command line's expected failures: one line each; a refusal exits 2, a failure 1."""

from __future__ import annotations


class CommandError(Exception):
    """A CLI command failed in an expected way; its message is printed as one line (exit 1)."""


class Refused(CommandError):
    """The command was refused before it touched anything: wrong database or user (exit 2)."""
