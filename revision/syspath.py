"""Keep a source checkout's root off sys.path when the CLI runs as `python -m revision`.

`python -m revision` and `torchrun -m revision` put the working directory first on sys.path. In a
source checkout that directory holds kernels/, store/, train/ and bench/, installed as
revision.kernels and so on, but from there they also shadow top-level packages of the same names:
transformers >= 5.25 imports Hugging Face's `kernels` and got ours. Once `revision` itself is
loaded, its subpackages resolve through the installed mapping, not through that entry.
"""

from __future__ import annotations

import os

_MARKS = ("pyproject.toml", os.path.join("kernels", "__init__.py"), os.path.join("revision", "__init__.py"))


def is_checkout_root(entry: str) -> bool:
    """Whether sys.path `entry` ("" is the working directory) is the root of a revision checkout."""
    root = os.path.abspath(entry or os.curdir)
    return all(os.path.isfile(os.path.join(root, mark)) for mark in _MARKS)


def without_checkout_root(path: list[str]) -> list[str]:
    """`path` without the entries that are a revision checkout's root, in the same order."""
    return [entry for entry in path if not is_checkout_root(entry)]
