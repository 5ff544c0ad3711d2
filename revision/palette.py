"""The look shared by every report: one colour per method, the figure grid, and number formats.

`revision diagnose` and `revision experiment` both draw through this module, so "realign" is the
same blue in a histogram, a scatter, a spectrum and a bar chart, panels are laid out at most
`MAX_COLS` to a row at a size whose text stays readable, and tables print a row's numbers with
one precision. matplotlib is imported inside the functions that draw, not with this module, so
commands that never draw do not pay for it.
"""

from __future__ import annotations

import base64
import html
import io
import math
import struct
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "IMAGE_COLOUR",
    "MAX_COLS",
    "METHOD_COLOURS",
    "REFERENCES",
    "decimals_for",
    "fmt_mean_std",
    "fmt_number",
    "fmt_row",
    "grid",
    "img_tag",
    "method_colour",
    "png_bytes",
    "png_size",
    "rc",
    "style",
]

# The methods of `revision align` and the experiment's two references. The references are neutral
# greys (raw text: the lower bound; paired image embeddings: the upper bound) so the aligned methods
# stand out against them; the methods take distinct hues from matplotlib's tab10.
METHOD_COLOURS: dict[str, str] = {
    "raw": "#7f7f7f",
    "paired": "#262626",
    "realign": "#1f77b4",
    "realign-ot": "#9467bd",
    "mean-shift": "#2ca02c",
    "c3": "#d62728",
    "capdec": "#ff7f0e",
    "gap-shift": "#8c564b",
}
REFERENCES: tuple[str, ...] = ("raw", "paired")
# The image modality in diagnose's figures: a hue no method uses, so "image" never reads as a method.
IMAGE_COLOUR = "#17becf"
# Unknown names (a user's `--aligned mine=...`) draw from these, chosen by a hash of the name so a
# name keeps its colour from run to run and from figure to figure.
_FALLBACK = ("#e377c2", "#bcbd22", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd")

MAX_COLS = 3
# A panel is PANEL_SIZE inches at DISPLAY_DPI CSS pixels per inch: 3 × 4 in = 1,200 px, the report's
# width, so each panel shows at ≈ 390 px. PNGs are saved at SAVE_DPI (sharper on high-density
# screens) and shown at their DISPLAY_DPI size through the <img> width.
PANEL_SIZE = (4.0, 3.3)
DISPLAY_DPI = 100
SAVE_DPI = 150

# Font sizes in points; at DISPLAY_DPI a 9 pt tick label is about 12.5 CSS px.
rc: dict[str, Any] = {
    "font.size": 10,
    "axes.titlesize": 10.5,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 8.5,
    "figure.titlesize": 12,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
}


def method_colour(name: str) -> str:
    """The colour of method `name`: its own for a known method (also when the name carries a known
    method as a suffix, as a store folder "aligned-realign" does), a stable fallback otherwise."""
    if name in METHOD_COLOURS:
        return METHOD_COLOURS[name]
    lowered = name.lower()
    # The longest known name that ends the given one after a separator: "aligned-realign-ot" is
    # realign-ot, not realign.
    for known in sorted(METHOD_COLOURS, key=len, reverse=True):
        if lowered == known or (lowered.endswith(known) and not lowered[-len(known) - 1].isalnum()):
            return METHOD_COLOURS[known]
    return _FALLBACK[zlib.crc32(name.encode("utf-8")) % len(_FALLBACK)]


def style() -> Any:
    """A context in which to draw a report figure: the Agg backend and `rc` (fonts are read from
    rcParams when an artist is made, so the whole drawing goes inside it)."""
    import matplotlib

    matplotlib.use("Agg")
    return matplotlib.rc_context(rc)  # type: ignore[arg-type]  # rc's keys are valid rcParams


def grid(n: int, *, panel: tuple[float, float] = PANEL_SIZE, cols: int = MAX_COLS) -> Any:
    """A constrained-layout figure of `n` panels, at most `cols` (≤ MAX_COLS) to a row; returns (fig, axes)
    with exactly `n` axes (the unused cells of the last row are removed). Call it inside `style()`.
    Axes are not shared: a shared axis would hide the tick labels above a removed cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if n < 1:
        raise ValueError(f"grid: need at least one panel, got {n}")
    cols = max(1, min(cols, MAX_COLS, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(panel[0] * cols, panel[1] * rows),
        squeeze=False,
        layout="constrained",
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        fig.delaxes(ax)
    return fig, flat[:n]


def png_bytes(fig: Any) -> bytes:
    """`fig` as PNG bytes at SAVE_DPI; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=SAVE_DPI)
    plt.close(fig)
    return buf.getvalue()


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels, read from the PNG's IHDR chunk."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)


def img_tag(png: bytes, alt: str, *, mime: str = "image/png", width: int | None = None) -> str:
    """An <img> with the picture inlined as a base64 data URI. A PNG drawn here is shown at its
    DISPLAY_DPI size (the page scales it down, never up, when narrower); `width` overrides."""
    if width is None and mime == "image/png":
        width = round(png_size(png)[0] * DISPLAY_DPI / SAVE_DPI)
    data = base64.b64encode(png).decode("ascii")
    size = f' width="{width}"' if width else ""
    return f'<img alt="{html.escape(alt)}"{size} src="data:{mime};base64,{data}">'


def decimals_for(values: Iterable[Any]) -> int:
    """The decimals of a table row: 4 when its largest magnitude is under 10 (the unit-scale gap
    metrics: 0.7870 / 0.0004 / 1.3062, so a column of them lines up at one precision too), 1 under
    1,000 (effective ranks, median ranks: 49.0 / 149.8), 0 above (counts: 12,345)."""
    finite = [abs(float(v)) for v in values if isinstance(v, int | float) and math.isfinite(float(v))]
    largest = max(finite, default=0.0)
    if largest < 10:
        return 4
    return 1 if largest < 1000 else 0


def fmt_number(value: Any, decimals: int) -> str:
    """`value` with `decimals` decimals and thousands separators; "—" for a missing value, ints and
    strings unchanged."""
    if value is None:
        return "—"
    if isinstance(value, bool | str):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if not math.isfinite(float(value)):
        return str(value)
    return f"{float(value):,.{decimals}f}"


def fmt_row(values: Sequence[Any], decimals: int | None = None) -> list[str]:
    """Each value of a table row at the row's one precision (`decimals_for` unless given). A row of
    whole numbers (ints) stays whole."""
    if decimals is None:
        floats = [v for v in values if isinstance(v, float)]
        decimals = decimals_for(floats) if floats else 0
    return [fmt_number(v, decimals) for v in values]


def fmt_mean_std(mean: float | None, std: float | None, decimals: int = 3) -> str:
    """ "0.930 ± 0.012"; the ± part is left out when std is missing (a single seed)."""
    if mean is None or not math.isfinite(mean):
        return "—"
    if std is None or not math.isfinite(std):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"
