"""Training benchmark: samples/s and peak RSS of a full training step, ours vs a reference-style path.

The same tiny random Llama (equal LM) and the same rows (N x D fp16, D = 1280 as the reference's
LLM2CLIP features) in every case; one AdamW step per batch on projector + LLM:

- ours, K=1: memmap view + id-joined dataset + block-shuffled loader (text tokenised in the collate),
  the row projected once into one visual token;
- ours, K=576 (compat): the reference's input, the row projected once and expanded to 576 positions;
- reference-style: every feature row in a dict keyed by id and the whole annotation list in memory
  (as the reference's trainer), batches stacked from the dict, each row repeated 576 times *before*
  the projector, 576 visual tokens.

Each case runs alone in its own subprocess, so its peak RSS (VmHWM) is its own, at N and at 4N rows
(flat for ours, growing for the dict). Projector work is counted with a forward hook (rows entering
the projector per sample). The samples/s compared are measured with the three cases in one process,
their steps taking turns (median step time), so load from other processes hits all of them alike.

    python bench/bench_train.py --json-out bench/results/train.json
    python bench/bench_train.py --rows 20000 --steps 10 --json-out /tmp/bt.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from revision.bench.harness import peak_rss_mb, print_table, write_results

PHRASES = ("a red cat sits", "a blue dog runs", "a green bird sings", "a small fish swims")
BLOCK = 20_000


def make_inputs(work: Path, rows: int, dim: int) -> None:
    """N unit fp16 rows in a store, its memmap view, and a caption per id (JSON Lines)."""
    from revision.store import FeatureStore, StoreConfig
    from revision.store.memmap import export_memmap

    if (work / "view" / "header.json").is_file():
        return
    cfg = StoreConfig(modality="text", dim=dim, dtype="float16", normalized=True)
    with FeatureStore.create(work / "store.zarr", cfg) as st, open(work / "ann.jsonl", "w") as ann:
        for lo in range(0, rows, BLOCK):
            n = min(BLOCK, rows - lo)
            x = np.random.default_rng([3, lo]).standard_normal((n, dim), dtype=np.float32)
            ids = [f"s{i}" for i in range(lo, lo + n)]
            st.append((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16), ids)
            ann.write("".join(json.dumps({"id": i, "caption": PHRASES[int(i[1:]) % 4]}) + "\n" for i in ids))
        st.commit()
    with FeatureStore.open(work / "store.zarr") as st:
        export_memmap(st, work / "view", show_progress=False)


def _model(llm_dir: Path, dim: int, k: int) -> tuple[Any, Any, Any]:
    import torch

    from revision.train.model import VisionLM, build_projector, load_llm
    from revision.train.template import Template

    llm, tok = load_llm(llm_dir, attention="sdpa")
    torch.manual_seed(0)
    model = VisionLM(llm, build_projector("mlp2x_gelu", dim, llm.config.hidden_size), visual_tokens=k)
    counted = {"rows": 0}

    def hook(_mod: Any, args: tuple[Any, ...]) -> None:
        counted["rows"] += args[0].numel() // dim

    model.projector.register_forward_pre_hook(hook)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    return model, (Template(tok, "plain"), opt), counted


def setup_case(case: str, work: Path, llm_dir: Path, dim: int, batch: int) -> tuple[Any, dict[str, int], float]:
    """(one training step, projector row counter, setup seconds) of one case."""
    import torch

    k = 1 if case == "ours-k1" else 576
    model, (template, opt), counted = _model(llm_dir, dim, k)
    t_setup = time.perf_counter()
    if case.startswith("ours"):
        from revision.train.dataset import FeatureDataset
        from revision.train.loader import LoaderConfig, make_loader
        from revision.train.loop import TextCollate

        ds = FeatureDataset(work / "ann.jsonl", work / "view")
        loader = make_loader(ds, LoaderConfig(batch_size=batch, seed=0), post=TextCollate(template))
        batches = iter(loader)

        def next_batch() -> tuple[Any, Any]:
            b = next(batches)
            return b["embeds"], {key: b[key] for key in ("input_ids", "attention_mask", "labels")}

        repeat_first = False
    else:
        from revision.store import FeatureStore

        # The reference's way: every row in a dict by id, the whole annotation list parsed.
        with FeatureStore.open(work / "store.zarr") as st:
            x, ids = st.read(), st.read_ids()
        feats = {str(i): x[r].copy() for r, i in enumerate(ids.tolist())}
        del x
        anns = [json.loads(line) for line in (work / "ann.jsonl").read_text().splitlines()]
        rng = np.random.default_rng(0)

        def next_batch() -> tuple[Any, Any]:
            pick = [anns[i] for i in rng.integers(0, len(anns), batch)]
            embeds = torch.from_numpy(np.stack([feats[a["id"]] for a in pick]).astype(np.float32))
            return embeds, template.collate([template.encode(a) for a in pick])

        repeat_first = True
    setup_s = time.perf_counter() - t_setup

    def step() -> None:
        embeds, text = next_batch()
        out = model(embeds, **text, repeat_first=repeat_first)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, counted, setup_s


def run_case(case: str, work: Path, llm_dir: Path, dim: int, steps: int, batch: int) -> dict[str, Any]:
    """One case alone in this process (for its peak RSS): warm-up, then `steps` steps."""
    step, counted, setup_s = setup_case(case, work, llm_dir, dim, batch)
    for _ in range(2):
        step()
    counted["rows"] = 0
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    secs = time.perf_counter() - t0
    return {
        "case": case,
        "visual_tokens": 1 if case == "ours-k1" else 576,
        "alone_samples_per_s": steps * batch / secs,
        "projector_rows_per_sample": counted["rows"] / (steps * batch),
        "setup_s": setup_s,
        "peak_rss_mb": peak_rss_mb(),
    }


def interleaved(work: Path, llm_dir: Path, dim: int, steps: int, batch: int) -> dict[str, dict[str, float]]:
    """All cases in one process, their steps taking turns, so a load spike on a shared machine hits
    every case alike; median step time per case."""
    cases = {c: setup_case(c, work, llm_dir, dim, batch)[0] for c in CASES}
    for step in cases.values():
        step()
    times: dict[str, list[float]] = {c: [] for c in CASES}
    for _ in range(steps):
        for c, step in cases.items():
            t0 = time.perf_counter()
            step()
            times[c].append(time.perf_counter() - t0)
    out = {}
    for c, ts in times.items():
        med = float(np.median(ts))
        out[c] = {"samples_per_s": batch / med, "step_ms": 1000 * med, "step_ms_min": 1000 * min(ts)}
    return out


CASES = ("ours-k1", "ours-k576", "reference-k576")


def _subprocess(case: str, work: Path, llm_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--case", case, "--work", str(work), "--llm", str(llm_dir),
           "--dim", str(args.dim), "--steps", str(args.steps), "--batch", str(args.batch)]  # fmt: skip
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=50_000, help="feature rows N (the RSS check also runs 4N)")
    ap.add_argument("--dim", type=int, default=1280, help="feature dim D (default 1280, the reference's)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per case")
    ap.add_argument("--batch", type=int, default=8, help="samples per step")
    ap.add_argument("--hidden", type=int, default=64, help="tiny LM hidden size")
    ap.add_argument("--work", type=Path, help="work directory (default: a temporary one)")
    ap.add_argument("--json-out", type=Path, help="results JSON (default bench/results/train.json)")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--llm", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args.work, args.llm, args.dim, args.steps, args.batch)))
        return 0
    from revision.train.tiny import build_tiny_llm

    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        root = Path(tmp)
        llm_dir = build_tiny_llm(root / "llm", PHRASES, hidden=args.hidden, layers=2, heads=4)
        results = []
        for rows in (args.rows, 4 * args.rows):
            work = root / f"n{rows}"
            work.mkdir()
            make_inputs(work, rows, args.dim)
            for case in CASES:
                r = _subprocess(case, work, llm_dir, args)
                r["rows"] = rows
                results.append(r)
                print(f"  {case} at {rows:,} rows alone: {r['alone_samples_per_s']:.1f} samples/s", file=sys.stderr)
        timed = interleaved(root / f"n{args.rows}", llm_dir, args.dim, args.steps, args.batch)
    by = {(r["case"], r["rows"]): r for r in results}
    n, n4 = args.rows, 4 * args.rows
    for case, t in timed.items():
        by[(case, n)].update(t)
    ref = by[("reference-k576", n)]
    summary = {
        "speedup_k1_vs_reference": timed["ours-k1"]["samples_per_s"] / timed["reference-k576"]["samples_per_s"],
        "speedup_k576_vs_reference": timed["ours-k576"]["samples_per_s"] / timed["reference-k576"]["samples_per_s"],
        "projector_work_k576_vs_reference": by[("ours-k576", n)]["projector_rows_per_sample"]
        / ref["projector_rows_per_sample"],
        "rss_growth_4x_rows_ours_k1": by[("ours-k1", n4)]["peak_rss_mb"] / by[("ours-k1", n)]["peak_rss_mb"],
        "rss_growth_4x_rows_reference": by[("reference-k576", n4)]["peak_rss_mb"] / ref["peak_rss_mb"],
    }
    cols = ["case", "rows", "visual_tokens", "samples_per_s", "step_ms", "alone_samples_per_s"]
    cols += ["projector_rows_per_sample", "peak_rss_mb"]
    print_table(results, cols)
    for key, value in summary.items():
        print(f"{key}: {value:.4g}")
    config = {"rows": n, "dim": args.dim, "steps": args.steps, "batch": args.batch, "hidden": args.hidden}
    path = write_results("train", {"config": config, "results": results, "summary": summary}, args.json_out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
