"""The error type for bad input, defined here so `store` (and `train`) need not import `revision`.

`revision.errors.UserError` is this class: the CLI prints its message and exits with status 2.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input, flag or file. The message names the file, row or flag at fault."""


class DamagedStoreError(UserError):
    """A store's files are missing, truncated or corrupt; the message names the file."""
