"""Argument checks shared by the launchers: shapes, dtypes, devices and contiguity, as ValueError."""

from __future__ import annotations

import os

import torch

ROW_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_rows(op: str, *, require_contiguous: bool = True, **tensors: torch.Tensor) -> None:
    """Each tensor must be (n, D) fp16/bf16/fp32 with unit column stride (rows may be strided)."""
    for name, x in tensors.items():
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2:
            raise ValueError(f"{op}: {name} must be 2-D (n, D), got shape {tuple(x.shape)}")
        if x.dtype not in ROW_DTYPES:
            raise ValueError(f"{op}: {name} dtype {x.dtype} not supported (float16, bfloat16, float32)")
        if require_contiguous and x.shape[0] > 0 and x.shape[1] > 1 and x.stride(1) != 1:
            raise ValueError(f"{op}: {name} must be row-contiguous (stride {tuple(x.stride())})")
        if require_contiguous and x.shape[0] > 1 and x.stride(0) < x.shape[1]:
            raise ValueError(f"{op}: {name} rows overlap (stride {tuple(x.stride())})")


def rows_readable_in_place(x: torch.Tensor) -> bool:
    """True when a row kernel (C or Triton) can read the (n, D) tensor where it lies: unit column stride
    (any when D = 1, as only column 0 is read) and, for more than one row, rows at least D elements
    apart. Views outside this (column steps, transposes, zero strides from `expand`) need a copy."""
    n, d = x.shape
    return (d <= 1 or x.stride(1) == 1) and (n <= 1 or x.stride(0) >= d)


def kernel_rows(x: torch.Tensor) -> torch.Tensor:
    """x itself when a row kernel reads it in place, else its contiguous copy (for the dispatches: the
    Triton launchers refuse other layouts, and a device-side copy costs one sweep of the chunk)."""
    return x if x.dim() != 2 or rows_readable_in_place(x) else x.contiguous()


def check_vector(op: str, name: str, v: torch.Tensor, dim: int) -> None:
    """v must be a floating (D,) tensor."""
    if not isinstance(v, torch.Tensor):
        raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(v).__name__}")
    if tuple(v.shape) != (dim,):
        raise ValueError(f"{op}: {name} must have shape ({dim},), got {tuple(v.shape)}")
    if not v.is_floating_point():
        raise ValueError(f"{op}: {name} must be floating point (float64 expected), got {v.dtype}")


def interpreter_or_cuda(op: str, x: torch.Tensor) -> None:
    """Triton runs on CUDA tensors, or on CPU tensors under the interpreter (TRITON_INTERPRET=1)."""
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError(f"{op}: tensor on device {x.device}; Triton needs CUDA (or TRITON_INTERPRET=1 on CPU)")


def check_out_dtype(op: str, out_dtype: torch.dtype) -> None:
    if out_dtype not in ROW_DTYPES:
        raise ValueError(f"{op}: out_dtype {out_dtype} not supported (float16, bfloat16, float32)")


def prepare_out(
    op: str, out: torch.Tensor | None, n: int, dim: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """The caller's output buffer, checked (reusing one across chunks avoids page-faulting fresh memory
    on every chunk, which costs more than the arithmetic on CPU), or a new one."""
    if out is None:
        return torch.empty(n, dim, dtype=dtype, device=device)
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"{op}: out must be a torch.Tensor, got {type(out).__name__}")
    if tuple(out.shape) != (n, dim):
        raise ValueError(f"{op}: out must have shape ({n}, {dim}), got {tuple(out.shape)}")
    if out.dtype != dtype:
        raise ValueError(f"{op}: out dtype {out.dtype} differs from the output dtype {dtype}")
    if out.device != device:
        raise ValueError(f"{op}: out is on {out.device}, input on {device}")
    if not out.is_contiguous():
        raise ValueError(f"{op}: out must be contiguous (stride {tuple(out.stride())})")
    return out
