"""A tiny input makes a tiny store: chunks sized to the input, not padded to ~4 MiB (issue 16 #12)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from revision.store import FeatureStore
from revision.store.ingest import ingest
from revision.store.pickle_io import write_reference_pickle


def test_one_row_npy_store_is_small(tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", np.ones((1, 16), np.float16))
    ingest(tmp_path / "one.npy", tmp_path / "s.zarr", fmt="npy", modality="text")
    st = FeatureStore.open(tmp_path / "s.zarr")
    assert st.rows == 1 and st.chunk_rows == 1
    assert st.bytes_on_disk() < 16 << 10  # was 4 MiB: one padded 131,072-row chunk
    np.testing.assert_array_equal(st.read(), np.ones((1, 16), np.float16))


def test_small_pickle_input_chunks_fit_it_and_larger_inputs_keep_the_default(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    recs = [{"id": f"t{i}", "embed": rng.standard_normal(8).astype(np.float16)} for i in range(5)]
    write_reference_pickle(tmp_path / "pk" / "text_embeds_1.pkl", recs)
    ingest(tmp_path / "pk", tmp_path / "p.zarr", fmt="reference-pkl")
    st = FeatureStore.open(tmp_path / "p.zarr")
    assert st.chunk_rows == 8 and st.rows == 5
    big = rng.standard_normal((300_000, 8)).astype(np.float16)
    np.save(tmp_path / "big.npy", big)
    ingest(tmp_path / "big.npy", tmp_path / "b.zarr", fmt="npy", modality="text")
    assert FeatureStore.open(tmp_path / "b.zarr").chunk_rows == 262144  # the automatic ~4 MiB chunk
