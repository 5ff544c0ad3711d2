"""AlignConfig: how an alignment job runs (method, its parameters, strictness, I/O sizes), validated once.

The resolved config is saved beside the data it produced: in the stats JSON and in the aligned
store's attrs["alignment"]. Validation errors name the CLI flag a user would fix.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from revision.errors import UserError

if TYPE_CHECKING:
    import torch

#: Method names, in the order `--method` lists them (the registry in methods.py implements each).
METHOD_NAMES: tuple[str, ...] = ("realign", "realign-ot", "mean-shift", "c3", "capdec", "gap-shift")

OUT_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")

#: C3 and CapDec's noise level from their papers: sigma² = 0.016.
DEFAULT_NOISE_STD = math.sqrt(0.016)


@dataclass(frozen=True, kw_only=True)
class AlignConfig:
    """One alignment job's settings. Frozen: a fitted stats file records exactly these values."""

    method: str = "realign"
    """Which transform (--method): realign (default), realign-ot, mean-shift, c3, capdec, gap-shift."""
    strict: bool = True
    """Abort on a NaN/±Inf value or an all-zero row in the inputs, naming store and row (--no-strict turns
    it off: non-finite values then count as 0 and zero rows stay zero, as in the reference)."""
    out_dtype: str = "float32"
    """Storage dtype of the aligned rows (--out-dtype): float32 (default, as the reference), float16,
    bfloat16."""
    gap_lambda: float | None = None
    """gap-shift only (--gap-lambda): distance moved along Δ/‖Δ‖; None → ‖Δ‖ (closes the centroid gap)."""
    noise_std: float = DEFAULT_NOISE_STD
    """c3 / capdec only (--noise-std): standard deviation of the Gaussian noise per coordinate."""
    seed: int = 0
    """c3 / capdec only (--seed): noise seed; a row's noise depends only on (seed, global row)."""
    shrinkage: float = 1e-3
    """realign-ot only (--shrinkage): each covariance Σ becomes (1 − α)Σ + α·(tr Σ / D)·I, so the
    square roots stay well conditioned when a modality fills only part of the space."""
    round_means_fp32: bool = True
    """Round μ_t and μ_i to float32 before use, as the reference does (the golden outputs need it)."""
    block_rows: int | None = None
    """Rows per read block (--block-rows); None → the store's default (~16 MiB blocks). Memory is
    bounded by a few blocks, never by the number of rows."""
    commit_rows: int | None = None
    """Rows between commits of the aligned store (--commit-rows); None → whole output shards, about
    1 GiB of output per commit (each commit costs a few metadata writes, ~10 ms on a busy disk). A
    killed job resumes from the last commit."""
    device: str = "auto"
    """Where the per-chunk arithmetic runs (--device): auto (CUDA when available, so the Triton kernels
    run; else CPU), cpu, cuda, cuda:N. Statistics are merged in float64 on the CPU either way."""
    progress: bool = True
    """Show progress bars with rows/s on stderr (off under REVISION_NO_PROGRESS=1)."""

    def __post_init__(self) -> None:
        if self.method not in METHOD_NAMES:
            raise UserError(f"--method: {self.method!r} is not one of {', '.join(METHOD_NAMES)}")
        if self.out_dtype not in OUT_DTYPES:
            raise UserError(f"--out-dtype: {self.out_dtype!r} is not one of {', '.join(OUT_DTYPES)}")
        if self.gap_lambda is not None and not (math.isfinite(self.gap_lambda) and self.gap_lambda >= 0):
            # A negative distance would move text away from the images: never what gap-shift is for.
            raise UserError(f"--gap-lambda must be a finite number ≥ 0, got {self.gap_lambda}")
        if not (math.isfinite(self.noise_std) and self.noise_std >= 0):
            raise UserError(f"--noise-std must be a finite number ≥ 0, got {self.noise_std}")
        if not 0.0 <= self.shrinkage <= 1.0:
            raise UserError(f"--shrinkage must lie in [0, 1], got {self.shrinkage}")
        if self.block_rows is not None and self.block_rows <= 0:
            raise UserError(f"--block-rows must be positive, got {self.block_rows}")
        if self.commit_rows is not None and self.commit_rows <= 0:
            raise UserError(f"--commit-rows must be positive, got {self.commit_rows}")
        if not (self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device)):
            raise UserError(f"--device: {self.device!r} is not auto, cpu, cuda or cuda:N")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"--seed must be an integer ≥ 0, got {self.seed!r}")

    def method_params(self) -> dict[str, Any]:
        """The settings that change the transform's result (saved with the stats, checked on apply)."""
        params: dict[str, Any] = {"round_means_fp32": self.round_means_fp32}
        if self.method == "gap-shift":
            params["gap_lambda"] = self.gap_lambda
        if self.method in ("c3", "capdec"):
            params.update(noise_std=self.noise_std, seed=self.seed)
        if self.method == "realign-ot":
            params["shrinkage"] = self.shrinkage
        return params

    def torch_device(self) -> torch.device:
        """The resolved device; asking for CUDA without one is a UserError naming --device."""
        import torch  # here, not at the top: the CLI reads this module's names without loading torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--device {self.device}: no CUDA device is available")
        return torch.device(self.device)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
