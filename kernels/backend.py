"""Which implementation an op runs: the Triton kernel, the fast torch path, or the plain reference.

The choice is made per call from the tensor's device and once-computed facts (is Triton importable,
is CUDA present), so it costs nothing. `REVISION_KERNELS` overrides it for tests and benchmarks:

- ``auto`` (default): Triton for CUDA tensors when Triton imports, else the torch path;
- ``triton``: always the Triton kernel (on CPU tensors this needs ``TRITON_INTERPRET=1``);
- ``torch``: the fast torch path (tested equal to the reference);
- ``ref``: the plain readable reference (the specification; slow).
"""

from __future__ import annotations

import functools
import os

import torch

ENV_VAR = "REVISION_KERNELS"
BACKENDS = ("auto", "triton", "torch", "ref")
# The kernels hold whole rows in registers; wider rows take the torch path (see triton_rows).
MAX_TRITON_DIM = 32768


@functools.cache
def triton_available() -> bool:
    """True when `import triton` works (it is an optional dependency)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken triton install is the same as none here
        return False
    return True


def requested_backend() -> str:
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={value!r}: expected one of {', '.join(BACKENDS)}")
    return value


def select_backend(x: torch.Tensor) -> str:
    """The implementation to run for an input on `x.device`: "triton", "torch" or "ref"."""
    wanted = requested_backend()
    if wanted == "auto":
        fits = x.dim() != 2 or x.shape[1] <= MAX_TRITON_DIM
        return "triton" if x.is_cuda and fits and triton_available() else "torch"
    if wanted == "triton" and not triton_available():
        raise RuntimeError(f"{ENV_VAR}=triton but triton cannot be imported")
    return wanted
