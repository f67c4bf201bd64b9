"""Live progress display: done/total, tokens/s, elapsed and ETA per stage.

On a terminal this is a rich progress display; otherwise (CI logs, Slurm, pipes) the same figures
are logged at INFO level every ``log_every`` seconds by a timer thread, so a long batch inside one
engine call still shows that the job is alive.

What the figures mean:

- A stage's clock starts when its work starts (the first `StageProgress.on_batch` callback is made
  for it, or its first `advance`), not when the build starts; it stops when the stage is done, so a
  finished stage's elapsed time and tok/s stay frozen.
- tok/s and ETA count only work the model did in this run: results answered from the cache on a
  resume (``cached=True``) and skipped items (no tokens) advance the bar but not the throughput.
  tok/s is tokens over the time spent in the stage's own engine calls.
- Until a rate is known, tok/s and ETA show "—" (never ``nan`` or ``-:--:--``).

While progress is shown (display or log lines), the progress bars of transformers / huggingface_hub /
datasets are switched off; while the live display runs, their log records are drawn through rich
above it (both restored on exit).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TaskProgressColumn, TextColumn
from rich.text import Text

logger = logging.getLogger("spark_hub.progress")

UNKNOWN = "—"
#: Third-party loggers drawn through rich while the live display runs.
LIBRARY_LOGGERS = ("transformers", "huggingface_hub", "datasets", "accelerate", "vllm", "torch")

_console: Console | None = None


def console() -> Console:
    """The one stderr console shared by the progress display and the log handler."""
    global _console
    if _console is None:
        _console = Console(stderr=True)
    return _console


def format_duration(seconds: float | None) -> str:
    """``1:02:03`` / ``2:05``; "—" when unknown (None, negative, nan or inf)."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return UNKNOWN
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class _Task:
    """The figures of one stage; times come from the `StageProgress` clock."""

    name: str
    total: int
    done: int = 0
    tokens: int = 0
    live_done: int = 0
    live_tokens: int = 0
    live_seconds: float = 0.0
    """Time spent in this run's engine calls for this stage (from activation to each live batch)."""
    started_at: float | None = None
    finished_at: float | None = None
    mark: float | None = None
    """When the current engine call of this stage began (activation, or the previous callback)."""
    last_log: float = 0.0

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    def elapsed(self, now: float) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at if self.finished_at is not None else now) - self.started_at

    def rate(self) -> float | None:
        """Tokens per second of this run's model work (frozen once finished); None until known."""
        if not self.live_tokens or self.live_seconds <= 0:
            return None
        return self.live_tokens / self.live_seconds

    def eta(self) -> float | None:
        """Seconds of model work left at this run's pace; 0 when finished; None until known."""
        if self.finished:
            return 0.0
        if not self.live_done or self.live_seconds <= 0:
            return None
        return max(self.total - self.done, 0) * self.live_seconds / self.live_done


class _TaskColumn(ProgressColumn):
    def __init__(self, render: Callable[[_Task], str], style: str):
        super().__init__()
        self._render, self._style = render, style

    def render(self, task) -> Text:
        info: _Task | None = task.fields.get("info")
        return Text(self._render(info) if info is not None else UNKNOWN, style=self._style)


class StageProgress:
    """Progress of the pipeline stages; use as a context manager.

    Args:
        enabled: False: no display and no progress log lines.
        log_every: seconds between progress log lines when not on a terminal.
        live: draw the rich display (default: when stderr is a terminal).
        clock: a monotonic clock (tests pass a fake one).
        out: the console to draw on (default: the shared stderr `console`).
    """

    def __init__(self, enabled: bool = True, log_every: float = 15.0, *, live: bool | None = None,
                 clock: Callable[[], float] = time.monotonic, out: Console | None = None):
        self.enabled = enabled and os.environ.get("SPARK_HUB_NO_PROGRESS") != "1"
        self.live = self.enabled and (sys.stderr.isatty() if live is None else live)
        self.log_every = log_every
        self.clock = clock
        self._tasks: dict[str, _Task] = {}
        self._ids: dict[str, int] = {}
        self._active: _Task | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._restore: list[Callable[[], None]] = []
        self._progress = None
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.description:<9}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                _TaskColumn(lambda t: f"{t.rate():,.0f} tok/s" if t.rate() is not None else f"{UNKNOWN} tok/s",
                            "progress.data.speed"),
                _TaskColumn(lambda t: format_duration(t.elapsed(self.clock())), "progress.elapsed"),
                TextColumn("ETA"),
                _TaskColumn(lambda t: format_duration(t.eta()), "progress.remaining"),
                console=out or console(),
            )

    # -- context ------------------------------------------------------------------------------

    def __enter__(self) -> "StageProgress":
        if self.enabled:  # our figures replace the libraries' bars (which would garble a log file too)
            self._restore.append(_quiet_library_progress_bars())
        if self._progress is not None:
            self._restore.append(_route_library_logs(self._progress.console))
            self._progress.start()
        elif self.enabled:
            self._timer = threading.Thread(target=self._tick, name="spark-hub-progress", daemon=True)
            self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join(timeout=5)
        if self._progress is not None:
            self._progress.stop()
        for restore in reversed(self._restore):
            restore()
        self._restore = []
        if self.enabled and not self.live:
            for task in self._tasks.values():
                if task.started_at is not None and not (task.finished and task.last_log >= task.finished_at):
                    self._log(task)

    def _tick(self) -> None:
        """Timer thread (no terminal): log every started, unfinished stage every ``log_every`` s."""
        while not self._stop.wait(self.log_every):
            with self._lock:
                due = [t for t in self._tasks.values() if t.started_at is not None and not t.finished
                       and self.clock() - t.last_log >= self.log_every * 0.9]
            for task in due:
                self._log(task)

    # -- stages -------------------------------------------------------------------------------

    def add(self, name: str, total: int) -> None:
        """Declare (or re-total) the stage ``name``; its clock starts with its first work."""
        with self._lock:
            task = self._tasks.get(name)
            if task is not None:
                task.total = total
                if task.finished and task.done < total:
                    task.finished_at = None  # more work arrived: running again
                    if self._progress is not None:
                        self._progress.start_task(self._ids[name])
                if self._progress is not None:
                    self._progress.update(self._ids[name], total=total)
                return
            task = self._tasks[name] = _Task(name, total)
            if self._progress is not None:
                self._ids[name] = self._progress.add_task(name, total=total, start=False, info=task)

    def start(self, name: str) -> None:
        """Stage ``name`` begins an engine call now (starts its clock on first use)."""
        with self._lock:
            task = self._tasks[name]
            now = self.clock()
            if self._active is not None and self._active is not task:
                self._active.mark = None
            self._active = task
            task.mark = now
            if task.started_at is None:
                task.started_at = now
                if self._progress is not None:
                    self._progress.start_task(self._ids[name])

    def advance(self, name: str, done: int, tokens: int = 0, *, cached: bool = False) -> None:
        """``done`` more items of stage ``name`` finished, with ``tokens`` completion tokens.

        ``cached=True`` (answered from the call cache) and token-less advances (skipped items) move
        the bar but not the throughput.
        """
        log_now = False
        with self._lock:
            task = self._tasks[name]
            now = self.clock()
            if task.started_at is None:
                task.started_at = now
                if self._progress is not None:
                    self._progress.start_task(self._ids[name])
            task.done += done
            task.tokens += tokens
            if not cached and tokens > 0:
                task.live_done += done
                task.live_tokens += tokens
                task.live_seconds += now - (task.mark if task.mark is not None else task.started_at)
            if task.mark is not None or self._active is task:
                task.mark = now  # the next engine call of this stage starts now
            if task.done >= task.total and not task.finished:
                task.finished_at = now
                task.mark = None
                if self._progress is not None:
                    self._progress.stop_task(self._ids[name])
            if self._progress is not None:
                self._progress.update(self._ids[name], completed=task.done)
            elif self.enabled and (task.finished or now - task.last_log >= self.log_every):
                log_now = True
        if log_now:
            self._log(task)

    def on_batch(self, name: str):
        """A `CachedBackend.generate` ``on_batch`` callback advancing ``name`` by requests and tokens.

        Creating it marks the start of the stage's engine call (its clock starts here). The callback
        takes ``cached=True`` for results answered from the cache.
        """
        self.start(name)

        def callback(requests, outputs, cached: bool = False) -> None:
            self.advance(name, len(requests), sum(c.completion_tokens for out in outputs for c in out), cached=cached)

        return callback

    def on_count(self, name: str):
        """A ``progress(done, total)`` callback (as the evaluation runners call it) for stage ``name``:
        the stage is added and started on the first call, then advanced to ``done``."""
        seen = {"done": None}

        def callback(done: int, total: int) -> None:
            if seen["done"] is None:
                self.add(name, total)
                self.start(name)
                seen["done"] = 0
            self.advance(name, done - seen["done"])
            seen["done"] = done

        return callback

    # -- text ---------------------------------------------------------------------------------

    def line(self, name: str) -> str:
        """One stage as text: ``verify: 120/400 (30%), 1,234 tok/s, elapsed 0:45, ETA 1:50``."""
        task = self._tasks[name]
        rate = task.rate()
        state = "done" if task.finished else f"ETA {format_duration(task.eta())}"
        return (f"{task.name}: {task.done}/{task.total} ({100 * task.done / max(task.total, 1):.0f}%), "
                f"{f'{rate:,.0f}' if rate is not None else UNKNOWN} tok/s, "
                f"elapsed {format_duration(task.elapsed(self.clock()))}, {state}")

    def _log(self, task: _Task) -> None:
        task.last_log = self.clock()
        logger.info("%s", self.line(task.name))


def _quiet_library_progress_bars() -> Callable[[], None]:
    """Switch off the tqdm bars of huggingface_hub, transformers and datasets; returns the undo."""
    undo: list[Callable[[], None]] = []
    try:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

        if not are_progress_bars_disabled():
            disable_progress_bars()  # transformers imported later inherits this
            undo.append(enable_progress_bars)
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        pass
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        if hf_logging.is_progress_bar_enabled():
            hf_logging.disable_progress_bar()
            undo.append(hf_logging.enable_progress_bar)
    if "datasets" in sys.modules:
        import datasets

        if datasets.is_progress_bar_enabled():
            datasets.disable_progress_bars()
            undo.append(datasets.enable_progress_bars)

    def restore() -> None:
        for fn in undo:
            fn()

    return restore


def _route_library_logs(out: Console) -> Callable[[], None]:
    """Draw the records of `LIBRARY_LOGGERS` through rich on ``out`` (above the live display)."""
    from rich.logging import RichHandler

    handler = RichHandler(console=out, show_path=False, show_time=False)
    saved = []
    for name in LIBRARY_LOGGERS:
        lib = logging.getLogger(name)
        if not lib.handlers:
            continue  # propagates to the root logger, or configures itself later on rich's redirected stderr
        saved.append((lib, lib.handlers[:], lib.propagate))
        lib.handlers = [handler]
        lib.propagate = False

    def restore() -> None:
        for lib, handlers, propagate in saved:
            lib.handlers = handlers
            lib.propagate = propagate

    return restore
