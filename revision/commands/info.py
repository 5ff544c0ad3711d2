"""`revision info STORE [--json]`: rows, dim, dtype, modality, chunking, codec and size of a store."""

from __future__ import annotations

import argparse
import json
from typing import Any

from revision.errors import UserError
from revision.store import StoreError, open_readable

EPILOG = """examples:
  revision info text.zarr
  revision info text.zarr --json | jq .rows
  revision info 'text-*.zarr'          # a store set: its parts and the total
  revision info out/text.zarr          # the parts out/text.partNNN-of-MMM.zarr of a torchrun embed"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "info",
        help="describe a feature store",
        description="Describe a feature store: rows, dim, dtype, modality, chunking, codec, bytes on disk.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "store",
        metavar="STORE",
        help="feature store to describe, or a store set: a glob, a directory of parts, or the path whose "
        "<name>.partNNN-of-MMM.zarr parts exist",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (keys rows, dim, dtype, modality, …)")
    p.set_defaults(func=run)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _ratio(info: dict[str, Any]) -> str:
    ratio = info.get("compression_ratio")
    if info["rows"] < info["chunk_rows"]:
        # One partly filled chunk is stored whole, so bytes on disk say nothing about compression.
        return "n/a (store smaller than one chunk)"
    return "n/a" if ratio is None else f"{ratio:.3f}"


def describe(info: dict[str, Any]) -> list[tuple[str, str]]:
    cols = info.get("metadata_columns") or {}
    rows = [
        ("path", str(info["path"])),
        ("rows", f"{info['rows']:,}"),
        ("dim", str(info["dim"])),
        ("dtype", str(info["dtype"])),
        ("modality", str(info["modality"])),
        ("normalized", str(info.get("normalized"))),
        ("chunking", f"{info['chunk_rows']:,} rows/chunk, {info['shard_rows']:,} rows/shard"),
        ("codec", str(info["codec"])),
        ("bytes on disk", _size(int(info["bytes_on_disk"]))),
        ("compression ratio", _ratio(info)),
        ("metadata", ", ".join(f"{k} ({v})" for k, v in cols.items()) or "none"),
    ]
    if info.get("encoder"):
        rows.append(("encoder", str(info["encoder"])))
    if "alignment" in (info.get("attrs") or {}):
        rows.append(("alignment", json.dumps(info["attrs"]["alignment"])[:200]))
    parts = info.get("parts")
    if parts:
        rows.insert(1, ("parts", f"{len(parts)} (ids unique across them)"))
        width = len(str(len(parts) - 1))
        for k, part in enumerate(parts):
            rows.append(
                (f"part {k:>{width}}", f"{part['path']}: {part['rows']:,} rows, {_size(int(part['bytes_on_disk']))}")
            )
    return rows


def run(args: argparse.Namespace) -> int:
    try:
        st = open_readable(args.store)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    try:
        info = st.info()
    finally:
        st.close()
    if args.json:
        if info["rows"] < info["chunk_rows"]:
            info["compression_ratio"] = None  # as in the table: not measurable below one chunk
        print(json.dumps(info, default=str))
        return 0
    width = max(len(k) for k, _ in describe(info))
    for key, value in describe(info):
        print(f"{key:<{width}}  {value}")
    return 0
