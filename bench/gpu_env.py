"""The GPU check's environment probes and its summary (called by bench/gpu_check.sh, one mode a call).

    python -P bench/gpu_env.py image                     # the image holds what the check expects (exit 2)
    python -P bench/gpu_env.py installed --out env.json  # every requirement met, the package imports (exit 3)
    python -P bench/gpu_env.py cuda                      # exit 4 when there is no CUDA device
    python -P bench/gpu_env.py summary --results DIR --seconds S   # DIR/summary.json; exit 1 if a step failed

Runs before the project is installed (mode `image`), so it imports nothing of it at module level.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import importlib.util
import json
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

#: What the GPU machine's image holds (import names); the check installs nothing of these.
IMAGE_MODULES = (
    "setuptools", "torch", "triton", "numpy", "pyarrow", "psutil", "tqdm", "matplotlib", "fsspec",
    "transformers", "packaging", "yaml", "typing_extensions",
)  # fmt: skip
IMAGE_DISTS = ("pip", "setuptools", "torch", "triton", "numpy", "pyarrow", "psutil", "tqdm", "matplotlib", "fsspec",
               "transformers", "packaging", "PyYAML", "typing_extensions")  # fmt: skip
#: Distributions whose requirements must all be met once the wheel folder and the project are installed.
INSTALLED = ("zarr", "numcodecs", "google-crc32c", "donfig", "pytest", "pluggy", "iniconfig", "pygments", "revision")
#: Requirements of the project that the check does not need: FAISS is diagnose's (tested by step faiss,
#: from its own folder); deepspeed and flash-attn are optional for training.
NOT_NEEDED = {"faiss-cpu"}
NO_CUDA = 4


def _versions(modules: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    found, missing = {}, []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any failure to import is reported by name
            missing.append(f"{name} ({type(exc).__name__}: {exc})")
            continue
        found[name] = str(getattr(mod, "__version__", "?"))
    return found, missing


def check_image() -> int:
    found, missing = _versions(IMAGE_MODULES)
    # Not imported: pip on an old Python imports the standard distutils, which setuptools refuses after.
    if importlib.util.find_spec("pip") is None:
        missing.append("pip (python -m pip installs the wheels)")
    print("image: " + ", ".join(f"{k} {v}" for k, v in found.items()))
    if missing:
        print("gpu_env: missing from the image: " + "; ".join(missing), file=sys.stderr)
        return 2
    return 0


def unmet_requirements() -> list[str]:
    """Requirements of INSTALLED that no installed distribution satisfies, as 'dist needs req (have …)'."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    problems = []
    for dist_name in INSTALLED:
        try:
            dist = md.distribution(dist_name)
        except md.PackageNotFoundError:
            problems.append(f"{dist_name} is not installed")
            continue
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            if canonicalize_name(req.name) in NOT_NEEDED:
                continue
            try:
                have = md.version(req.name)
            except md.PackageNotFoundError:
                problems.append(f"{dist_name} needs {req} (not installed)")
                continue
            if req.specifier and not req.specifier.contains(have, prereleases=True):
                problems.append(f"{dist_name} needs {req} (have {have})")
    return problems


def check_installed(out: Path) -> int:
    problems = unmet_requirements()
    _, missing = _versions(("zarr", "numcodecs", "google_crc32c", "pytest", "revision.store", "revision.align",
                            "revision.kernels", "revision.cli"))  # fmt: skip
    problems += [f"cannot import {m}" for m in missing]
    if problems:
        print("gpu_env: " + "\n  ".join(["unmet after installing:", *problems]), file=sys.stderr)
        return 3
    import revision
    from revision.bench.harness import machine_info
    from revision.kernels import native

    try:
        cc = subprocess.run(["cc", "--version"], capture_output=True, text=True, check=False).stdout.split("\n")[0]
    except OSError:
        cc = "none"
    env = {
        "machine": machine_info(),
        "python": platform.python_version(),
        "revision_from": str(Path(revision.__file__).parent),
        "native_kernels_built": native.available(),
        "compiler": cc,
        "distributions": {d: md.version(d) for d in INSTALLED},
        "image": {d: md.version(d) for d in IMAGE_DISTS},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(env, indent=2) + "\n")
    built = "built" if env["native_kernels_built"] else "NOT built (no compiler?): the CPU parts use torch"
    print(f"installed: every requirement met; revision from {env['revision_from']}; C kernels {built}")
    return 0


def check_cuda() -> int:
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_env: no CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda})")
        return NO_CUDA
    props = torch.cuda.get_device_properties(0)
    print(f"cuda: {props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs, "
          f"torch {torch.__version__} (CUDA {torch.version.cuda})")  # fmt: skip
    return 0


def _load(path: Path) -> dict[str, Any] | None:
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
        return doc
    except (OSError, ValueError):
        return None


def _headline(name: str, results: Path) -> dict[str, Any]:
    """The few numbers of each step that the README's table shows."""
    if name == "tests":
        try:
            suite = ET.parse(results / "tests.xml").getroot()
        except (OSError, ET.ParseError):
            return {}
        suite = suite if suite.tag == "testsuite" else suite[0]
        return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    doc = _load(results / {"kernels": "bench_kernels.json"}.get(name, f"{name}.json"))
    if doc is None:
        return {}
    if name == "kernels":
        return {
            "device": doc.get("device"),
            "copy_gb_per_s": doc.get("copy_gb_per_s"),
            "kernels": {
                k: {m: v.get(m) for m in ("fraction_of_copy_bandwidth", "speedup_vs_eager", "speedup_vs_compile")}
                for k, v in doc.get("kernels", {}).items()
            },
        }
    return dict(doc.get("headline", {}))


def summary(results: Path, seconds: int) -> int:
    steps = []
    tsv = results / "steps.tsv"
    for line in tsv.read_text().splitlines() if tsv.exists() else []:
        name, rc, took, limit = line.split("\t")
        status = {"skipped": "skipped", "0": "passed", "124": "timed out", "137": "timed out"}.get(rc, "failed")
        steps.append({"step": name, "status": status, "exit": rc, "seconds": int(took), "limit_s": int(limit),
                      "headline": _headline(name, results) if status != "skipped" else {}})  # fmt: skip
    doc = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": seconds, "env": _load(results / "env.json"),
           "steps": steps}  # fmt: skip
    (results / "summary.json").write_text(json.dumps(doc, indent=2, default=float) + "\n")
    for s in steps:
        print(f"  {s['step']:8s} {s['status']:9s} {s['seconds']:4d} s  {json.dumps(s['headline'], default=float)}")
    bad = [s["step"] for s in steps if s["status"] in ("failed", "timed out")]
    print(f"gpu_check: {len(steps) - len(bad)} of {len(steps)} steps passed or skipped in {seconds} s; "
          f"results in {results}/ (summary.json)" + (f"; not passed: {', '.join(bad)}" if bad else ""))  # fmt: skip
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("image", "installed", "cuda", "summary"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/gpu/env.json"), help="installed: env JSON")
    ap.add_argument("--results", type=Path, default=Path("bench/results/gpu"), help="summary: results folder")
    ap.add_argument("--seconds", type=int, default=0, help="summary: the check's wall time")
    args = ap.parse_args(argv)
    if args.mode == "image":
        return check_image()
    if args.mode == "installed":
        return check_installed(args.out)
    if args.mode == "cuda":
        return check_cuda()
    return summary(args.results, args.seconds)


if __name__ == "__main__":
    raise SystemExit(main())
