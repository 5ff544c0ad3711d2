"""Errors a user can cause: the CLI turns these into a one-line message and a non-zero exit.

The class lives in `revision.store.errors` so that the store and training layers, which must not
import `revision`, raise the same type.
"""

from __future__ import annotations

from revision.store.errors import UserError

__all__ = ["UserError"]
