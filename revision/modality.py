"""The one modality check every command applies to the stores it reads.

A store records its modality ("text" or "image") when it is created; aligned stores are text
stores (their rows are text moved into the image distribution) with the fit in
attrs["alignment"]. Swapping --text and --image, or passing an image store where text is
expected, runs without a numeric error and writes plausible-looking nonsense, hence the check.
"""

from __future__ import annotations

import os

from revision.errors import UserError

MODALITIES = ("text", "image")


def require_modality(
    flag: str, path: str | os.PathLike[str], modality: str | None, expected: str, wanted: str | None = None
) -> None:
    """Raise a UserError naming `flag` unless a store at `path` holds `expected` rows.

    wanted: what the message asks for with `flag` (default: "the <expected> store").
    """
    if modality != expected:
        found = (
            f"{'an' if modality == 'image' else 'a'} {modality} store"
            if modality in MODALITIES
            else (f"a store of unknown modality {modality!r}")
        )
        raise UserError(f"{flag} {path}: {found}; pass {wanted or f'the {expected} store'} with {flag}")
