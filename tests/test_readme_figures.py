"""Every measured figure in the READMEs is a field of a committed bench/results JSON (issue 11 defect 13).

Each entry below is a passage of a README with its figures replaced by `{json.field.path}`
placeholders (`|k` multiplies by k; a path segment `key=value` or `k1=v1&k2=v2` picks the one list
element with those values). The passage must appear in the document, and each figure must equal its field at the
precision shown (trailing zeros of a whole number are not significant: "9,500" is 9,503 rounded).
A heading that names a JSON and a command must name the command that JSON records.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
README = "README.md"
ALIGN = "revision/align/README.md"

# (document, JSON under bench/results, passage with placeholders)
FIGURES: list[tuple[str, str, str]] = [
    # The store format
    (
        README,
        "store.json",
        "rows zstd buys {codecs.codec=zstd.compression_ratio}×, blosc-lz4 (shuffle, 256 KiB blocks) "
        "{codecs.codec=blosc-lz4.compression_ratio}×, while a scan decoding them runs at "
        "{codecs.codec=zstd.scan_mb_per_s|1e-3} and {codecs.codec=blosc-lz4.scan_mb_per_s|1e-3} GB/s against "
        "{codecs.codec=none.scan_mb_per_s|1e-3} GB/s without a codec",
    ),
    # Which method when
    (README, "demo.json", "Closes the centroid gap ({metrics.realign.centroid_gap} on the demo)"),
    (
        README,
        "align-methods.json",
        "keeps each text row's own neighbourhood ({table.data=shapes&method=realign.keep|100}–"
        "{table.data=cones&method=realign.keep|100} % of its 10 nearest text neighbours survive in the method "
        "benchmark)",
    ),
    (
        README,
        "demo.json",
        "(recall@1 {metrics.raw.recall_at_1_t2i} → {metrics.realign.recall_at_1_t2i} text→image and "
        "{metrics.raw.recall_at_1_i2t} → {metrics.realign.recall_at_1_i2t} image→text on the demo).",
    ),
    (
        README,
        "align-methods.json",
        "(k-NN mixing {table.data=shapes&method=realign.mix}–{table.data=cones&method=realign.mix} in the method "
        "benchmark,",
    ),
    (README, "demo.json", "in the method benchmark, {metrics.realign.knn_mixing} on the demo, of an ideal 0.5)"),
    (
        README,
        "align-methods.json",
        "(covariance error {table.data=shapes&method=realign-ot.cov_err}–{table.data=cones&method=realign-ot.cov_err} "
        "vs {table.data=cones&method=realign.cov_err}–{table.data=shapes&method=realign.cov_err} for realign, k-NN "
        "mixing {table.data=shapes&method=realign-ot.mix}–",
    ),
    (README, "demo.json", "–{metrics.realign-ot.knn_mixing} ≈ ideal)."),
    (
        README,
        "align-methods.json",
        "text neighbourhoods change ({table.data=cones&method=realign-ot.keep|100} % survive)",
    ),
    (
        README,
        "demo.json",
        "paired recall drops ({metrics.raw.recall_at_1_t2i} → {metrics.realign-ot.recall_at_1_t2i} text→image on "
        "the demo)",
    ),
    # Benchmarks: store
    (README, "store.json", "reference machine: {machine.cpus} CPU cores, {machine.memory_gb} GiB, no GPU."),
    (
        README,
        "store.json",
        "| sequential scan of the store (read-ahead, page cache warm) | {sizes.1000000.scan.rows_per_s|1e-6} M "
        "| {sizes.1000000.scan.mb_per_s} | {sizes.1000000.scan.peak_rss_mb} MB |",
    ),
    (
        README,
        "store.json",
        "| `np.load` of the same bytes (baseline) | {sizes.1000000.np_load.rows_per_s|1e-6} M "
        "| {sizes.1000000.np_load.mb_per_s} | {sizes.1000000.np_load.peak_rss_mb} MB |",
    ),
    (
        README,
        "store.json",
        "| ingest from `.npy` | {sizes.1000000.ingest_npy.rows_per_s|1e-3} k | {sizes.1000000.ingest_npy.mb_per_s} "
        "| {sizes.1000000.ingest_npy.peak_rss_mb} MB ({sizes.250000.ingest_npy.peak_rss_mb} MB at 250k rows) |",
    ),
    (
        README,
        "store.json",
        "| ingest from reference pickles (200k rows a file) | {sizes.1000000.ingest_pkl.rows_per_s|1e-3} k "
        "| {sizes.1000000.ingest_pkl.mb_per_s} | {sizes.1000000.ingest_pkl.peak_rss_mb} MB "
        "({sizes.250000.ingest_pkl.peak_rss_mb} MB at 250k rows) |",
    ),
    (
        README,
        "store.json",
        "| unpickling the reference layout alone (baseline) | {sizes.1000000.unpickle.rows_per_s|1e-3} k "
        "| {sizes.1000000.unpickle.mb_per_s} | {sizes.1000000.unpickle.peak_rss_mb} MB |",
    ),
    (
        README,
        "store.json",
        "The scan runs at **{scan_vs_np_load}× `np.load`** on the same bytes; ingest and scan memory stay flat "
        "from 250k to 1M rows (×{rss_growth.ingest_npy}, ×{rss_growth.scan}) while `np.load` grows with N "
        "(×{rss_growth.np_load}).",
    ),
    (
        README,
        "store.json",
        "Codecs on corpus-like rows: none {codecs.codec=none.scan_mb_per_s|1e-3} GB/s scan, blosc-lz4 "
        "{codecs.codec=blosc-lz4.scan_mb_per_s|1e-3} GB/s at {codecs.codec=blosc-lz4.compression_ratio}× "
        "compression, zstd {codecs.codec=zstd.scan_mb_per_s|1e-3} GB/s at {codecs.codec=zstd.compression_ratio}×",
    ),
    # Benchmarks: alignment
    (
        README,
        "align-pkl.json",
        "| {table.step=align-pkl.seconds} s, {table.step=align-pkl.peak RSS MB|1e-3} GB peak RSS "
        "| reference script re-implementation: {table.step=reference (baseline).seconds} s, "
        "{table.step=reference (baseline).peak RSS MB|1e-3} GB | **{ratios.align_pkl_speedup}× faster, "
        "{ratios.align_pkl_rss_fraction}× the RSS** |",
    ),
    (
        README,
        "align-pkl.json",
        "| store-native `revision align`, same data | {table.step=align (store-native).seconds} s, "
        "{table.step=align (store-native).peak RSS MB|1e-3} GB | same | **{ratios.align_store_speedup}× faster** |",
    ),
    (
        README,
        "align.json",
        "the median of 3 interleaved repeats | {per_repeat.2.align_synced} s (pass 1: "
        "{align_runs.2.passes.0.seconds} s text + {align_runs.2.passes.1.seconds} s image, pass 2: "
        "{align_runs.2.passes.2.seconds} s, pass 3: {align_runs.2.passes.3.seconds} s) | I/O floor, same repeat: "
        "{per_repeat.2.floor_synced} s | **{ratios.align_over_floor_median_repeat}× the floor** (median; the "
        "repeats: {ratios.align_over_floor_each_repeat.0}, {ratios.align_over_floor_each_repeat.1}, "
        "{ratios.align_over_floor_each_repeat.2}) |",
    ),
    (
        README,
        "align.json",
        "| the same, best against best | fastest `align`: {table.step=align: total, output on disk.seconds} s "
        "| fastest floor: {table.step=floor: 2 text + 1 image + pass 3's I/O on disk.seconds} s "
        "| **{ratios.align_over_floor}× the floor** |",
    ),
    (
        README,
        "align.json",
        "| peak RSS of `align`, 250k → 1M rows | {table.step=align in a subprocess (250,000 rows).peak RSS MB} → "
        "{table.step=align in a subprocess (1,000,000 rows).peak RSS MB} MB | | ×{ratios.rss_large_over_small} |",
    ),
    (
        README,
        "align.json",
        "| naive in-memory float64 reference algorithm | | {table.step=baseline f64 in memory (250,000 rows).seconds} "
        "s for 250k rows | ours {ratios.baseline_over_align_per_row}× faster per row",
    ),
    (
        README,
        "align.json",
        "pass 3's I/O alone (5.1 GB of float32 written and synced) took {per_repeat.0.write_floor_synced}, "
        "{per_repeat.1.write_floor_synced} and {per_repeat.2.write_floor_synced} s in the three repeats, so the "
        "ratio of single repeats ranges from {ratios.align_over_floor_each_repeat.0} to "
        "{ratios.align_over_floor_each_repeat.1};",
    ),
    (
        README,
        "align.json",
        "passes 1–2 read fp16 input at {table.step=align: pass 1 text.GB/s} GB/s (pass 1, text), "
        "{table.step=align: pass 1 image.GB/s} GB/s (pass 1, image) and {table.step=align: pass 2 centroid.GB/s} "
        "GB/s (pass 2) on 2 cores",
    ),
    # Benchmarks: loader
    (
        README,
        "bench_loader.json",
        "| memmap view + sorted hash index (positioned reads) | **{samples_per_s|1e-3},000** | **{peak_rss_mb} MB** "
        "| {open_s|1e3} ms |",
    ),
    (
        README,
        "bench_loader.json",
        "| memmap view, memory-mapped gather | {mmap_samples_per_s|1e-3},000 | {mmap_peak_rss_mb} MB |",
    ),
    (
        README,
        "bench_loader.json",
        "| the reference's dict of all pickles | {baseline_samples_per_s|1e-3},000 | {baseline_peak_rss_mb} MB "
        "| {baseline_load_s} s |",
    ),
    (
        README,
        "bench_loader.json",
        "RSS **{rss_ratio}×** the reference's, start-up independent of N. Through the full training path "
        "(annotations joined by id, {loader_workers} DataLoader workers) {loader_samples_per_s|1e-3}k samples/s.",
    ),
    # Benchmarks: kernels
    (
        README,
        "bench_kernels.json",
        "1M × 1280 fp16 in chunks of {chunk_rows} rows, {torch_threads} threads.",
    ),
    (README, "bench_kernels.json", "a memcpy of the same rows ran at {copy_gb_per_s} GB/s in+out."),
    (README, "bench_kernels.json", "baselines ran on the first {baseline_rows} rows"),
    (
        README,
        "bench_kernels.json",
        "(load average {load_average_before.0} before it, {load_average_after.0} after: the JSON's `note`)",
    ),
    (
        README,
        "bench_kernels.json",
        "`realign_centroid` timings by ±{kernels.realign_centroid.fused.spread|100} % around",
    ),
    (
        README,
        "align.json",
        "Inside `align`, passes 1–2 read {table.step=align: pass 1 image.GB/s}–"
        "{table.step=align: pass 2 centroid.GB/s} GB/s of fp16 input",
    ),
    (
        README,
        "bench_kernels.json",
        "| `normalize_rows` | torch | {kernels.normalize_rows.fused.gb_per_s_in_out} "
        "| {kernels.normalize_rows.fused.ns_per_value} | | | {kernels.normalize_rows.eager.ns_per_value} "
        "| {kernels.normalize_rows.speedup_vs_eager}× | | |",
    ),
    # Benchmarks: diagnose
    (
        README,
        "diagnose.json",
        "`revision diagnose` takes {diagnose.wall_s} s at {diagnose.rss_mb} MB peak RSS (streamed statistics over "
        "all 2M rows {diagnose.seconds.stream_all_stores} s; FAISS k-NN on the 10k pooled sample "
        "{knn.faiss_s} s, {table.stage=k-NN: numpy brute force.ratio}× a numpy brute force; separability "
        "{diagnose.seconds.separability} s), against an in-memory numpy computation of the same figures at "
        "{baseline.wall_s} s and {baseline.rss_mb|1e-3} GB. The centroid gap ({baseline.centroid_gap}) and RMG "
        "({baseline.rmg}) equal the independent computation.",
    ),
    # revision/align/README.md: methods (the table itself: test_align_method_table_is_its_json)
    (
        ALIGN,
        "align-methods.json",
        "cones with a real gap of {table.data=cones&method=none.gap};",
    ),
    (
        ALIGN,
        "align-methods.json",
        "(keep {table.data=cones&method=realign.keep} on cones, {table.data=shapes&method=realign.keep} on shapes)."
        " Right when the text is to stand in for images (ReVision training) and text semantics must survive. It "
        "leaves neighbourhoods modality-pure (mix {table.data=cones&method=realign.mix} and "
        "{table.data=shapes&method=realign.mix})",
    ),
    (
        ALIGN,
        "align-methods.json",
        "(cov_err {table.data=cones&method=realign-ot.cov_err} and {table.data=shapes&method=realign-ot.cov_err}, "
        "mix {table.data=cones&method=realign-ot.mix} and {table.data=shapes&method=realign-ot.mix} ≈ fully mixed). "
        "The price: when the covariance shapes differ, the map re-weights directions, so a text row's text "
        "neighbours change (keep {table.data=cones&method=realign-ot.keep} and "
        "{table.data=shapes&method=realign-ot.keep}).",
    ),
    (
        ALIGN,
        "align-methods.json",
        "(measured on cones: α = {table.data=cones&method=realign-ot shrunk.shrinkage} → cov_err "
        "{table.data=cones&method=realign-ot shrunk.cov_err}, mix {table.data=cones&method=realign-ot shrunk.mix}, "
        "keep {table.data=cones&method=realign-ot shrunk.keep}, the table's",
    ),
    (
        ALIGN,
        "align-methods.json",
        "but does not match the spread (trace {table.data=cones&method=gap-shift.trace} on cones)",
    ),
    (ALIGN, "align-methods.json", "the gap to the image centroid stays ({table.data=cones&method=mean-shift.gap})"),
    (
        ALIGN,
        "align-methods.json",
        "They do not close the gap ({table.data=cones&method=c3.gap} / {table.data=cones&method=capdec.gap} on cones) "
        "and destroy neighbourhoods (keep {table.data=shapes&method=c3.keep}–{table.data=cones&method=c3.keep})",
    ),
    (
        ALIGN,
        "align.json",
        "passes 1–2 read fp16 at {table.step=align: pass 1 image.GB/s}–{table.step=align: pass 2 centroid.GB/s} GB/s "
        "on 2 cores (`bench/results/align.json`, the fastest of its 1M-row runs)",
    ),
    # Benchmarks: demo (the table itself: test_demo_table_is_its_json)
    (
        README,
        "demo.json",
        "The demo's alignment part took {wall_s} s on the 2 cores (after the install; other jobs shared them, "
        "load average "
        "{load_average_before.0} before the run), at {peak_rss_mb} MB peak RSS.",
    ),
    # Scaling out: object storage (bench_scale.py --only object-storage; its command: test below)
    (
        README,
        "scale.json",
        "A full scan of {object_storage.rows} × {object_storage.dim} fp16 from SeaweedFS on loopback runs at "
        "{object_storage.servers.seaweedfs.s3.mb_per_s} MB/s, against {object_storage.local_cold.mb_per_s} MB/s "
        "from the local disk with the store's pages evicted and {object_storage.local.mb_per_s} MB/s from the page "
        "cache ({object_storage.servers.seaweedfs.ratio_s3_to_local_cold} and "
        "{object_storage.servers.seaweedfs.ratio_s3_to_local}: the issue's 0.5 target",
    ),
    (
        README,
        "scale.json",
        "from moto {object_storage.servers.moto.s3.mb_per_s} MB/s "
        "({object_storage.servers.moto.ratio_s3_to_local_cold} and {object_storage.servers.moto.ratio_s3_to_local}).",
    ),
    (
        README,
        "scale.json",
        "`bench_scale.py --only object-storage --s3-rows 200000 --dim 768 --repeats 3` (load average "
        "{object_storage.load_average_before.0} before the run)",
    ),
    (
        README,
        "scale.json",
        "the default, obstore, read {object_storage.servers.seaweedfs.s3_clients.obstore.mb_per_s} MB/s",
    ),
    (
        README,
        "scale.json",
        "passes 1–2 at 2 processes run at {scaling.command=fit&launch=2 procs x 1 thread.efficiency_passes_1_2} of "
        "linear scaling for `fit` and {scaling.command=align&launch=2 procs x 1 thread.efficiency_passes_1_2} for\n"
        "  `align` (whose whole run, pass 3 included, reaches "
        "{scaling.command=align&launch=2 procs x 1 thread.efficiency_wall}), measured with load average "
        "{load_average_before.0} before\n  the run; merging 1,024 ranks' partials at D = 1280 takes {merge.merge_s} s",
    ),
    # Benchmarks: embed
    (
        README,
        "embed.json",
        "runs {results.modality=image.pipeline_items_s} images/s and {results.modality=text.pipeline_items_s} "
        "texts/s, {results.modality=image.speedup}× and {results.modality=text.speedup}× a one-item-at-a-time loop.",
    ),
]

# The kernel table's rows for the C kernels: path, then each variant's ns/value and its ratio.
for _op, _label in (("row_stats", 1), ("realign_centroid", 2), ("realign_apply", 3)):
    _k = f"kernels.{_op}"
    FIGURES.append(
        (
            README,
            "bench_kernels.json",
            f"| `{_op}` (pass {_label}) | C | {{{_k}.fused.gb_per_s_in_out}} | {{{_k}.fused.ns_per_value}} "
            + " ".join(f"| {{{_k}.{v}.ns_per_value}} | {{{_k}.speedup_vs_{v}}}×" for v in ("torch", "eager", "compile"))
            + " |",
        )
    )

NUMBER = r"([0-9][0-9,]*(?:\.[0-9]+)?)"
PLACEHOLDER = re.compile(r"\{([^{}|]+)(?:\|([0-9.e+-]+))?\}")


def _text(doc: str) -> str:
    return " ".join((ROOT / doc).read_text().split())


def _load(name: str) -> dict[str, Any]:
    return json.loads((RESULTS / name).read_text())


def field(doc: Any, path: str) -> Any:
    for part in path.split("."):
        if "=" in part and isinstance(doc, list):
            wanted = dict(cond.split("=", 1) for cond in part.split("&"))
            found = [item for item in doc if all(str(item.get(k)) == v for k, v in wanted.items())]
            assert len(found) == 1, f"{path}: {len(found)} list items with {wanted}"
            doc = found[0]
        elif isinstance(doc, list):
            doc = doc[int(part)]
        else:
            assert part in doc, f"{path}: no field {part!r} (have {sorted(doc)[:12]})"
            doc = doc[part]
    return doc


def shown_precision(figure: str) -> float:
    """Half a unit of the last significant digit shown: 0.05 for "1.21", 50 for "9,500"."""
    digits = figure.replace(",", "")
    if "." in digits:
        return 0.5 * 10.0 ** -len(digits.split(".")[1])
    zeros = len(digits) - len(digits.rstrip("0")) if digits.strip("0") else 0
    return 0.5 * 10.0**zeros


def matches(figure: str, value: float) -> bool:
    return math.isclose(float(figure.replace(",", "")), value, abs_tol=shown_precision(figure) * (1 + 1e-9))


def check_passage(doc: str, json_name: str, passage: str) -> None:
    data = _load(json_name)
    fields = PLACEHOLDER.findall(passage)
    pieces = PLACEHOLDER.split(passage)
    literal = pieces[::3]
    pattern = NUMBER.join(r"\s+".join(re.escape(w) for w in re.split(r"\s+", part)) for part in literal)
    found = re.search(pattern, _text(doc))
    assert found, f"{doc}: passage not found (figures aside): {passage[:100]!r}…"
    for (path, scale), figure in zip(fields, found.groups(), strict=True):
        value = float(field(data, path)) * (float(scale) if scale else 1.0)
        assert matches(figure, value), f"{doc}: {figure} but {json_name}:{path} is {value:.6g}"


@pytest.mark.parametrize(
    ("doc", "json_name", "passage"), FIGURES, ids=[f"{d}:{j}:{i}" for i, (d, j, _) in enumerate(FIGURES)]
)
def test_figure_equals_its_json_field(doc: str, json_name: str, passage: str) -> None:
    check_passage(doc, json_name, passage)


METHOD_COLUMNS = ("gap", "trace", "cov_err", "mix", "keep")


def test_align_method_table_is_its_json() -> None:
    rows = {(r["data"], r["method"]): r for r in _load("align-methods.json")["table"]}
    shown = 0
    for line in (ROOT / ALIGN).read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 + len(METHOD_COLUMNS) or (cells[0], cells[1]) not in rows:
            continue
        shown += 1
        row = rows[cells[0], cells[1]]
        for key, cell in zip(METHOD_COLUMNS, cells[2:], strict=True):
            assert matches(cell, row[key]), (
                f"{ALIGN}: {cells[0]}/{cells[1]} {key} {cell} but the JSON has {row[key]:.6g}"
            )
    assert shown >= 11, f"{ALIGN}: only {shown} method rows found"


DEMO_ROWS = {
    "centroid gap": "centroid_gap",
    "trace ratio text/image": "trace_ratio",
    "relative modality gap (0.5 = none)": "rmg",
    "linear separability (0.5 = none)": "linear_separability",
    "k-NN mixing (ideal 0.50)": "knn_mixing",
    "recall@1 text→image (5,000 pairs)": "recall_at_1_t2i",
    "recall@1 image→text": "recall_at_1_i2t",
}


def test_demo_table_is_its_json() -> None:
    metrics = _load("demo.json")["metrics"]
    lines = (ROOT / README).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| metric | raw |"))
    columns = [c.strip() for c in lines[start].strip().strip("|").split("|")][1:]
    assert set(columns) <= set(metrics), f"demo columns {columns} vs demo.json entries {sorted(metrics)}"
    seen = set()
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        label, *cells = (c.strip() for c in line.strip().strip("|").split("|"))
        key = DEMO_ROWS[label]
        seen.add(key)
        for column, cell in zip(columns, cells, strict=True):
            value = metrics[column][key]
            assert matches(cell, value), f"{README}: demo {label} / {column} {cell} but demo.json has {value:.6g}"
    assert seen == set(DEMO_ROWS.values())
    for column in columns:
        assert matches("0.50", metrics[column]["knn_mixing_ideal"]), column


HEADING = re.compile(
    r"`bench/results/([\w.-]+\.json)`: `python (?:bench/|-m revision\.bench\.)([\w]+?)(?:\.py)?((?: [^`]*)?)`"
)


@pytest.mark.parametrize("doc", [README, ALIGN])
def test_commands_beside_figures_are_the_commands_in_the_json(doc: str) -> None:
    text = _text(doc)
    cited = HEADING.findall(text)
    if doc == README:
        assert len(cited) >= 7, cited
    for json_name, script, args in cited:
        recorded = _load(json_name)["command"]
        assert recorded == f"{script}.py{args}", (
            f"{doc}: `python bench/{script}.py{args}` but {json_name} says {recorded!r}"
        )


def test_object_storage_command_is_the_jsons() -> None:
    """`--only object-storage` records its own command in scale.json's `object_storage`; the README
    and docs/scaling.md cite that command beside its figures."""
    recorded = _load("scale.json")["object_storage"]["command"]
    readme = re.findall(r"JSON's `object_storage`, from `([^`]+)`", _text(README))
    scaling = re.findall(r"`python bench/(bench_scale\.py --only object-storage[^`]*)`", _text("docs/scaling.md"))
    assert readme == [recorded], f"{README} cites {readme}, scale.json's object_storage says {recorded!r}"
    assert scaling == [recorded], f"docs/scaling.md cites {scaling}, scale.json's object_storage says {recorded!r}"


def test_every_cited_json_is_committed() -> None:
    for doc in (README, ALIGN):
        for name in re.findall(r"bench/results/([\w.-]+\.json)", _text(doc)):
            assert (RESULTS / name).is_file(), f"{doc} cites bench/results/{name}, which does not exist"


def test_the_checker_bites() -> None:
    # A figure rounded the wrong way, a figure off by one unit, and a whole number off past its zeros.
    assert matches("1.21", 1.2093) and not matches("1.21", 1.2049)
    assert matches("9,500", 9503.35) and not matches("9,500", 9551.0)
    assert not matches("35.8", 37.96)
    with pytest.raises(AssertionError):
        check_passage(README, "align.json", "naive in-memory float64 reference algorithm | | {ratios.rss_large_mb} s")


def test_experiment_table_is_its_json() -> None:
    """The README's experiment table: every cell "mean ± std" is its summary row of experiment.json."""
    doc = _load("experiment.json")
    rows = {(s["method"], s["noise"]): s for s in doc["summary"]}
    lines = (ROOT / README).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| method | feature noise σ |"))
    seen = set()
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        method, noise, *cells = (c.strip().strip("*") for c in line.strip().strip("|").split("|"))
        sigma = 0.0 if noise == "0" else doc["noise_sigma"]
        if noise != "0":
            assert matches(noise, sigma), f"{README}: experiment noise {noise} but noise_sigma is {sigma}"
        summary = rows[(method.split(" ")[0], sigma)]
        for key, cell in zip(("exact_match", "attribute_accuracy", "token_accuracy"), cells, strict=True):
            mean, std = (c.strip() for c in cell.split("±"))
            assert matches(mean, summary[f"{key}_mean"]), f"{README}: {method} σ={noise} {key} {mean}"
            assert matches(std, summary[f"{key}_std"]), f"{README}: {method} σ={noise} {key} ± {std}"
        seen.add((method.split(" ")[0], sigma))
    assert seen == set(rows), f"README experiment rows {sorted(seen)} vs experiment.json {sorted(rows)}"
