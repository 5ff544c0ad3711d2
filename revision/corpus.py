"""A synthetic paired corpus with a realistic modality gap, written straight into two feature stores.

Both modalities share a latent "meaning" z (an anisotropic Gaussian with a power-law spectrum in a
low-dimensional subspace). Each modality places z in its own narrow cone on the unit sphere — the
cones' axes are far apart (centroid gap ≈ 0.6–0.8, as CLIP shows on COCO) and their covariance
shapes differ (different spectra and modality-specific noise) — so ReAlign has a gap to close and
the covariance-matching method has something left to fix. Row i of the text store and row i of the
image store share z and the id `s{i}`, so paired metrics (recall@k) are available.

Rows are generated block by block from (seed, block) so memory stays bounded and any block can be
regenerated; the whole corpus is a pure function of its config.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from revision.errors import UserError
from revision.store import FeatureStore, StoreConfig

_BLOCK = 16384


@dataclass(frozen=True, kw_only=True)
class CorpusConfig:
    """The synthetic corpus: sizes, geometry and seed."""

    rows: int = 200_000
    """Rows per modality (--rows)."""
    dim: int = 768
    """Embedding dimension (--dim)."""
    latent: int = 64
    """Dimension of the shared latent meaning."""
    axis_angle_deg: float = 85.0
    """Angle between the two cones' axes; with the cone widths below it sets the centroid gap."""
    seed: int = 0
    """Everything is a function of the seed (--seed)."""

    def __post_init__(self) -> None:
        if self.rows < 2:
            raise UserError(f"--rows must be at least 2, got {self.rows}")
        if self.dim < 8:
            raise UserError(f"--dim must be at least 8, got {self.dim}")
        if not 1 <= self.latent < self.dim // 2:
            raise UserError(f"latent dimension {self.latent} must be in [1, dim/2)")


class _Geometry:
    """The fixed directions and spectra of both cones (small: O(dim · latent))."""

    def __init__(self, cfg: CorpusConfig) -> None:
        rng = np.random.default_rng([cfg.seed, 0])
        d, k = cfg.dim, cfg.latent
        basis, _ = np.linalg.qr(rng.standard_normal((d, k + 2)))
        self.axis_text = basis[:, k]
        angle = np.deg2rad(cfg.axis_angle_deg)
        self.axis_image = np.cos(angle) * basis[:, k] + np.sin(angle) * basis[:, k + 1]
        # Meaning lives in a shared subspace; each modality sees it through its own mixing.
        self.latent_std = (np.arange(1, k + 1) ** -0.5).astype(np.float64)
        shared = basis[:, :k]
        twist, r = np.linalg.qr(np.eye(k) + 0.25 * rng.standard_normal((k, k)))
        twist *= np.sign(np.diag(r))  # QR may flip columns; keep the twist a small rotation
        self.map_image = shared * np.linspace(1.4, 0.6, k)
        self.map_text = (shared @ twist) * np.linspace(0.7, 1.3, k)
        # Modality-specific noise: images spread over more directions than texts.
        self.noise_image = 0.028
        self.noise_text = 0.02
        self.cone_image = 1.45
        self.cone_text = 1.6


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def corpus_blocks(cfg: CorpusConfig, skip_rows: int = 0) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (first_row, text_block, image_block): unit rows as float32, `_BLOCK` rows at a time.

    Blocks that end at or before `skip_rows` are not generated.
    """
    geo = _Geometry(cfg)
    for start in range(skip_rows // _BLOCK * _BLOCK, cfg.rows, _BLOCK):
        n = min(_BLOCK, cfg.rows - start)
        rng = np.random.default_rng([cfg.seed, 1, start // _BLOCK])
        z = rng.standard_normal((n, cfg.latent)) * geo.latent_std
        noise_t = rng.standard_normal((n, cfg.dim))
        noise_i = rng.standard_normal((n, cfg.dim))
        text = geo.cone_text * geo.axis_text + z @ geo.map_text.T + geo.noise_text * noise_t
        image = geo.cone_image * geo.axis_image + z @ geo.map_image.T + geo.noise_image * noise_i
        yield start, _unit(text).astype(np.float32), _unit(image).astype(np.float32)


def write_corpus(cfg: CorpusConfig, out_dir: str | Path, *, dtype: str = "float16") -> tuple[Path, Path]:
    """Write `text.zarr` and `image.zarr` under `out_dir`; an interrupted run resumes."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "text.zarr", out / "image.zarr"
    provenance = {"generator": "revision.corpus", "config": asdict(cfg)}
    stores = []
    for path, modality in zip(paths, ("text", "image"), strict=True):
        if path.exists():
            st = FeatureStore.open(path, mode="a")
            if st.attrs.get("corpus") != asdict(cfg):
                raise UserError(f"{path}: exists and holds another corpus; remove it or pick another --out")
        else:
            scfg = StoreConfig(
                modality=modality,
                dim=cfg.dim,
                dtype=dtype,
                normalized=True,
                encoder="synthetic-cones",
                provenance=provenance,
            )
            st = FeatureStore.create(path, scfg, attrs={"corpus": asdict(cfg)})
        stores.append(st)
    # The two stores commit one after the other: after a crash one may be a block ahead.
    for start, text, image in corpus_blocks(cfg, min(st.rows for st in stores)):
        for st, block in zip(stores, (text, image), strict=True):
            skip = st.rows - start
            if skip >= len(block):
                continue
            ids = np.array([f"s{i:09d}" for i in range(start + skip, start + len(block))], dtype=object)
            st.append(block[skip:], ids)
            st.commit(progress={"job": "corpus", "rows": start + len(block)})
    for st in stores:
        st.close()
    return paths
