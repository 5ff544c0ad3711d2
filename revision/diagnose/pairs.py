"""Which text row belongs with which image row: by equal ids, or from a pairs file.

Pairs feed the paired metrics (recall@k, median rank, paired RMG). Stores written by an embed
step usually hold the same ids in the same order; that "identity" case is detected by one
streaming comparison of the id columns and then paired statistics are exact over all rows.
Otherwise pairs are resolved for a seeded sample only, with id lookups in dictionaries the size
of the sample, so memory never grows with the stores.

A pairs file is CSV, TSV or Parquet with columns `text_id` and `image_id`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from revision import dist
from revision.diagnose.sources import VectorSource, sample_indices
from revision.errors import UserError

_ID_BLOCK = 1 << 16


@dataclass(frozen=True)
class PairSet:
    """Row pairs (text_rows[p], image_rows[p]) used for the paired metrics."""

    kind: str
    """"identity" (row r ↔ row r, all rows), "ids" (equal ids, sampled) or "file"."""
    text_rows: np.ndarray
    image_rows: np.ndarray
    candidates: int
    """How many pairs the sample was drawn from (lower bound for "ids": the sampled texts)."""
    unmatched: int = 0
    """Sampled pairs dropped because an id was in neither store."""

    @property
    def size(self) -> int:
        return int(len(self.text_rows))


def _ids_equal_in_order(text: VectorSource, image: VectorSource) -> bool:
    """Whether both stores hold the same ids in the same order; under torchrun each rank compares
    its own share of the id blocks and the answer is every rank's."""
    if text.rows != image.rows:
        return False
    blocks = [(lo, min(lo + _ID_BLOCK, text.rows)) for lo in range(0, text.rows, _ID_BLOCK)]
    equal = all(np.array_equal(text.read_ids(lo, hi), image.read_ids(lo, hi)) for lo, hi in dist.share(blocks))
    return dist.all_ranks(equal)


def _ids_at(src: VectorSource, rows: np.ndarray) -> np.ndarray:
    """The ids of the given sorted rows, by one streaming pass over the id column."""
    out = np.empty(len(rows), dtype=object)
    pos = 0
    for start, block in src.iter_ids(block_rows=_ID_BLOCK):
        stop = start + len(block)
        end = int(np.searchsorted(rows, stop, side="left"))
        if end > pos:
            out[pos:end] = np.asarray(block, dtype=object)[rows[pos:end] - start]
            pos = end
        if pos == len(rows):
            break
    return out


def _rows_of_ids(src: VectorSource, wanted: set[str]) -> dict[str, list[int]]:
    """Every row whose id is in `wanted` (one streaming pass; memory the size of `wanted`)."""
    found: dict[str, list[int]] = {}
    for start, block in src.iter_ids(block_rows=_ID_BLOCK):
        for offset, ident in enumerate(block.tolist() if hasattr(block, "tolist") else block):
            if ident in wanted:
                found.setdefault(ident, []).append(start + offset)
    return found


def pairs_by_ids(text: VectorSource, image: VectorSource, *, sample: int, seed: int) -> PairSet:
    """Pair rows that carry the same id: every row when the id columns are equal, else a sample.

    Under torchrun the id columns are compared by all ranks, each its share; a sample is paired by
    rank 0 alone (it scans the image ids once) and the pairs handed to every rank.
    """
    if _ids_equal_in_order(text, image):
        rows = sample_indices(text.rows, min(sample, text.rows), seed)
        return PairSet("identity", rows, rows.copy(), candidates=text.rows)
    return dist.on_root(lambda: _sampled_pairs_by_ids(text, image, sample=sample, seed=seed))


def _sampled_pairs_by_ids(text: VectorSource, image: VectorSource, *, sample: int, seed: int) -> PairSet:
    t_rows = sample_indices(text.rows, min(sample, text.rows), seed)
    t_ids = _ids_at(text, t_rows)
    img_rows = _rows_of_ids(image, {str(i) for i in t_ids})
    pt: list[int] = []
    pi: list[int] = []
    for row, ident in zip(t_rows.tolist(), t_ids.tolist(), strict=True):
        for j in img_rows.get(str(ident), []):
            pt.append(row)
            pi.append(j)
    if not pt:
        raise UserError(
            f"--pairs: none of {len(t_rows)} sampled text ids occurs in the image store "
            "(ids differ between the stores; give --pairs-file)"
        )
    return PairSet("ids", np.asarray(pt, np.int64), np.asarray(pi, np.int64), candidates=len(t_rows))


def _pair_batches(path: Path) -> Iterator[tuple[list[str], list[str]]]:
    import pyarrow as pa

    suffix = path.suffix.lower()
    if suffix not in (".parquet", ".csv", ".tsv"):
        raise UserError(f"--pairs-file {path}: expected .csv, .tsv or .parquet")
    try:
        # Our own handle, closed when the batches are read: pyarrow's readers close theirs only when
        # collected (the CSV reader after its read-ahead threads let go), which left the file open.
        with open(path, "rb") as fh:
            if suffix == ".parquet":
                import pyarrow.parquet as pq

                reader: object = pq.ParquetFile(fh).iter_batches(columns=["text_id", "image_id"])
            else:
                import pyarrow.csv as pcsv

                reader = pcsv.open_csv(
                    fh,
                    parse_options=pcsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ","),
                    convert_options=pcsv.ConvertOptions(
                        include_columns=["text_id", "image_id"],
                        column_types={"text_id": pa.string(), "image_id": pa.string()},
                    ),
                )
            for batch in reader:  # type: ignore[attr-defined]
                cols = batch.to_pydict()
                yield [str(v) for v in cols["text_id"]], [str(v) for v in cols["image_id"]]
    except UserError:
        raise
    except (pa.ArrowInvalid, KeyError, OSError) as exc:
        raise UserError(f"--pairs-file {path}: cannot read columns text_id, image_id ({exc})") from exc


def pairs_from_file(path: str | Path, text: VectorSource, image: VectorSource, *, sample: int, seed: int) -> PairSet:
    """A seeded sample of the pairs listed in a file, resolved to rows of both stores (under
    torchrun by rank 0, which hands the pairs, or its error, to every rank)."""
    return dist.on_root(lambda: _pairs_from_file(Path(path), text, image, sample=sample, seed=seed))


def _pairs_from_file(path: Path, text: VectorSource, image: VectorSource, *, sample: int, seed: int) -> PairSet:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--pairs-file {path}: no such file")
    total = sum(len(t) for t, _ in _pair_batches(path))
    if total == 0:
        raise UserError(f"--pairs-file {path}: no pairs")
    keep = sample_indices(total, min(sample, total), seed)
    chosen: list[tuple[str, str]] = []
    seen = 0
    pos = 0
    for t_ids, i_ids in _pair_batches(path):
        end = int(np.searchsorted(keep, seen + len(t_ids), side="left"))
        for k in keep[pos:end].tolist():
            chosen.append((t_ids[k - seen], i_ids[k - seen]))
        pos, seen = end, seen + len(t_ids)
    t_map = _rows_of_ids(text, {t for t, _ in chosen})
    i_map = _rows_of_ids(image, {i for _, i in chosen})
    pt: list[int] = []
    pi: list[int] = []
    unmatched = 0
    for t, i in chosen:
        if t not in t_map or i not in i_map:
            unmatched += 1
            continue
        # An id that occurs more than once in a store is ambiguous; its first row stands for it.
        pt.append(t_map[t][0])
        pi.append(i_map[i][0])
    if not pt:
        raise UserError(f"--pairs-file {path}: none of {len(chosen)} sampled pairs matches ids in both stores")
    return PairSet("file", np.asarray(pt, np.int64), np.asarray(pi, np.int64), candidates=total, unmatched=unmatched)
