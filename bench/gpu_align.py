"""Step (c) of the GPU check: `revision align --device cuda` end to end on a generated fp16 store,
timed against its I/O floor (the same reads and writes with no arithmetic, bench_align's definition).

The text store is --rows × --dim fp16 (8M × 1280 = 20 GiB by default) and the image store an eighth of
it; rows are generated on the GPU. The aligned output is fp16 so inputs and output fit the lent
machine's disk; --rows shrinks (to a power of two) when the free space would not hold them. Then:
the aligned rows of the first block checked against the float64 reference with the run's own
statistics, and the GPU's pass-1 text statistics against the CPU path's on the same store.
The JSON is rewritten after every phase, so a time limit still leaves what was measured.

    python -P bench/gpu_align.py --rows 8388608 --work /tmp/revision-gpu-check --output align.json
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from revision.bench.bench_align import scan_seconds, write_floor_seconds
from revision.bench.harness import write_results

GEN_ROWS = 1 << 17
CHECK_ROWS = 4096


def generate(path: Path, rows: int, dim: int, axis: int, seed: int, device: torch.device) -> float:
    """An fp16 store of unit rows in a cone around basis vector `axis` (a modality); → seconds."""
    from revision.store import FeatureStore, StoreConfig

    t0 = time.perf_counter()
    shutil.rmtree(path, ignore_errors=True)
    gen = torch.Generator(device=device).manual_seed(seed)
    modality = "text" if axis == 0 else "image"
    with FeatureStore.create(path, StoreConfig(modality=modality, dim=dim, dtype="float16")) as st:
        for s in range(0, rows, GEN_ROWS):
            n = min(GEN_ROWS, rows - s)
            x = torch.randn(n, dim, device=device, generator=gen).mul_(2.4 / dim**0.5)
            x[:, axis] += 1.0
            x = torch.nn.functional.normalize(x, dim=1).half().cpu().numpy()
            st.append(x, [f"{modality[:3]}_{k:010d}" for k in range(s, s + n)])
    return time.perf_counter() - t0


def rows_for_disk(rows: int, dim: int, work: Path) -> int:
    """The largest power-of-two row count ≤ rows whose stores and output fill at most 80% of the free disk."""
    free = shutil.disk_usage(work).free
    need_per_row = dim * 2 * (1 + 1 / 8 + 1)  # text, image, aligned fp16
    fit = rows
    while fit > GEN_ROWS and fit * need_per_row > 0.8 * free:
        fit //= 2
    return fit


def run_align(text: Path, image: Path, out: Path, device: str) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-P", "-m", "revision", "align", "--text", str(text), "--image", str(image),
           "--out", str(out), "--device", device, "--out-dtype", "float16", "--no-progress"]  # fmt: skip
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - t0
    print(res.stdout + res.stderr)
    if res.returncode != 0:
        raise SystemExit(f"gpu_align: revision align exited {res.returncode}")
    os.sync()
    return {
        "command": " ".join(cmd[2:]),
        "seconds": seconds,
        "synced": time.perf_counter() - t0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "stdout": res.stdout.strip().splitlines(),
    }


def check_output(text: Path, out: Path) -> dict[str, Any]:
    """The first rows of the aligned store against the float64 reference, with the run's statistics."""
    from revision.align.stats import load_stats
    from revision.kernels import realign_apply_ref
    from revision.kernels.compare import OUTPUT_TOLERANCE
    from revision.store import FeatureStore

    stats = load_stats(Path(str(out) + ".stats.json"))
    assert stats.mu_i is not None and stats.scale is not None and stats.mu_hat is not None
    x = torch.from_numpy(FeatureStore.open(text).read(0, CHECK_ROWS))
    got = torch.from_numpy(FeatureStore.open(out).read(0, CHECK_ROWS)).double()
    want = realign_apply_ref(x, stats.mu_t, stats.mu_i, stats.scale, stats.mu_hat, out_dtype=torch.float64)
    err = (got - want).abs()
    atol, rtol = OUTPUT_TOLERANCE[torch.float16]
    ok = bool((err <= atol + rtol * want.abs()).all())
    return {"rows": x.shape[0], "max_abs_error": float(err.max()), "within_fp16_tolerance": ok}


def cpu_statistics(text: Path, out: Path) -> dict[str, Any]:
    """The text statistics of pass 1 recomputed on the CPU path, compared with what the GPU run saved."""
    from revision.align.stats import load_stats
    from revision.kernels import Moments, merge_moments, row_stats
    from revision.store import FeatureStore

    gpu = load_stats(Path(str(out) + ".stats.json")).text
    t0 = time.perf_counter()
    st = FeatureStore.open(text)
    cpu = Moments.empty(st.dim)
    for _, block in st.iter_chunks():
        cpu = merge_moments(cpu, row_stats(torch.from_numpy(block)))
    m2_rel = float(((gpu.m2 - cpu.m2).abs() / cpu.m2.abs().clamp_min(1e-300)).max())
    return {
        "seconds": time.perf_counter() - t0,
        "n_equal": gpu.n == cpu.n,
        "mean_bitwise_equal": bool(torch.equal(gpu.mean, cpu.mean)),
        "mean_fp32_bitwise_equal": bool(torch.equal(gpu.mean.float(), cpu.mean.float())),
        "mean_max_abs_difference": float((gpu.mean - cpu.mean).abs().max()),
        "m2_max_relative_difference": m2_rel,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=8_388_608, help="text rows (default 8388608)")
    ap.add_argument("--dim", type=int, default=1280, help="row width (default 1280)")
    ap.add_argument("--device", default="cuda", help="revision align --device (default cuda)")
    ap.add_argument("--work", type=Path, required=True, help="scratch folder for the stores (emptied first)")
    ap.add_argument("--output", type=Path, required=True, help="JSON path")
    args = ap.parse_args(argv)
    if args.rows < 1 or args.dim < 1:
        raise SystemExit("gpu_align: error: --rows and --dim must be positive")
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    rows = rows_for_disk(args.rows, args.dim, args.work)
    gen_device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text, image, out = args.work / "text.zarr", args.work / "image.zarr", args.work / "aligned.zarr"
    doc: dict[str, Any] = {"rows": rows, "rows_asked": args.rows, "image_rows": max(1, rows // 8), "dim": args.dim}
    headline: dict[str, Any] = {"rows": rows, "dim": args.dim}
    doc["headline"] = headline

    def save() -> None:
        write_results("gpu_align", doc, args.output)

    doc["generate_seconds"] = generate(text, rows, args.dim, 0, 1, gen_device)
    doc["generate_seconds"] += generate(image, doc["image_rows"], args.dim, 1, 2, gen_device)
    save()
    doc["align"] = run_align(text, image, out, args.device)
    headline["align_seconds"] = doc["align"]["synced"]
    save()
    scan_t, nbytes = scan_seconds(text)
    scan_i, _ = scan_seconds(image)
    write_s, write_synced = write_floor_seconds(text, args.work / "floor.zarr", dtype="float16")
    shutil.rmtree(args.work / "floor.zarr", ignore_errors=True)
    floor = 2 * scan_t + scan_i + write_synced
    doc["floor"] = {"scan_text": scan_t, "scan_image": scan_i, "write": write_s, "write_synced": write_synced,
                    "seconds": floor, "text_bytes": nbytes}  # fmt: skip
    headline.update(floor_seconds=floor, align_over_floor=doc["align"]["synced"] / floor,
                    rows_per_s=rows / doc["align"]["synced"])  # fmt: skip
    save()
    doc["output_check"] = check_output(text, out)
    headline["output_within_tolerance"] = doc["output_check"]["within_fp16_tolerance"]
    save()
    doc["cpu_statistics"] = cpu_statistics(text, out)
    headline["mean_bitwise_equal_cpu"] = doc["cpu_statistics"]["mean_bitwise_equal"]
    save()
    print(f"align {rows:,} x {args.dim} fp16 on {args.device}: {doc['align']['synced']:.1f} s, floor {floor:.1f} s "
          f"({headline['align_over_floor']:.2f}x); output check {doc['output_check']}; "
          f"CPU statistics {doc['cpu_statistics']}")  # fmt: skip
    return 0 if doc["output_check"]["within_fp16_tolerance"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
