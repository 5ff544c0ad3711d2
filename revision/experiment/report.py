"""The experiment's outputs for people: a terminal table and a self-contained report.html.

Both read the results dict of `revision experiment` (results.json). The report has six parts:
the accuracy table (mean ± std over seeds, raw and paired marked as the bounds, the best method
highlighted), accuracy against each gap metric with Spearman's ρ, per-attribute accuracy, sample
captions beside their images and truth with wrong attribute words marked, the visual-token
ablation, and how the run was made. Like diagnose's report it is one file: inline CSS, pictures
as base64 data URIs, no scripts, no links. Optional parts (samples, ablation, per_attribute, gap)
are left out when absent.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from revision.errors import UserError
from revision.palette import REFERENCES, fmt_mean_std, fmt_row, img_tag, method_colour, png_bytes

__all__ = ["ACCURACY", "gap_metrics", "render_report", "summarise", "text_table"]

# (results key, column heading): the three scores, in the order of every table.
ACCURACY: list[tuple[str, str]] = [
    ("exact_match", "exact match"),
    ("attribute_accuracy", "attribute accuracy"),
    ("token_accuracy", "token accuracy"),
]
_BOUND = {"raw": "lower bound", "paired": "upper bound"}
_DECIMALS = 3  # accuracies over a few hundred test images: a 4th decimal would be noise


def _runs(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    runs = results.get("runs")
    if not isinstance(runs, list) or not runs:
        raise UserError("results: no 'runs' list (expected one record per method × noise × seed)")
    for j, r in enumerate(runs):
        missing = [k for k in ("method", "noise", "seed", *(a for a, _ in ACCURACY)) if k not in r]
        if missing:
            raise UserError(f"results: runs[{j}] lacks {', '.join(missing)}")
    return runs


def summarise(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One record per method × noise: n seeds and the mean and sample std of each score (std None
    for a single seed), in the order the methods first appear."""
    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for r in runs:
        groups.setdefault((str(r["method"]), float(r["noise"])), []).append(r)
    out = []
    for (method, noise), rs in groups.items():
        rec: dict[str, Any] = {"method": method, "noise": noise, "n": len(rs)}
        for key, _ in ACCURACY:
            values = np.array([float(r[key]) for r in rs])
            rec[f"{key}_mean"] = float(values.mean())
            rec[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else None
        out.append(rec)
    return out


def _summary(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    given = results.get("summary")
    rows = [dict(r) for r in given] if isinstance(given, list) and given else summarise(_runs(results))
    # References bracket the methods (lower bound first, upper bound last); a method's noise levels
    # stay together, methods in the order they first appear.
    role = {"raw": 0, "paired": 2}
    first = {m: j for j, m in reversed(list(enumerate(r["method"] for r in rows)))}
    return sorted(rows, key=lambda r: (role.get(r["method"], 1), first[r["method"]], float(r["noise"])))


def _best(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    candidates = [r for r in rows if r["method"] not in REFERENCES]
    return max(candidates, key=lambda r: r["exact_match_mean"], default=None)


def gap_metrics(gap: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(key, label) of the scalar gap metrics worth plotting, in diagnose's table order and with its
    labels: those every method's gap holds and that differ between methods (a constant such as the
    image trace cannot predict anything)."""
    from revision.diagnose.report import ROWS

    entries = [g for g in gap.values() if isinstance(g, Mapping)]
    chosen = []
    for key, label, _ in ROWS:
        if "." in key:
            continue
        values = [g.get(key) for g in entries]
        numbers = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        if not entries or len(numbers) != len(values):
            continue
        if len({round(v, 9) for v in numbers}) > 1:
            chosen.append((key, label))
    return chosen


def text_table(results: Mapping[str, Any]) -> str:
    """The accuracy table for the terminal: one line per method × noise, mean ± std over seeds."""
    rows = _summary(results)
    best = _best(rows)
    header = ["method", "noise", "seeds", *(h for _, h in ACCURACY), ""]
    lines = []
    for r in rows:
        note = _BOUND.get(r["method"], "best" if r is best else "")
        cells = [fmt_mean_std(r.get(f"{k}_mean"), r.get(f"{k}_std"), _DECIMALS) for k, _ in ACCURACY]
        lines.append([r["method"], f"{float(r['noise']):g}", str(r["n"]), *cells, note])
    widths = [max(len(x[j]) for x in [header, *lines]) for j in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if j in (0, len(cells) - 1) else c.rjust(w) for j, (c, w) in
                         enumerate(zip(cells, widths, strict=True))).rstrip()  # fmt: skip

    return "\n".join([line(header), "  ".join("-" * w for w in widths).rstrip(), *map(line, lines)])


def _swatch(method: str) -> str:
    return f"<span class='swatch' style='background:{method_colour(method)}'></span>{html.escape(method)}"


def _accuracy_section(rows: Sequence[Mapping[str, Any]]) -> str:
    best = _best(rows)
    head = "".join(f"<th>{h}</th>" for _, h in ACCURACY)
    body = []
    for r in rows:
        cls = " class='best'" if r is best else (" class='bound'" if r["method"] in REFERENCES else "")
        note = _BOUND.get(r["method"], "best exact match" if r is best else "")
        cells = "".join(
            f"<td>{fmt_mean_std(r.get(f'{k}_mean'), r.get(f'{k}_std'), _DECIMALS)}</td>" for k, _ in ACCURACY
        )
        body.append(f"<tr{cls}><td>{_swatch(r['method'])}</td><td>{float(r['noise']):g}</td><td>{r['n']}</td>"
                    f"{cells}<td class='note'>{note}</td></tr>")  # fmt: skip
    return (
        "<h2>1. Accuracy on held-out image embeddings</h2><p class='meta'>Mean ± sample std over seeds. Raw "
        "(unaligned text) is the lower bound, paired (trained on real image embeddings) the upper bound; the "
        "method with the best exact match is highlighted.</p>"
        f"<table><thead><tr><th>method</th><th>noise σ</th><th>seeds</th>{head}<th></th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _gap_section(rows: Sequence[Mapping[str, Any]], results: Mapping[str, Any]) -> str:
    gap = results.get("gap")
    if not isinstance(gap, Mapping) or not gap:
        return ""
    metrics = gap_metrics(gap)
    if not metrics:
        return ""
    from revision.experiment import figures

    fig = figures.draw_accuracy_vs_gap(rows, gap, metrics)
    return (
        "<h2>2. Does the gap predict the result?</h2><p class='meta'>Each panel: one gap metric of each method's "
        "aligned text (x) against the captioner's exact match on image embeddings (y, ± std over seeds). "
        "Spearman's ρ ranks the methods on both; |ρ| near 1 means the diagnostic orders the methods as the "
        f"downstream result does.</p>{img_tag(png_bytes(fig), 'exact match against each gap metric')}"
    )


def _attribute_section(results: Mapping[str, Any]) -> str:
    runs = [r for r in _runs(results) if isinstance(r.get("per_attribute"), Mapping)]
    if not runs:
        return ""
    from revision.experiment import figures

    fig = figures.draw_per_attribute(runs)
    return f"<h2>3. Per-attribute accuracy</h2>{img_tag(png_bytes(fig), 'per-attribute accuracy by method')}"


def _parser() -> Any:
    try:
        from revision.experiment.world import parse_caption
    except ImportError:
        return None
    return parse_caption


def marked_caption(truth: str, caption: str) -> str:
    """`caption` as HTML with the words of wrongly named attributes in <mark>, and a note naming
    the attributes it leaves out. With the world's caption parser the comparison is by attribute
    (a rephrasing is not an error); without it, a word absent from the truth is marked."""
    words = caption.split()
    parse = _parser()
    if parse is None:
        truth_words = set(truth.lower().split())
        return " ".join(f"<mark>{html.escape(w)}</mark>" if w.lower() not in truth_words else html.escape(w)
                        for w in words)  # fmt: skip
    want, got = parse(truth), parse(caption)
    wrong = {a for a, v in got.items() if v is not None and v != want.get(a)}
    missing = [a for a, v in got.items() if v is None and want.get(a) is not None]
    out = []
    for w in words:
        # A word names an attribute when it alone parses to one; corner words name only half a position.
        named = {a for a, v in parse(w).items() if v is not None}
        if w.strip(".,").lower() in ("top", "bottom", "left", "right"):
            named.add("position")
        out.append(f"<mark>{html.escape(w)}</mark>" if named & wrong else html.escape(w))
    note = f" <span class='missing'>(no {', '.join(missing)})</span>" if missing else ""
    return " ".join(out) + note


def _picture(path: Path) -> str:
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(path.suffix.lower())
    if mime is None or not path.is_file():
        return f"<span class='missing'>({html.escape(path.name)} not found)</span>"
    return img_tag(path.read_bytes(), path.name, mime=mime, width=96).replace("<img ", "<img class='sample' ", 1)


def _samples_section(results: Mapping[str, Any], base: Path) -> str:
    samples = results.get("samples")
    if not isinstance(samples, list) or not samples:
        return ""
    blocks = []
    for s in samples:
        picture = _picture(base / str(s["image"])) if s.get("image") else ""
        lines = [f"<tr><th>truth</th><td>{html.escape(str(s.get('truth', '')))}</td></tr>"]
        for method, cap in (s.get("captions") or {}).items():
            lines.append(f"<tr><th>{_swatch(method)}</th><td>{marked_caption(str(s.get('truth', '')), str(cap))}"
                         "</td></tr>")  # fmt: skip
        blocks.append(f"<div class='sample-row'><div>{picture}<div class='meta'>{html.escape(str(s.get('id', '')))}"
                      f"</div></div><table class='captions'>{''.join(lines)}</table></div>")  # fmt: skip
    return (
        "<h2>4. Sample captions</h2><p class='meta'>Generated from each test image's embedding; words naming a "
        f"wrong attribute are <mark>marked</mark>.</p>{''.join(blocks)}"
    )


def _ablation_section(results: Mapping[str, Any]) -> str:
    ab = results.get("ablation")
    if not isinstance(ab, Mapping) or not ab.get("runs"):
        return ""
    groups: dict[tuple[int, float], list[Mapping[str, Any]]] = {}
    for r in ab["runs"]:
        groups.setdefault((int(r.get("visual_tokens", 1)), float(r.get("noise", 0.0))), []).append(r)
    body = []
    for (tokens, noise), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cells = []
        for key, _ in ACCURACY:
            v = [float(r[key]) for r in rs if key in r]
            cells.append(fmt_mean_std(float(np.mean(v)) if v else None,
                                      float(np.std(v, ddof=1)) if len(v) > 1 else None, _DECIMALS))  # fmt: skip
        secs = [float(r["train_seconds"]) for r in rs if "train_seconds" in r]
        body.append(f"<tr><td>{tokens}</td><td>{noise:g}</td><td>{len(rs)}</td>"
                    f"{''.join(f'<td>{c}</td>' for c in cells)}"
                    f"<td>{fmt_row([float(np.mean(secs))], 1)[0] if secs else '—'}</td></tr>")  # fmt: skip
    head = "".join(f"<th>{h}</th>" for _, h in ACCURACY)
    return (
        f"<h2>5. Visual tokens: 1 vs 576</h2><p class='meta'>Method {_swatch(str(ab.get('method', '?')))}; the "
        "feature repeated as 576 visual tokens (LLaVA's compatible layout) or given once.</p>"
        f"<table><thead><tr><th>visual tokens</th><th>noise σ</th><th>seeds</th>{head}<th>train s</th></tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _kv_table(items: Mapping[str, Any]) -> str:
    """Key/value rows; a nested mapping is spread into "outer · inner" rows, a list shown as JSON."""
    rows = []
    flat: list[tuple[str, Any]] = []
    for key, value in items.items():
        if isinstance(value, Mapping):
            flat += [(f"{key} · {k}", v) for k, v in value.items()]
        else:
            flat.append((str(key), value))
    for key, value in flat:
        if isinstance(value, float):
            shown = fmt_row([value])[0]
        elif isinstance(value, Mapping | list):
            shown = f"<code>{html.escape(json.dumps(value, sort_keys=True))}</code>"
        else:
            shown = html.escape(str(value))
        rows.append(f"<tr><th>{html.escape(key)}</th><td class='left'>{shown}</td></tr>")
    return f"<table class='kv'>{''.join(rows)}</table>"


def _run_section(results: Mapping[str, Any]) -> str:
    facts = {
        "command": results.get("command", "—"),
        "seeds": ", ".join(str(s) for s in results.get("seeds", [])) or "—",
        "quick": results.get("quick", "—"),
        "noise σ": f"{results['noise_sigma']:g}" if _number(results.get("noise_sigma")) else "—",
        "machine": results.get("machine", "not recorded"),
    }
    parts = [f"<h2>6. How this was run</h2>{_kv_table(facts)}"]
    for key, title in (("timings", "Timings (s)"), ("encoder", "Encoder"), ("config", "Configuration")):
        value = results.get(key)
        if isinstance(value, Mapping) and value:
            parts.append(f"<h3>{title}</h3>{_kv_table(value)}")
    return "".join(parts)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1260px; color: #222; line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 1.8em; } h3 { font-size: 1em; }
table { border-collapse: collapse; font-size: 0.92em; margin: 0.4em 0; }
th, td { padding: 0.3em 0.8em; border-bottom: 1px solid #ddd; text-align: right; font-variant-numeric: tabular-nums; }
th:first-child, td:first-child, td.note, td.left { text-align: left; } td.note { color: #777; }
thead th { border-bottom: 2px solid #444; }
tr.best td { background: #fff3c4; font-weight: 600; } tr.bound td { color: #555; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: 0.4em 0; display: block; }
img.sample { image-rendering: pixelated; border: 1px solid #999; }
.meta { color: #666; font-size: 0.9em; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.35em; border-radius: 2px; }
.sample-row { display: flex; gap: 1.2em; align-items: flex-start; margin: 0.8em 0; }
table.captions th { text-align: left; white-space: nowrap; font-weight: normal; }
table.captions td { text-align: left; } table.kv th { text-align: left; font-weight: 600; }
table.kv code { font-size: 0.85em; word-break: break-all; }
mark { background: #ffb3b3; padding: 0 0.15em; } .missing { color: #a33; font-size: 0.9em; }
"""


def render_html(results: Mapping[str, Any], base: Path) -> str:
    """The whole report as one HTML document; sample image paths are read relative to `base`."""
    rows = _summary(results)
    methods = len({r["method"] for r in rows})
    seeds = max((r["n"] for r in rows), default=0)
    intro = (
        f"{methods} methods (raw and paired among them) × {len({float(r['noise']) for r in rows})} noise "
        f"level(s), up to {seeds} seed(s) each{', quick run' if results.get('quick') else ''}."
    )
    sections = [
        _accuracy_section(rows),
        _gap_section(rows, results),
        _attribute_section(results),
        _samples_section(results, base),
        _ablation_section(results),
        _run_section(results),
    ]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>revision experiment: does aligned text stand in for images?</title>
<style>{_CSS}</style></head><body>
<h1>Does aligned text stand in for images?</h1>
<p class="meta">{html.escape(intro)}</p>
{"".join(s for s in sections if s)}
</body></html>
"""


def render_report(results: dict[str, Any], out_dir: Path, *, base_dir: Path | None = None) -> Path:
    """Write out_dir/report.html and return its path. Sample images are read relative to
    `base_dir` (the folder of results.json; default `out_dir`). Raises UserError on results with no
    runs or runs missing a score."""
    from revision.diagnose.pipeline import write_atomic

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: exists and is not a folder")
    _runs(results)
    page = render_html(results, Path(base_dir) if base_dir is not None else out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.html"
    write_atomic(path, page)
    return path
