"""Test configuration shared by the whole suite."""

from __future__ import annotations

import os


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch means no CUDA
        return False


# Without a GPU, Triton kernels run under the interpreter; the variable must be set before anything
# imports triton, which is why it lives here and not in the kernel tests.
if not _cuda_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Keep the suite quiet and deterministic on small CI machines.
os.environ.setdefault("REVISION_NO_PROGRESS", "1")
