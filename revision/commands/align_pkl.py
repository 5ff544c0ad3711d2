"""`revision align-pkl`: a drop-in for the reference ReAlign script, on its pickle directories and flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from revision.errors import UserError
from revision.paths import check_outputs

EPILOG = """example (the reference script's flags, unchanged):
  revision align-pkl --input_dir ./output/text_feats --img_input_dir ./output/image_feats \\
      --output_dir ./output/aligned_feats --chunk_size 10000 --strict_finite 1
Writes <output_dir>/trace/<stem>_trace.pkl per text pickle, <output_dir>/trace_stats.pkl and the mean pickle.
Differences from the reference: a NaN/Inf input value is an error (exit status 2) unless --strict_finite 0.
"""


def _flag01(value: str) -> bool:
    if value not in ("0", "1"):
        raise argparse.ArgumentTypeError(f"expected 0 or 1, got {value!r}")
    return value == "1"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "align-pkl",
        help="ReAlign on reference pickle directories (drop-in for the reference script)",
        description="Align the text pickles of --input_dir to the image pickles of --img_input_dir, streaming "
        "one file at a time, and write the reference script's outputs with every original key kept.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--input_dir", "--input-dir", type=Path, required=True, help="directory of text_embeds_*.pkl")
    p.add_argument(
        "--img_input_dir", "--img-input-dir", type=Path, required=True, help="directory of image_embeds_*.pkl"
    )
    p.add_argument("--output_dir", "--output-dir", type=Path, required=True, help="output directory")
    p.add_argument(
        "--mean_file_path",
        "--mean-file-path",
        type=Path,
        default=None,
        help="where to pickle the float32 text mean (default: <output_dir>/mean_vector.pkl)",
    )
    p.add_argument(
        "--chunk_size",
        "--chunk-size",
        type=int,
        default=10_000,
        help="rows per arithmetic block; bounds temporaries only (default: %(default)s)",
    )
    p.add_argument(
        "--strict_finite",
        "--strict-finite",
        type=_flag01,
        default=True,
        help="1 (default): a NaN/Inf value is an error naming file and item; 0: counted as 0, as the reference",
    )
    p.add_argument(
        "--save_stats",
        "--save-stats",
        type=_flag01,
        default=True,
        help="1 (default): write trace_stats.pkl; 0: do not",
    )
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.output_dir.exists() and not args.output_dir.is_dir():
        raise UserError(f"--output_dir {args.output_dir}: exists and is not a directory")
    out = args.output_dir
    # The files written, not the folder: --output_dir may hold the input folders, but an output
    # inside an input folder would be read back as an input pickle by the next run.
    check_outputs(
        [("--input_dir", args.input_dir), ("--img_input_dir", args.img_input_dir)],
        [
            ("--output_dir", out / "trace", "dir"),
            ("--output_dir", out / "trace_stats.pkl" if args.save_stats else None, "file"),
            ("--mean_file_path", args.mean_file_path or out / "mean_vector.pkl", "file"),
        ],
    )
    from revision.align.pickle_compat import PickleAlignConfig, align_pickles

    cfg = PickleAlignConfig(
        input_dir=args.input_dir,
        img_input_dir=args.img_input_dir,
        output_dir=args.output_dir,
        mean_file_path=args.mean_file_path,
        chunk_size=args.chunk_size,
        strict_finite=args.strict_finite,
        save_stats=args.save_stats,
        progress=args.progress,
    )
    res = align_pickles(cfg)
    print(
        f"align-pkl: {res.text_rows:,} text rows aligned to {res.image_rows:,} image rows "
        f"(scale {res.stats.scale:.6f}) -> {args.output_dir}/trace/ [{res.seconds['total']:.2f} s]"
    )
    return 0
