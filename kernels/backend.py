"""Which implementation an op runs: the Triton kernel, the fast torch path, or the plain reference.

The choice is made per call from the tensor's device and once-computed facts (is Triton importable,
is CUDA present), so it costs nothing. `REVISION_KERNELS` overrides it for tests and benchmarks:

- ``auto`` (default): Triton for CUDA tensors when Triton imports; on the CPU the native C kernels
  (kernels/native.py) for the ops that have one when the extension is built, else the torch path;
- ``triton``: always the Triton kernel (on CPU tensors this needs ``TRITON_INTERPRET=1``);
- ``native``: the C kernels where an op has one (an error when the extension is not built), the
  torch path for the rest;
- ``torch``: the fast torch path (tested equal to the reference);
- ``ref``: the plain readable reference (the specification; slow).
"""

from __future__ import annotations

import functools
import os

import torch

ENV_VAR = "REVISION_KERNELS"
BACKENDS = ("auto", "triton", "native", "torch", "ref")
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


@functools.cache
def native_available() -> bool:
    """True when the C extension (kernels/csrc/native.c) was built and imports."""
    from revision.kernels import native

    return native.available()


def select_backend(x: torch.Tensor) -> str:
    """The implementation to run for an input on `x.device`: "triton", "native", "torch" or "ref".

    "native" means: the op's C kernel when it has one and takes this input, else its torch path.
    """
    wanted = requested_backend()
    if wanted == "auto":
        fits = x.dim() != 2 or x.shape[1] <= MAX_TRITON_DIM
        if x.is_cuda:
            return "triton" if fits and triton_available() else "torch"
        return "native" if x.device.type == "cpu" and native_available() else "torch"
    if wanted == "triton" and not triton_available():
        raise RuntimeError(f"{ENV_VAR}=triton but triton cannot be imported")
    if wanted == "native" and not native_available():
        raise RuntimeError(f"{ENV_VAR}=native but the C extension is not built (reinstall with a C compiler)")
    return wanted
