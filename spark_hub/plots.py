"""Small bar charts (PNG) drawn with Pillow: the dataset card's agreement plot and the evaluation plots.

spark-hub draws three simple charts (mean agreement by step index, ProcessBench per-split
accuracies and F1, math pass@1 per benchmark). Pillow draws them in a few milliseconds, where
importing matplotlib alone took about a CPU second of every dataset build. The Hub does not render
SVG images in cards, so the charts are PNG.

The chart is drawn at twice its size and reduced (anti-aliased bars and lines), with Pillow's
built-in scalable font (``ImageFont.load_default(size=...)``, Pillow >= 10.1). The canvas is sized
from its text: the title, the legend and every shown tick label lie inside the image whatever the
number of bars. That font covers ASCII and a few typographic marks only: other characters are
drawn as their closest ASCII (an em dash as ``-``, ``é`` as ``e``, else ``?``). The PNG carries
no timestamp or software tag, so identical inputs give identical bytes.

Example:

```py
>>> from spark_hub.plots import bar_chart
>>> bar_chart("scores.png", ["gsm8k", "math"],
...           [("error acc.", [48.3, 33.0], "#4C72B0"), ("F1", [64.5, None], "#55A868")],
...           title="ProcessBench", ylabel="%", ylim=(0, 110), value_labels=True)  # doctest: +SKIP
PosixPath('scores.png')
```
"""

from __future__ import annotations

import functools
import logging
import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

logger = logging.getLogger(__name__)

#: Bar colours (seaborn's "deep" palette, which the matplotlib charts used).
BLUE, ORANGE, GREEN, RED = "#4C72B0", "#DD8452", "#55A868", "#C44E52"
TEXT, AXIS, GRID, BACKGROUND = "#222222", "#444444", "#E3E3E3", "#FFFFFF"

#: Drawn at SCALE times the output size, then reduced: smooth edges on bars and lines.
SCALE = 2
#: Font sizes (output pixels).
TITLE_SIZE, LABEL_SIZE, TICK_SIZE, VALUE_SIZE, LEGEND_SIZE = 15, 12, 11, 10, 11
#: Up to this many categories every x tick label is shown; beyond, every k-th that fits.
MAX_ALL_LABELS = 30
PLOT_HEIGHT = 250
MIN_PLOT_WIDTH, MAX_PLOT_WIDTH = 460, 1000
PAD, GAP, TICK_LENGTH = 10, 6, 4
MIN_BAR, MAX_BAR = 4, 56

#: A series: (legend label, one value per category (None / NaN: no bar), colour or one colour per bar).
Series = tuple[str, Sequence[float | None], "str | Sequence[str]"]
Box = tuple[int, int, int, int]


@dataclass
class Chart:
    """A rendered chart: the Pillow image and where its parts lie (boxes in output pixels,
    ``(left, top, right, bottom)``; ``title`` is the ink box of the title text)."""

    image: Any
    boxes: dict[str, Box] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    def png_bytes(self) -> bytes:
        """The PNG encoding (no text chunks, no timestamp: deterministic for identical charts)."""
        import io

        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG", optimize=False)
        return buffer.getvalue()

    def save(self, path: str | Path) -> Path:
        """Write the PNG atomically (temp file + fsync + rename) and return ``path``."""
        from spark_hub.io import atomic_path

        path = Path(path)
        data = self.png_bytes()
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        logger.debug("wrote %s (%dx%d)", path, *self.size)
        return path


#: ASCII stand-ins for common characters the built-in font lacks (others: accents dropped, else "?").
FALLBACK = {"\u2014": "-", "\u2013": "-", "\u2212": "-", "\u00d7": "x", "\u2264": "<=", "\u2265": ">=",
            "\u2192": "->", "\u00a0": " "}


@functools.lru_cache(maxsize=None)
def _has_glyph(char: str) -> bool:
    """Whether Pillow's built-in font draws ``char`` (its glyph differs from the missing-glyph box)."""
    from PIL import ImageFont

    font = ImageFont.load_default(size=20)

    def glyph(c: str) -> tuple:
        mask = font.getmask(c)
        return mask.size, bytes(mask)

    return glyph(char) != glyph("\U0010ffff")


def printable(text: str) -> str:
    """``text`` with each character the built-in font lacks replaced by an ASCII stand-in."""
    if text.isascii():
        return text
    out = []
    for char in text:
        if char.isascii() or _has_glyph(char):
            out.append(char)
        else:
            out.append(FALLBACK.get(char)
                       or "".join(c for c in unicodedata.normalize("NFKD", char) if c.isascii()) or "?")
    return "".join(out)


def nice_ticks(lo: float, hi: float, target: int = 6) -> tuple[list[float], int]:
    """Round tick values in ``[lo, hi]`` (a step of 1, 2, 2.5 or 5 times a power of ten giving about
    ``target`` intervals) and the number of decimals that prints them."""
    span = hi - lo
    raw = span / target
    magnitude = 10 ** math.floor(math.log10(raw))
    mantissa = next(m for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    step = mantissa * magnitude
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) + (1 if mantissa == 2.5 else 0)
    first = math.ceil(lo / step - 1e-9)
    ticks = []
    i = first
    while i * step <= hi + step * 1e-9:
        ticks.append(round(i * step, 10))
        i += 1
    return ticks, decimals


def _y_range(values: list[float], ylim: tuple[float, float] | None, headroom: float) -> tuple[float, float]:
    if ylim is not None:
        lo, hi = float(ylim[0]), float(ylim[1])
        if not hi > lo:
            raise ValueError(f"ylim must be (low, high) with low < high, got {ylim!r}")
        return lo, hi
    lo = min([0.0, *values])
    hi = max([0.0, *values])
    if hi == lo:
        hi = lo + 1.0
    hi += (hi - lo) * headroom
    ticks, _ = nice_ticks(lo, hi)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else hi - lo
    return (math.floor(lo / step - 1e-9) * step if lo < 0 else lo), math.ceil(hi / step - 1e-9) * step


def _thinning(count: int, slot: float, label_width: float) -> int:
    """Show every k-th x tick label: 1 up to MAX_ALL_LABELS categories, else the first k of
    1, 2, 5, 10, 20, 50... whose labels do not overlap."""
    if count <= MAX_ALL_LABELS:
        return 1
    k = 1
    while k * slot < label_width + 8:
        k = k * 5 // 2 if str(k)[0] == "2" else k * 2  # 1, 2, 5, 10, 20, 50, 100...
    return max(k, 2)


def render_bar_chart(
    categories: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    xlabel: str | None = None,
    ylabel: str | None = None,
    ylim: tuple[float, float] | None = None,
    value_labels: bool = False,
    value_format: str = "{:.1f}",
    legend: bool | None = None,
) -> Chart:
    """Draw a bar chart (grouped bars when there are several series) and return it as a `Chart`.

    Args:
        categories: the x tick labels, one per group of bars. Up to 30 are all shown; beyond, every
            k-th (k = 2, 5, 10, 20...) so that they do not overlap.
        series: ``(label, values, color)`` per series; ``values`` has one entry per category (None
            or NaN draws no bar), ``color`` is a colour (``"#4C72B0"``) or one colour per bar.
        title: drawn centred above the plot; the canvas is widened so that it always fits.
        xlabel, ylabel: axis labels (the y label is drawn rotated).
        ylim: the y range; by default from 0 (or the smallest value) to a round number above the
            largest value. Values outside it are clipped to it.
        value_labels: print each value above its bar (``value_format``); a missing value reads
            ``n/a``.
        legend: draw a legend row under the title (default: when there are several series).

    Raises:
        ValueError: no categories or series, or a series whose length is not the number of categories.
    """
    from PIL import Image, ImageDraw, ImageFont

    categories = [printable(str(c)) for c in categories]
    title, xlabel, ylabel = printable(title), xlabel and printable(xlabel), ylabel and printable(ylabel)
    n, k = len(categories), len(series)
    if not n or not k:
        raise ValueError("a bar chart needs at least one category and one series")
    values: list[list[float | None]] = []
    colors: list[list[str]] = []
    for label, vals, color in series:
        vals = [None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v) for v in vals]
        if len(vals) != n:
            raise ValueError(f"series {label!r} has {len(vals)} values for {n} categories")
        values.append(vals)
        colors.append([color] * n if isinstance(color, str) else [str(c) for c in color])
        if len(colors[-1]) != n:
            raise ValueError(f"series {label!r} has {len(colors[-1])} colours for {n} categories")
    show_legend = k > 1 if legend is None else legend
    finite = [v for vals in values for v in vals if v is not None]
    lo, hi = _y_range(finite, ylim, headroom=0.12 if value_labels else 0.02)
    yticks, decimals = nice_ticks(lo, hi)

    s = SCALE

    def font(size: int):
        return ImageFont.load_default(size=size * s)

    title_font, label_font, tick_font = font(TITLE_SIZE), font(LABEL_SIZE), font(TICK_SIZE)
    value_font, legend_font = font(VALUE_SIZE), font(LEGEND_SIZE)

    def width(text: str, f) -> int:
        left, _, right, _ = f.getbbox(text, anchor="ls")
        return right - left

    def line(f) -> tuple[int, int]:  # (ascent, descent) of a line of this font
        _, top, _, bottom = f.getbbox("Hgjy0", anchor="ls")
        return -top, bottom

    pad, gap, tick_len = PAD * s, GAP * s, TICK_LENGTH * s
    title_asc, title_desc = line(title_font)
    label_asc, label_desc = line(label_font)
    tick_asc, tick_desc = line(tick_font)
    value_asc, value_desc = line(value_font)
    legend_asc, legend_desc = line(legend_font)
    ytick_texts = [f"{t:.{decimals}f}" for t in yticks]
    value_texts = [[printable("n/a" if v is None else value_format.format(v)) for v in vals] for vals in values]

    # Horizontal layout: slot = the width of one category (its bars and the space around them).
    label_width = max(width(c, tick_font) for c in categories)
    bar_need = MIN_BAR * s
    if value_labels:
        bar_need = max(bar_need, max(width(t, value_font) for row in value_texts for t in row) + 4 * s)
    slot = max(k * bar_need / 0.8, 28 * s if k == 1 else 0)
    if n <= MAX_ALL_LABELS:
        slot = max(slot, label_width + 10 * s)
    elif n * slot > MAX_PLOT_WIDTH * s:
        slot = max(MAX_PLOT_WIDTH * s / n, 2 * s)
    legend_entries = [(printable(label), colors[j][0]) for j, (label, _, _) in enumerate(series)]
    swatch = 10 * s
    legend_width = sum(swatch + 4 * s + width(label, legend_font) for label, _ in legend_entries) \
        + 16 * s * (len(legend_entries) - 1)
    ylabel_height = (label_asc + label_desc) if ylabel else 0
    left = pad + (ylabel_height + gap if ylabel else 0) + max(width(t, tick_font) for t in ytick_texts) + gap + tick_len
    right = pad + 6 * s
    plot_width = max(n * slot, MIN_PLOT_WIDTH * s)
    text_width = max(width(title, title_font), legend_width if show_legend else 0) + 2 * pad
    plot_width = max(plot_width, text_width - left - right)
    slot = plot_width / n
    every = _thinning(n, slot, label_width)

    top = pad + title_asc + title_desc + gap
    legend_top = top + gap // 2
    if show_legend:
        top += gap // 2 + max(swatch, legend_asc + legend_desc) + gap
    top += gap
    plot_height = PLOT_HEIGHT * s
    bottom_of_plot = top + plot_height
    xtick_top = bottom_of_plot + tick_len + 2 * s
    canvas_bottom = xtick_top + tick_asc + tick_desc
    if xlabel:
        xlabel_top = canvas_bottom + gap
        canvas_bottom = xlabel_top + label_asc + label_desc
    canvas_width = left + int(math.ceil(plot_width)) + right
    canvas_height = canvas_bottom + pad
    canvas_width += -canvas_width % s
    canvas_height += -canvas_height % s

    image = Image.new("RGB", (canvas_width, canvas_height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    x0, x1, y0, y1 = left, left + plot_width, top, bottom_of_plot
    boxes: dict[str, Box] = {}

    def y_of(value: float) -> float:
        value = min(max(value, lo), hi)
        return y1 - (value - lo) / (hi - lo) * plot_height

    # Grid and y ticks.
    for tick, text in zip(yticks, ytick_texts):
        y = round(y_of(tick))
        if tick != lo:
            draw.line([(x0, y), (x1, y)], fill=GRID, width=s)
        draw.line([(x0 - tick_len, y), (x0, y)], fill=AXIS, width=s)
        draw.text((x0 - tick_len - gap, y), text, font=tick_font, fill=TEXT, anchor="rm")

    # Bars, value labels.
    group = min(0.8 * slot, k * MAX_BAR * s)
    bar = group / k
    zero = y_of(max(lo, min(0.0, hi)))
    for j in range(k):
        for i in range(n):
            center = x0 + (i + 0.5) * slot - group / 2 + (j + 0.5) * bar
            value = values[j][i]
            if value is not None:
                y_top = y_of(value)
                bar_box = (round(center - bar / 2), round(min(y_top, zero)),
                           round(center + bar / 2) - 1, round(max(y_top, zero)))
                if bar_box[3] > bar_box[1]:
                    draw.rectangle(bar_box, fill=colors[j][i])
            if value_labels:
                y_top = zero if value is None else y_of(value)
                baseline = y_top - 3 * s - value_desc
                fill = TEXT
                if baseline - value_asc < y0 and value is not None:  # no room above: inside the bar
                    baseline, fill = y_top + 3 * s + value_asc, BACKGROUND
                draw.text((center, baseline), value_texts[j][i], font=value_font, fill=fill, anchor="ms")

    # Axes (drawn over the bars' feet), x ticks and labels.
    draw.line([(x0, y0), (x0, y1)], fill=AXIS, width=s)
    draw.line([(x0, y1), (x1, y1)], fill=AXIS, width=s)
    for i, category in enumerate(categories):
        if (i + 1) % every and every > 1:
            continue
        x = round(x0 + (i + 0.5) * slot)
        draw.line([(x, y1), (x, y1 + tick_len)], fill=AXIS, width=s)
        draw.text((x, xtick_top + tick_asc), category, font=tick_font, fill=TEXT, anchor="ms")
    if xlabel:
        draw.text(((x0 + x1) / 2, xlabel_top + label_asc), xlabel, font=label_font, fill=TEXT, anchor="ms")
    if ylabel:
        mask = Image.new("L", (width(ylabel, label_font) + 2 * s, label_asc + label_desc), 0)
        ImageDraw.Draw(mask).text((s, label_asc), ylabel, font=label_font, fill=255, anchor="ls")
        mask = mask.rotate(90, expand=True)
        image.paste(TEXT, (pad, round((y0 + y1 - mask.size[1]) / 2)), mask)

    # Title, centred over the plot and kept inside the canvas; legend under it.
    title_width = width(title, title_font)
    title_x = min(max((x0 + x1) / 2 - title_width / 2, pad), canvas_width - pad - title_width)
    draw.text((title_x, pad + title_asc), title, font=title_font, fill=TEXT, anchor="ls")
    boxes["title"] = draw.textbbox((title_x, pad + title_asc), title, font=title_font, anchor="ls")
    if show_legend:
        x = (x0 + x1) / 2 - legend_width / 2
        x = start = min(max(x, pad), canvas_width - pad - legend_width)
        row = max(swatch, legend_asc + legend_desc)
        for label, color in legend_entries:
            sy = legend_top + (row - swatch) // 2
            draw.rectangle((round(x), sy, round(x) + swatch - 1, sy + swatch - 1), fill=color)
            x += swatch + 4 * s
            draw.text((x, legend_top + row / 2), label, font=legend_font, fill=TEXT, anchor="lm")
            x += width(label, legend_font) + 16 * s
        boxes["legend"] = (round(start), legend_top, round(start + legend_width), legend_top + row)
    boxes["plot"] = (round(x0), y0, round(x1), y1)

    image = image.reduce(s)
    return Chart(image, {name: tuple(int(round(v / s)) for v in box) for name, box in boxes.items()})


def bar_chart(path: str | Path, categories: Sequence[str], series: Sequence[Series], **options: Any) -> Path:
    """Draw a bar chart (`render_bar_chart`, same keyword options) and write it as PNG, atomically.

    Returns:
        ``path``. Identical inputs give identical bytes (no timestamp in the PNG).
    """
    return render_bar_chart(categories, series, **options).save(path)


__all__ = ["BLUE", "Chart", "GREEN", "ORANGE", "RED", "Series", "bar_chart", "nice_ticks", "printable",
           "render_bar_chart"]
