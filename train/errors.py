"""The error the training side raises for bad input data (annotation files, ids, views).

`train` may not import `revision` (import direction), so this is not `revision.errors.UserError`;
the command that drives training turns it into one (exit code 2). Messages name the file and row.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad training input: malformed annotation JSON, an id absent from the feature view, ..."""
