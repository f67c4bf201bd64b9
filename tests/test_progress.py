"""The progress display: stage clocks, frozen figures, cached work, no `nan`, logs without a terminal,
and library output kept out of the live display. A fake clock makes the figures exact."""

import io
import logging
import time

import pytest
from rich.console import Console

from spark_hub.backends.base import Completion
from spark_hub.progress import StageProgress, format_duration


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def outputs(k, tokens):
    return [[Completion("x", completion_tokens=tokens)] for _ in range(k)]


def live_bar(clock):
    buf = io.StringIO()
    out = Console(file=buf, force_terminal=True, width=150, color_system=None)
    return StageProgress(live=True, clock=clock, out=out), buf


def test_a_stage_clock_starts_with_its_work_and_freezes_when_done():
    clock = Clock()
    bar = StageProgress(live=False, enabled=True, clock=clock, log_every=1e9)
    with bar:
        bar.add("generate", 2)
        bar.add("verify", 4)  # declared at build start...
        clock.now = 100.0
        done = bar.on_batch("generate")
        clock.now = 110.0
        done([1, 2], outputs(2, 100))
        assert bar.line("generate") == "generate: 2/2 (100%), 20 tok/s, elapsed 0:10, done"
        clock.now = 120.0
        verify = bar.on_batch("verify")  # ...but its clock starts when verification starts
        clock.now = 130.0
        verify([1, 2], outputs(2, 50))
        assert bar.line("verify") == "verify: 2/4 (50%), 10 tok/s, elapsed 0:10, ETA 0:10"
        clock.now = 1000.0  # much later: the finished stage's tok/s and elapsed do not move
        assert bar.line("generate") == "generate: 2/2 (100%), 20 tok/s, elapsed 0:10, done"


def test_cached_results_do_not_count_as_throughput():
    clock = Clock()
    bar = StageProgress(live=False, enabled=True, clock=clock, log_every=1e9)
    with bar:
        bar.add("verify", 10)
        clock.now = 5.0
        callback = bar.on_batch("verify")
        callback(list(range(6)), outputs(6, 1000), cached=True)  # a resume: 6 answered from the cache at once
        assert bar.line("verify") == "verify: 6/10 (60%), — tok/s, elapsed 0:00, ETA —"
        clock.now = 25.0
        callback([1, 2], outputs(2, 100))  # 2 live items, 200 tokens in 20 s
        assert bar.line("verify") == "verify: 8/10 (80%), 10 tok/s, elapsed 0:20, ETA 0:20"
        bar.advance("verify", 1)  # a skipped item (no tokens) is progress, not throughput
        assert bar.line("verify") == "verify: 9/10 (90%), 10 tok/s, elapsed 0:20, ETA 0:10"


def test_rate_and_eta_are_a_dash_until_known_never_nan():
    clock = Clock()
    bar, buf = live_bar(clock)
    with bar:
        bar.add("generate", 3)
        bar.add("verify", 3)
        assert bar.line("verify") == "verify: 0/3 (0%), — tok/s, elapsed —, ETA —"
        bar._progress.refresh()
        callback = bar.on_batch("generate")
        clock.now = 3.0
        callback([1], outputs(1, 30))
        bar._progress.refresh()
    text = buf.getvalue()
    assert "— tok/s" in text and "ETA —" in text and "10 tok/s" in text
    for garbage in ("nan", "-:--:--", "inf"):
        assert garbage not in text and garbage not in bar.line("verify")
    assert [format_duration(x) for x in (None, float("nan"), float("inf"), -1, 59.6, 3725)] == \
        ["—", "—", "—", "—", "1:00", "1:02:05"]


def test_without_a_terminal_progress_is_logged_inside_a_long_batch(caplog):
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars

    enable_progress_bars()
    caplog.set_level(logging.INFO, logger="spark_hub.progress")
    with StageProgress(live=False, enabled=True, log_every=0.05) as bar:
        assert are_progress_bars_disabled()  # no \r-redrawn library bars in a log file either
        bar.add("verify", 4)
        callback = bar.on_batch("verify")
        time.sleep(0.4)  # one long engine call: no callback for a while
        lines = [r.getMessage() for r in caplog.records if r.name == "spark_hub.progress"]
        assert len(lines) >= 2, lines
        assert all(line.startswith("verify: 0/4 (0%), — tok/s, elapsed ") for line in lines)
        callback([1, 2, 3, 4], outputs(4, 10))
    final = [r.getMessage() for r in caplog.records if r.name == "spark_hub.progress"][-1]
    assert final.startswith("verify: 4/4 (100%), ") and final.endswith(", done")


def test_nothing_is_logged_when_disabled(caplog):
    caplog.set_level(logging.INFO, logger="spark_hub.progress")
    with StageProgress(enabled=False, log_every=0.01) as bar:
        bar.add("verify", 1)
        bar.on_batch("verify")([1], outputs(1, 5))
        time.sleep(0.05)
    assert not [r for r in caplog.records if r.name == "spark_hub.progress"]


def test_library_output_does_not_print_into_the_live_display():
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars

    transformers_logging = pytest.importorskip("transformers.utils.logging")
    enable_progress_bars()
    transformers_logging.enable_progress_bar()
    library = logging.getLogger("transformers")
    real_stderr = io.StringIO()
    own = logging.StreamHandler(real_stderr)
    library.addHandler(own)
    handlers_before = library.handlers[:]
    try:
        bar, buf = live_bar(Clock())
        with bar:
            bar.add("verify", 1)
            assert are_progress_bars_disabled()
            assert not transformers_logging.is_progress_bar_enabled()
            library.warning("loading weights")
        assert "loading weights" in buf.getvalue()  # drawn by rich, above the display
        assert real_stderr.getvalue() == ""  # not written past it
        assert library.handlers == handlers_before  # restored
        assert not are_progress_bars_disabled() and transformers_logging.is_progress_bar_enabled()
    finally:
        library.removeHandler(own)


def test_a_done_total_callback_adds_starts_and_advances_its_stage():
    clock = Clock()
    bar = StageProgress(live=False, enabled=True, clock=clock, log_every=1e9)
    with bar:
        progress = bar.on_count("evaluate")
        clock.now = 10.0
        progress(0, 8)  # the runner reports the total first
        clock.now = 20.0
        progress(3, 8)
        progress(8, 8)
        assert bar.line("evaluate").startswith("evaluate: 8/8 (100%)") and bar.line("evaluate").endswith("done")
