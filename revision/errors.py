"""Errors a user can cause: the CLI turns these into a one-line message and a non-zero exit."""

from __future__ import annotations


class UserError(Exception):
    """Bad input, flag or file. The message names the file, row or flag at fault."""
