"""Benchmark of the per-chunk kernels: GB/s against the copy bandwidth measured in the same run.

On CUDA: each Triton kernel, torch eager and torch.compile versions of the same math, and a
device-to-device copy of the same bytes; reported as GB/s and as a fraction of the copy
bandwidth (target: fused kernels ≥ 0.8 of it, ≥ 3× eager). On CPU: the production path (what the dispatch
runs: the C kernels of row_stats / realign_centroid / realign_apply when built, the fused torch path
otherwise), the fused torch path beside the C kernels, the straightforward torch version of the same
math, and a memcpy.

Bytes counted per op: rows read (and, for ops that write rows, rows written) once.

    python bench/bench_kernels.py                          # small CPU run
    python bench/bench_kernels.py --rows 8388608 --dim 1280 --chunk-rows 1048576   # the GPU size
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from revision.bench.harness import peak_rss_mb, print_table, time_it, write_results
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


def _sweep(
    ops: dict[str, dict[str, Any]],
    chunks: list[tuple[int, torch.Tensor]],
    fraction: float,
    device: torch.device,
    repeats: int,
) -> list[dict[str, Any]]:
    """GB/s of each fused kernel under other register-tile / warp / grid settings (see triton_rows).

    Runs on the given chunks only: `fraction` of the rows that `ops[...]["bytes"]` counts.
    """
    saved = {k: os.environ.get(k) for k in SWEEP_ENV}
    found: list[dict[str, Any]] = []
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
                entry[f"{name}_gb_per_s"] = op["bytes"] * fraction / timing.median / 1e9
            found.append(entry)
            print("sweep", entry)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=None, help="rows in total (default: 8388608 on CUDA, 65536 on CPU)")
    parser.add_argument("--dim", type=int, default=1280, help="row width D (default 1280)")
    parser.add_argument("--chunk-rows", type=int, default=None, help="rows per call (default: 1048576 CUDA, 16384 CPU)")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"], help="input dtype")
    parser.add_argument(
        "--out-dtype", default="float16", choices=["float16", "bfloat16", "float32"], help="pass-3 output"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per op (default 5)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile versions")
    parser.add_argument(
        "--sweep", action="store_true", help="CUDA: also time the kernels under other block settings (tuning aid)"
    )
    parser.add_argument("--output", default=None, help="JSON path (default bench/results/bench_kernels.json)")
    args = parser.parse_args(argv)

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
    # Output buffers of one chunk, reused as a pass over a store reuses them (far larger than L2).
    out = torch.empty(chunk, d, device=device, dtype=out_dtype)
    out32 = torch.empty(chunk, d, device=device, dtype=torch.float32)
    in_bytes = x.numel() * x.element_size()
    out_bytes = rows * d * out.element_size()

    def over_chunks(fn: Callable[[int, torch.Tensor], Any]) -> Callable[[], None]:
        def run() -> None:
            for a, c in chunks:
                fn(a, c)
            _sync(device)

        return run

    # Baseline of the run: a copy of the same bytes (device-to-device on CUDA, memcpy on CPU).
    copy_dst = torch.empty(chunk, d, device=device, dtype=dtype)
    copy_t = time_it(over_chunks(lambda a, c: copy_dst[: c.shape[0]].copy_(c)), repeats=args.repeats)
    copy_gbs = 2 * in_bytes / copy_t.median / 1e9

    ops: dict[str, dict[str, Any]] = {
        "row_stats": {
            "bytes": in_bytes,
            "fused": lambda a, c: row_stats(c),
            "torch": lambda a, c: row_stats_torch(c),
            "eager": lambda a, c: eager_row_stats(c),
        },
        "realign_centroid": {
            "bytes": in_bytes,
            "fused": lambda a, c: realign_centroid(c, mu_t, mu_i, s),
            "torch": lambda a, c: realign_centroid_torch(c, mu_t, mu_i, s),
            "eager": lambda a, c: eager_centroid(c, mu_t32, mu_i32, s),
        },
        "realign_apply": {
            "bytes": in_bytes + out_bytes,
            "fused": lambda a, c: realign_apply(c, mu_t, mu_i, s, mu_hat, out_dtype=out_dtype, out=out[: c.shape[0]]),
            "torch": lambda a, c: realign_apply_torch(
                c, mu_t, mu_i, s, mu_hat, out_dtype=out_dtype, out=out[: c.shape[0]]
            ),
            "eager": lambda a, c: eager_apply(c, mu_t32, mu_i32, s, mu_hat32, out_dtype),
        },
        "normalize_rows": {
            "bytes": in_bytes + rows * d * 4,
            "fused": lambda a, c: normalize_rows(c, out=out32[: c.shape[0]]),
            "eager": lambda a, c: eager_normalize(c),
        },
        "c3": {
            "bytes": in_bytes + out_bytes,
            "fused": lambda a, c: c3(c, mu_t, seed=1, row_offset=a, out_dtype=out_dtype, out=out[: c.shape[0]]),
            "eager": None,
        },
    }
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

    table: list[dict[str, Any]] = []
    results: dict[str, Any] = {}
    for name, op in ops.items():
        entry: dict[str, Any] = {"bytes": op["bytes"]}
        # The fused torch path is timed beside the production path only when that is the C kernel.
        torch_path = op.get("torch") if select_backend(x) == "native" and not cuda else None
        variants = [
            ("fused", op["fused"]),
            ("torch", torch_path),
            ("eager", op["eager"]),
            ("compile", compiled.get(name)),
        ]
        for variant, fn in variants:
            if fn is None:
                continue
            timing = time_it(over_chunks(fn), repeats=args.repeats)
            gbs = op["bytes"] / timing.median / 1e9
            entry[variant] = {
                "seconds": timing.median,
                "spread": timing.spread,
                "gb_per_s": gbs,
                "rows_per_s": rows / timing.median,
                "fraction_of_copy_bandwidth": gbs / copy_gbs,
            }
            if variant == "compile":
                entry[variant]["compile_seconds"] = compile_seconds[name]
        fused = entry["fused"]
        entry["fraction_of_copy_bandwidth"] = fused["fraction_of_copy_bandwidth"]
        for variant in ("torch", "eager", "compile"):
            if variant in entry:
                entry[f"speedup_vs_{variant}"] = entry[variant]["seconds"] / fused["seconds"]
        results[name] = entry
        row = {"op": name, "fused GB/s": fused["gb_per_s"], "of copy": fused["fraction_of_copy_bandwidth"]}
        for variant in ("torch", "eager", "compile"):
            if variant in entry:
                row[f"{variant} GB/s"] = entry[variant]["gb_per_s"]
                row[f"× {variant}"] = entry[f"speedup_vs_{variant}"]
        table.append(row)

    sweep: list[dict[str, Any]] = []
    # (Also under REVISION_KERNELS=triton on CPU, so the interpreter can check this code at tiny sizes.)
    if args.sweep and (cuda or os.environ.get("REVISION_KERNELS") == "triton"):
        subset = chunks[: max(1, 2_097_152 // chunk)]
        sweep = _sweep(ops, subset, sum(c.shape[0] for _, c in subset) / rows, device, args.repeats)

    device_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    print(f"device {device_name}; {rows:,} × {d} {args.dtype} in chunks of {chunk:,}; copy {copy_gbs:,.1f} GB/s")
    columns = ["op", "fused GB/s", "of copy", "torch GB/s", "× torch", "eager GB/s", "× eager", "compile GB/s"]
    print_table(table, [*columns, "× compile"])
    path = write_results(
        "bench_kernels",
        {
            "device": device_name,
            "backend": select_backend(x),
            "rows": rows,
            "dim": d,
            "chunk_rows": chunk,
            "dtype": args.dtype,
            "out_dtype": args.out_dtype,
            "copy_gb_per_s": copy_gbs,
            "torch_threads": torch.get_num_threads(),
            "peak_rss_mb": peak_rss_mb(),
            "kernels": results,
            "sweep": sweep,
        },
        args.output,
    )
    print(f"wrote {path}")
    return 0 if all(math.isfinite(r["fused"]["gb_per_s"]) for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
