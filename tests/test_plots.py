"""The Pillow bar charts (spark_hub.plots): PNG bytes, layout, missing values, grouped series."""

import math
import struct
import subprocess
import sys

import pytest

from spark_hub import plots
from spark_hub.plots import BLUE, GREEN, ORANGE, bar_chart, nice_ticks, printable, render_bar_chart

PNG = b"\x89PNG\r\n\x1a\n"
TITLE = "Mean per-step agreement between verifications"


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def ink_box(chart, box):
    """The bounding box of the dark pixels inside ``box`` (None: nothing drawn there)."""
    region = chart.image.convert("L").crop(box)
    found = region.point(lambda v: 255 if v < 200 else 0).getbbox()
    return None if found is None else (found[0] + box[0], found[1] + box[1], found[2] + box[0], found[3] + box[1])


def test_png_signature_size_and_deterministic_bytes(tmp_path):
    args = (["1", "2", "3"], [("agreement", [0.9, None, 0.7], BLUE)])
    first = bar_chart(tmp_path / "sub" / "a.png", *args, title=TITLE, xlabel="step index", ylim=(0, 1))
    second = bar_chart(tmp_path / "b.png", *args, title=TITLE, xlabel="step index", ylim=(0, 1))
    data = first.read_bytes()
    assert first == tmp_path / "sub" / "a.png" and data == second.read_bytes()
    chart = render_bar_chart(*args, title=TITLE, xlabel="step index", ylim=(0, 1))
    assert png_size(data) == chart.size and data == chart.png_bytes()
    assert b"tIME" not in data and b"tEXt" not in data and b"iTXt" not in data
    assert not list(tmp_path.glob("**/*.tmp"))  # written through a temp file, renamed
    assert bar_chart(tmp_path / "c.png", *args, title=TITLE + "!").read_bytes() != data


def test_identical_bytes_in_another_process(tmp_path):
    bar_chart(tmp_path / "here.png", ["a", "b"], [("x", [1.0, 2.0], BLUE)], title="t", value_labels=True)
    code = ("from spark_hub.plots import bar_chart, BLUE; import sys; "
            "bar_chart(sys.argv[1], ['a', 'b'], [('x', [1.0, 2.0], BLUE)], title='t', value_labels=True)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "there.png")], check=True)
    assert (tmp_path / "here.png").read_bytes() == (tmp_path / "there.png").read_bytes()


@pytest.mark.parametrize("bars", [1, 3, 12, 60, 200])
def test_title_and_tick_labels_inside_the_image_whatever_the_number_of_bars(bars):
    chart = render_bar_chart([str(i) for i in range(1, bars + 1)], [("agreement", [0.5] * bars, BLUE)],
                             title=TITLE, xlabel="step index", ylabel="mean agreement", ylim=(0, 1))
    width, height = chart.size
    x0, y0, x1, y1 = chart.boxes["title"]
    assert 0 < x0 < x1 < width and 0 < y0 < y1 < chart.boxes["plot"][1]
    ink = ink_box(chart, (0, 0, width, (y1 + chart.boxes["plot"][1]) // 2))  # the title row
    assert ink is not None, "no title drawn"
    assert x0 - 1 <= ink[0] and ink[2] <= x1 + 1 and ink[1] >= y0 - 1 and ink[3] <= y1 + 1
    px0, py0, px1, py1 = chart.boxes["plot"]
    below = ink_box(chart, (0, py1 + 2, width, height))  # x tick labels and the x label
    assert below is not None and 0 < below[0] and below[2] < width and below[3] < height
    assert width <= 1100  # many bars: thinner bars and every k-th label, not a wider image


def test_x_labels_all_shown_up_to_30_then_thinned():
    assert plots._thinning(30, 5.0, 40.0) == 1
    assert plots._thinning(60, 20.0, 20.0) == 2
    assert plots._thinning(200, 10.0, 30.0) == 5
    assert plots._thinning(1000, 2.0, 30.0) == 20


def test_missing_values_draw_no_bar():
    values = [0.8, None, float("nan"), 0.4]
    chart = render_bar_chart(list("abcd"), [("x", values, BLUE)], title="t", ylim=(0, 1), value_labels=True)
    px0, py0, px1, py1 = chart.boxes["plot"]
    slot = (px1 - px0) / 4
    image = chart.image.convert("RGB")
    y = round(py1 - 0.2 * (py1 - py0))  # a height both drawn bars reach
    colored = [image.getpixel((round(px0 + (i + 0.5) * slot), y)) for i in range(4)]
    blue = tuple(int(BLUE[k:k + 2], 16) for k in (1, 3, 5))
    assert [c == blue for c in colored] == [True, False, False, True], colored
    assert ink_box(chart, (round(px0 + slot) + 2, py0, round(px0 + 3 * slot) - 2, py1 - 1)) is not None  # "n/a"


def test_grouped_series_side_by_side_with_a_legend():
    series = [("error acc.", [40.0, 20.0], BLUE), ("correct acc.", [90.0, None], ORANGE), ("F1", [55.0, 30.0], GREEN)]
    chart = render_bar_chart(["gsm8k", "math"], series, title="ProcessBench", ylim=(0, 110), value_labels=True)
    assert "legend" in chart.boxes and chart.boxes["title"][3] < chart.boxes["legend"][1] < chart.boxes["plot"][1]
    assert ink_box(chart, chart.boxes["legend"]) is not None
    px0, py0, px1, py1 = chart.boxes["plot"]
    y = round(py1 - 10 / 110 * (py1 - py0))  # every non-missing bar reaches 10
    image = chart.image.convert("RGB")
    colors = []
    for x in range(px0 + 2, (px0 + px1) // 2):  # the first group, left to right
        pixel = image.getpixel((x, y))
        if pixel != (255, 255, 255) and (not colors or colors[-1] != pixel):
            colors.append(pixel)
    rgb = [tuple(int(c[k:k + 2], 16) for k in (1, 3, 5)) for c in (BLUE, ORANGE, GREEN)]
    assert [c for c in colors if c in rgb] == rgb  # blue, orange, green in order
    one = render_bar_chart(["gsm8k", "math"], series[:1], title="ProcessBench")
    assert "legend" not in one.boxes  # one series: no legend by default


def test_per_bar_colours_and_bad_input():
    chart = render_bar_chart(["a", "Avg"], [("acc", [50.0, 60.0], [BLUE, ORANGE])], title="t", ylim=(0, 100))
    assert chart.size[0] > 0
    with pytest.raises(ValueError, match="2 values for 3 categories"):
        render_bar_chart(["a", "b", "c"], [("acc", [1.0, 2.0], BLUE)], title="t")
    with pytest.raises(ValueError, match="colours"):
        render_bar_chart(["a", "b"], [("acc", [1.0, 2.0], [BLUE])], title="t")
    with pytest.raises(ValueError, match="at least one"):
        render_bar_chart([], [("acc", [], BLUE)], title="t")
    with pytest.raises(ValueError, match="low < high"):
        render_bar_chart(["a"], [("acc", [1.0], BLUE)], title="t", ylim=(1, 1))


def test_nice_ticks_and_auto_range():
    assert nice_ticks(0, 1) == ([0.0, 0.2, 0.4, 0.6, 0.8, 1.0], 1)
    assert nice_ticks(0, 110) == ([0.0, 20.0, 40.0, 60.0, 80.0, 100.0], 0)
    ticks, decimals = nice_ticks(0, 1.5)
    assert ticks[1] == 0.25 and decimals == 2
    lo, hi = plots._y_range([3.0, 7.2], None, headroom=0.0)
    assert lo == 0 and hi >= 7.2 and math.isclose(hi, 8.0)
    assert plots._y_range([-2.0, 3.0], None, headroom=0.0)[0] < -2.0 + 1e-9


def test_characters_missing_from_the_font_are_drawn_as_ascii():
    assert printable("plain ascii") == "plain ascii"
    assert printable("org/prm \u2014 average F1") == "org/prm - average F1"
    assert printable("caf\u00e9 3\u00d74 \u4e2d") == "cafe 3x4 ?"
    assert printable("\u201cquoted\u201d") == "\u201cquoted\u201d"  # the font has these
