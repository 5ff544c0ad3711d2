"""The error the training side raises for bad input data (annotation files, ids, views).

It is a `UserError` (defined in `revision.store.errors`, which `train` may import), so the CLI
prints its message and exits with status 2. Messages name the file and row.
"""

from __future__ import annotations

from revision.store.errors import UserError


class DataError(UserError):
    """Bad training input: malformed annotation JSON, an id absent from the feature view, ..."""
