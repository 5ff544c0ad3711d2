"""Benchmark of the per-chunk kernels against a copy of the same rows, timed in turn in the same run.

Variants of each op: the production path (CUDA: Triton; CPU: the C kernels of row_stats /
realign_centroid / realign_apply when built, else the fused torch path), the fused torch path beside
the C kernels, torch eager and torch.compile versions of the same math, and a copy (device-to-device
or memcpy). Throughput is "GB/s in+out" for all alike: bytes of rows read plus bytes written (output
rows; the float64 vectors a statistics call returns), over the median time; `ns_per_value` is the
median time per input value. Each round times every variant once, so on a shared machine they meet
the same load; each × is the median of the rounds' ratios of time per row, which also lets the slow
baselines run on the first `--baseline-rows` rows only.

    python bench/bench_kernels.py                          # small CPU run
    python bench/bench_kernels.py --rows 1048576 --chunk-rows 65536 --baseline-rows 65536 \
        --ops row_stats,realign_centroid,realign_apply,normalize_rows       # the README's CPU table
    python bench/bench_kernels.py --rows 8388608 --dim 1280 --chunk-rows 1048576   # the GPU size
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from revision.bench.harness import Timing, peak_rss_mb, print_table, time_it, write_results
from revision.kernels import (
    c3,
    normalize_rows,
    realign_apply,
    realign_apply_torch,
    realign_centroid,
    realign_centroid_torch,
    row_stats,
    row_stats_torch,
    select_backend,
)

Op = Callable[[torch.Tensor, int], Any]


# The straightforward torch versions of the same math (fp32 per row, float64 sums), written the
# way one would without fusing: each line is one or more full sweeps over the chunk.
def _unit(x: torch.Tensor) -> torch.Tensor:
    v = torch.nan_to_num(x.float(), nan=0.0, posinf=0.0, neginf=0.0)
    m = v.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
    z = v / m
    n = torch.linalg.vector_norm(z, dim=1, keepdim=True)
    return torch.where(n * m < 1e-10, v, z / n.clamp_min(1e-30))


def eager_row_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    u = _unit(x).double()
    mean = u.mean(dim=0)
    return mean, ((u - mean) ** 2).sum(dim=0)


def eager_centroid(x: torch.Tensor, mu_t: torch.Tensor, mu_i: torch.Tensor, s: float) -> torch.Tensor:
    return _unit(mu_i + s * (_unit(x) - mu_t)).double().sum(dim=0)


def eager_apply(
    x: torch.Tensor, mu_t: torch.Tensor, mu_i: torch.Tensor, s: float, mu_hat: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    h = _unit(mu_i + s * (_unit(x) - mu_t))
    return _unit(h - mu_hat + mu_i).to(dtype)


def eager_normalize(x: torch.Tensor) -> torch.Tensor:
    return _unit(x)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


SWEEP_ENV = ("REVISION_TRITON_ELEMS", "REVISION_TRITON_WARPS", "REVISION_TRITON_PROGRAMS_PER_SM")
SWEEP = [(2048, 4, 8), (4096, 4, 8), (4096, 8, 16), (8192, 8, 8), (16384, 16, 8)]
OPS = ("row_stats", "realign_centroid", "realign_apply", "normalize_rows", "c3")
# Ops with a C kernel: on a CPU with the extension built, their production ("fused") path is C.
NATIVE_OPS = ("row_stats", "realign_centroid", "realign_apply")


def _sweep(
    ops: dict[str, dict[str, Any]],
    chunks: list[tuple[int, torch.Tensor]],
    device: torch.device,
    repeats: int,
) -> list[dict[str, Any]]:
    """GB/s in+out of each fused kernel under other register-tile / warp / grid settings (see triton_rows)."""
    saved = {k: os.environ.get(k) for k in SWEEP_ENV}
    found: list[dict[str, Any]] = []
    n_rows = sum(c.shape[0] for _, c in chunks)
    try:
        for setting in SWEEP:
            os.environ.update({k: str(v) for k, v in zip(SWEEP_ENV, setting, strict=True)})
            entry: dict[str, Any] = dict(zip(("elems", "warps", "programs_per_sm"), setting, strict=True))
            for name, op in ops.items():
                fn = op["fused"]

                def run(fn: Callable[[int, torch.Tensor], Any] = fn) -> None:
                    for a, c in chunks:
                        fn(a, c)
                    _sync(device)

                timing = time_it(run, repeats=min(3, repeats))
                entry[f"{name}_gb_per_s_in_out"] = op["bytes"](n_rows, len(chunks)) / timing.median / 1e9
            found.append(entry)
            print("sweep", entry)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return found


def _interleaved(runs: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each run, `repeats` rounds that time every run once in turn, after one warm-up each.

    On a machine shared with other jobs the load drifts over minutes; in turn, the variants of an op
    meet the same load and their ratios hold where absolute times do not.
    """
    for run in runs.values():
        run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - t0)
    return seconds


def _leading(chunks: list[tuple[int, torch.Tensor]], rows: int) -> list[tuple[int, torch.Tensor]]:
    """The first chunks that hold at least `rows` rows (all of them when `rows` is the total or more)."""
    taken: list[tuple[int, torch.Tensor]] = []
    for a, c in chunks:
        if sum(t.shape[0] for _, t in taken) >= rows:
            break
        taken.append((a, c))
    return taken


def _load_note(before: tuple[float, ...], after: tuple[float, ...], cpus: int) -> str:
    # The 1-minute load average before the run counts other processes only; a busy machine makes
    # absolute times slow and noisy, while ratios against the same run's baselines hold up better.
    if before[0] >= 0.5:
        return (
            f"machine shared during the run: load average {before[0]:.1f} before it and {after[0]:.1f} after it "
            f"on {cpus} CPUs; absolute times are pessimistic and noisy, ratios to the same run's baselines are "
            "the figures to quote"
        )
    return f"machine idle before the run (load average {before[0]:.1f} on {cpus} CPUs)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="rows in total (default: 8388608 on CUDA, 65536 on CPU)")
    parser.add_argument("--dim", type=int, default=1280, help="row width D (default 1280)")
    parser.add_argument("--chunk-rows", type=int, default=None, help="rows per call (default: 1048576 CUDA, 16384 CPU)")
    parser.add_argument(
        "--baseline-rows",
        type=int,
        default=None,
        help="time the eager and torch.compile baselines on the first chunks holding this many rows (default: all)",
    )
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"], help="input dtype")
    parser.add_argument(
        "--out-dtype", default="float16", choices=["float16", "bfloat16", "float32"], help="pass-3 output"
    )
    parser.add_argument("--ops", default=",".join(OPS), help=f"comma-separated ops to time (default: {','.join(OPS)})")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per op (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch (and C kernel) threads (default: torch's)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile versions")
    parser.add_argument(
        "--sweep", action="store_true", help="CUDA: also time the kernels under other block settings (tuning aid)"
    )
    parser.add_argument("--output", default=None, help="JSON path (default bench/results/bench_kernels.json)")
    args = parser.parse_args(argv)
    wanted = [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = sorted(set(wanted) - set(OPS))
    if unknown or not wanted:
        parser.error(f"--ops: unknown op(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(OPS)}")
    for flag, value in (
        ("--rows", args.rows),
        ("--chunk-rows", args.chunk_rows),
        ("--baseline-rows", args.baseline_rows),
    ):
        if value is not None and value < 1:
            parser.error(f"{flag} must be ≥ 1, got {value}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be ≥ 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    rows = args.rows or (8_388_608 if cuda else 65_536)
    chunk = min(rows, args.chunk_rows or (1_048_576 if cuda else 16_384))
    d = args.dim
    dtype = getattr(torch, args.dtype)
    out_dtype = getattr(torch, args.out_dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    # Rows around a common direction (an embedding cone), generated chunk by chunk: no fp32 copy of it all.
    x = torch.empty(rows, d, device=device, dtype=dtype)
    centre = torch.randn(d, device=device, generator=gen)
    for a in range(0, rows, 1 << 20):
        block = x[a : a + (1 << 20)]
        block.copy_(torch.randn(block.shape, device=device, generator=gen).mul_(0.3).add_(centre))
    mu_t, mu_i, mu_hat = (0.03 * torch.randn(3, d, device=device, dtype=torch.float64, generator=gen)).unbind(0)
    mu_t32, mu_i32, mu_hat32 = mu_t.float(), mu_i.float(), mu_hat.float()
    s = 1.21
    chunks = [(a, x[a : a + chunk]) for a in range(0, rows, chunk)]
    baseline_chunks = _leading(chunks, args.baseline_rows or rows)
    # Output buffers of one chunk, reused as a pass over a store reuses them (far larger than L2).
    out = torch.empty(chunk, d, device=device, dtype=out_dtype)
    out32 = torch.empty(chunk, d, device=device, dtype=torch.float32)
    in_row = d * x.element_size()

    def bytes_in_out(out_row: int, out_call: int) -> Callable[[int, int], int]:
        """Bytes read + written by `calls` calls over `n` rows: `out_row` a row and `out_call` a call out."""
        return lambda n, calls: n * (in_row + out_row) + calls * out_call

    def over(pieces: list[tuple[int, torch.Tensor]], fn: Callable[[int, torch.Tensor], Any]) -> Callable[[], None]:
        def run() -> None:
            for a, c in pieces:
                fn(a, c)
            _sync(device)

        return run

    # Baseline of every op: a copy of the same rows (device-to-device on CUDA, memcpy on CPU), in+out.
    copy_dst = torch.empty(chunk, d, device=device, dtype=dtype)

    stats_vec = d * 8  # one float64 vector of D
    all_ops: dict[str, dict[str, Any]] = {
        "row_stats": {
            "bytes": bytes_in_out(0, 2 * stats_vec),  # mean and M2 per call
            "fused": lambda a, c: row_stats(c),
            "torch": lambda a, c: row_stats_torch(c),
            "eager": lambda a, c: eager_row_stats(c),
        },
        "realign_centroid": {
            "bytes": bytes_in_out(0, stats_vec),  # the sum of the projected rows per call
            "fused": lambda a, c: realign_centroid(c, mu_t, mu_i, s),
            "torch": lambda a, c: realign_centroid_torch(c, mu_t, mu_i, s),
            "eager": lambda a, c: eager_centroid(c, mu_t32, mu_i32, s),
        },
        "realign_apply": {
            "bytes": bytes_in_out(d * out.element_size(), 0),
            "fused": lambda a, c: realign_apply(c, mu_t, mu_i, s, mu_hat, out_dtype=out_dtype, out=out[: c.shape[0]]),
            "torch": lambda a, c: realign_apply_torch(
                c, mu_t, mu_i, s, mu_hat, out_dtype=out_dtype, out=out[: c.shape[0]]
            ),
            "eager": lambda a, c: eager_apply(c, mu_t32, mu_i32, s, mu_hat32, out_dtype),
        },
        "normalize_rows": {
            "bytes": bytes_in_out(d * 4, 0),
            "fused": lambda a, c: normalize_rows(c, out=out32[: c.shape[0]]),
            "eager": lambda a, c: eager_normalize(c),
        },
        "c3": {
            "bytes": bytes_in_out(d * out.element_size(), 0),
            "fused": lambda a, c: c3(c, mu_t, seed=1, row_offset=a, out_dtype=out_dtype, out=out[: c.shape[0]]),
            "eager": None,
        },
    }
    ops = {name: all_ops[name] for name in OPS if name in wanted}
    compiled: dict[str, Callable[..., Any]] = {}
    compile_seconds: dict[str, float] = {}
    if not args.no_compile:
        Bind = Callable[[Callable[..., Any]], Callable[[int, torch.Tensor], Any]]
        targets: dict[str, tuple[Callable[..., Any], Bind]] = {
            "row_stats": (eager_row_stats, lambda f: lambda a, c: f(c)),
            "realign_centroid": (eager_centroid, lambda f: lambda a, c: f(c, mu_t32, mu_i32, s)),
            "realign_apply": (eager_apply, lambda f: lambda a, c: f(c, mu_t32, mu_i32, s, mu_hat32, out_dtype)),
        }
        for name, (fn, bind) in targets.items():
            if name not in ops:
                continue
            t0 = time.perf_counter()
            try:
                cfn = torch.compile(fn, dynamic=False)
                call = bind(cfn)
                for a, c in {chunks[0][1].shape[0]: chunks[0], chunks[-1][1].shape[0]: chunks[-1]}.values():
                    call(a, c)
                _sync(device)
            except Exception as exc:  # noqa: BLE001 - a compiler failure is reported, not fatal
                print(f"torch.compile of {name} failed: {type(exc).__name__}: {exc}")
                continue
            compile_seconds[name] = time.perf_counter() - t0
            compiled[name] = call

    backend = select_backend(x)
    copy_seconds: list[float] = []
    table: list[dict[str, Any]] = []
    results: dict[str, Any] = {}
    for name, op in ops.items():
        entry: dict[str, Any] = {
            "in_bytes": rows * in_row,
            "bytes_in_out": op["bytes"](rows, len(chunks)),
            "fused_path": backend if backend != "native" or name in NATIVE_OPS else "torch",
        }
        # The fused torch path is timed beside the production path only when that is the C kernel.
        torch_path = op.get("torch") if entry["fused_path"] == "native" else None
        variants = {
            v: (fn, pieces)
            for v, fn, pieces in [
                ("copy", lambda a, c: copy_dst[: c.shape[0]].copy_(c), chunks),
                ("fused", op["fused"], chunks),
                ("torch", torch_path, chunks),
                ("eager", op["eager"], baseline_chunks),
                ("compile", compiled.get(name), baseline_chunks),
            ]
            if fn is not None
        }
        timings = _interleaved({v: over(pieces, fn) for v, (fn, pieces) in variants.items()}, args.repeats)
        per_value = {v: [t / (sum(c.shape[0] for _, c in variants[v][1]) * d) for t in ts] for v, ts in timings.items()}
        for variant, (_, pieces) in variants.items():
            n = sum(c.shape[0] for _, c in pieces)
            timing = Timing(timings[variant])
            moved = 2 * n * in_row if variant == "copy" else op["bytes"](n, len(pieces))
            entry[variant] = {
                "rows": n,
                "seconds": timing.median,
                "seconds_each": timing.seconds,
                "spread": timing.spread,
                "gb_per_s_in_out": moved / timing.median / 1e9,
                "ns_per_value": timing.median / (n * d) * 1e9,
                "rows_per_s": n / timing.median,
            }
            if variant == "compile":
                entry[variant]["compile_seconds"] = compile_seconds[name]
        copy_seconds.extend(timings["copy"])
        for variant in variants:
            entry[variant]["fraction_of_copy_bandwidth"] = (
                entry[variant]["gb_per_s_in_out"] / entry["copy"]["gb_per_s_in_out"]
            )
        fused = entry["fused"]
        entry["fraction_of_copy_bandwidth"] = fused["fraction_of_copy_bandwidth"]
        for variant in ("torch", "eager", "compile"):
            if variant in entry:
                # Within a round the variants ran back to back, so each round's ratio saw one load.
                ratios = [b / a for a, b in zip(per_value["fused"], per_value[variant], strict=True)]
                entry[f"speedup_vs_{variant}"] = statistics.median(ratios)
        results[name] = entry
        row = {
            "op": name,
            "path": entry["fused_path"],
            "GB/s in+out": fused["gb_per_s_in_out"],
            "ns/value": fused["ns_per_value"],
            "of copy": fused["fraction_of_copy_bandwidth"],
        }
        for variant in ("torch", "eager", "compile"):
            if variant in entry:
                row[f"{variant} GB/s"] = entry[variant]["gb_per_s_in_out"]
                row[f"× {variant}"] = entry[f"speedup_vs_{variant}"]
        table.append(row)

    sweep: list[dict[str, Any]] = []
    # (Also under REVISION_KERNELS=triton on CPU, so the interpreter can check this code at tiny sizes.)
    if args.sweep and (cuda or os.environ.get("REVISION_KERNELS") == "triton"):
        sweep = _sweep(ops, chunks[: max(1, 2_097_152 // chunk)], device, args.repeats)

    load_after = os.getloadavg()
    copy_gbs = 2 * rows * in_row / Timing(copy_seconds).median / 1e9
    device_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    baseline_rows = sum(c.shape[0] for _, c in baseline_chunks)
    print(
        f"device {device_name}; {rows:,} × {d} {args.dtype} in chunks of {chunk:,}, "
        f"{torch.get_num_threads()} threads; "
        f"baselines on {baseline_rows:,} rows; copy {copy_gbs:,.1f} GB/s in+out; all GB/s are in+out"
    )
    columns = ["op", "path", "GB/s in+out", "ns/value", "of copy", "torch GB/s", "× torch", "eager GB/s", "× eager"]
    print_table(table, [*columns, "compile GB/s", "× compile"])
    note = _load_note(load_before, load_after, os.cpu_count() or 1)
    print(note)
    path = write_results(
        "bench_kernels",
        {
            "device": device_name,
            "backend": backend,
            "rows": rows,
            "baseline_rows": baseline_rows,
            "dim": d,
            "chunk_rows": chunk,
            "dtype": args.dtype,
            "out_dtype": args.out_dtype,
            "throughput": "GB/s in+out: bytes of the rows read plus bytes written, over the median time",
            "copy_gb_per_s": copy_gbs,
            "torch_threads": torch.get_num_threads(),
            "peak_rss_mb": peak_rss_mb(),
            "load_average_before": list(load_before),
            "load_average_after": list(load_after),
            "note": note,
            "kernels": results,
            "sweep": sweep,
        },
        args.output,
    )
    print(f"wrote {path}")
    return 0 if all(math.isfinite(r["fused"]["gb_per_s_in_out"]) for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
