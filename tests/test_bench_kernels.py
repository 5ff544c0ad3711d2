"""bench_kernels: one throughput convention (bytes in + out) for every op and the copy, ns/value per variant.

Issue 11 defect 13: the README's kernel table said "GB/s of input" while the JSON counted input +
output for realign_apply and normalize_rows, and had no C-kernel timings. These run the benchmark
itself at a tiny size and check its JSON against bytes computed here from the shapes.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from revision.bench import bench_kernels
from revision.kernels.native import available as native_available

ROWS, DIM, CHUNK, BASELINE = 3000, 48, 1024, 1500
FP16, FP32, F64 = 2, 4, 8


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "kernels.json"
    argv = ["--rows", str(ROWS), "--dim", str(DIM), "--chunk-rows", str(CHUNK), "--baseline-rows", str(BASELINE)]
    rc = bench_kernels.main([*argv, "--repeats", "3", "--no-compile", "--device", "cpu", "--output", str(out)])
    assert rc == 0
    return json.loads(out.read_text())


def expected_bytes(op: str, rows: int) -> int:
    """Rows read plus what the op writes: output rows, or the float64 vectors each call returns."""
    calls = -(-rows // CHUNK)
    out = {
        "row_stats": calls * 2 * DIM * F64,  # mean and M2
        "realign_centroid": calls * DIM * F64,  # the sum of the projected rows
        "realign_apply": rows * DIM * FP16,
        "normalize_rows": rows * DIM * FP32,
        "c3": rows * DIM * FP16,
    }[op]
    return rows * DIM * FP16 + out


def test_bytes_are_input_plus_output_for_every_op(result: dict) -> None:
    assert set(result["kernels"]) == {"row_stats", "realign_centroid", "realign_apply", "normalize_rows", "c3"}
    for op, entry in result["kernels"].items():
        assert entry["in_bytes"] == ROWS * DIM * FP16, op
        assert entry["bytes_in_out"] == expected_bytes(op, ROWS), (op, entry["bytes_in_out"])
    assert "in+out" in result["throughput"]


def test_every_variant_reports_the_same_convention(result: dict) -> None:
    for op, entry in result["kernels"].items():
        copy = entry["copy"]["gb_per_s_in_out"]
        for variant in ("copy", "fused", "torch", "eager"):
            if variant not in entry:
                continue
            v = entry[variant]
            rows = v["rows"]
            # The copy reads and writes the same rows: counted the same way as the ops.
            timed = 2 * rows * DIM * FP16 if variant == "copy" else expected_bytes(op, rows)
            assert v["gb_per_s_in_out"] * v["seconds"] * 1e9 == pytest.approx(timed, rel=1e-9), (op, variant)
            assert v["ns_per_value"] == pytest.approx(v["seconds"] / (rows * DIM) * 1e9, rel=1e-9), (op, variant)
            assert v["fraction_of_copy_bandwidth"] == pytest.approx(v["gb_per_s_in_out"] / copy, rel=1e-9)
            assert "gb_per_s" not in v, "a bare gb_per_s hides which bytes it counts"


def test_baselines_time_the_leading_chunks_and_ratios_are_per_row(result: dict) -> None:
    baseline_rows = 2 * CHUNK  # the first chunks that hold at least BASELINE rows
    assert result["baseline_rows"] == baseline_rows
    for op, entry in result["kernels"].items():
        assert entry["fused"]["rows"] == ROWS
        if "eager" in entry:
            assert entry["eager"]["rows"] == baseline_rows
            # Rounds ran the variants in turn; the ratio is the median of each round's ratio per row.
            rounds = [
                (e / baseline_rows) / (f / ROWS)
                for f, e in zip(entry["fused"]["seconds_each"], entry["eager"]["seconds_each"], strict=True)
            ]
            assert len(rounds) == 3
            assert entry["speedup_vs_eager"] == pytest.approx(statistics.median(rounds), rel=1e-9), op


@pytest.mark.skipif(not native_available(), reason="the C extension is not built")
def test_c_kernels_are_timed_beside_the_torch_path(result: dict) -> None:
    for op in ("row_stats", "realign_centroid", "realign_apply"):
        entry = result["kernels"][op]
        assert entry["fused_path"] == "native", op
        assert entry["fused"]["ns_per_value"] > 0
        assert entry["torch"]["ns_per_value"] > 0
    # normalize_rows and c3 have no C kernel: their production path is the torch one, and says so.
    assert result["kernels"]["normalize_rows"]["fused_path"] == "torch"


def test_load_is_recorded(result: dict) -> None:
    assert len(result["load_average_before"]) == 3 and len(result["load_average_after"]) == 3
    assert result["note"]


def test_unknown_op_is_a_one_line_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        bench_kernels.main(["--ops", "row_stats,nope", "--output", str(tmp_path / "x.json")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--ops: unknown op(s) nope" in err
    assert not (tmp_path / "x.json").exists()
