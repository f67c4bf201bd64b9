"""Live progress display: done/total, tokens/s and ETA per stage.

On a terminal this is a rich progress bar; otherwise (CI logs, Slurm, pipes) the same figures are
logged at INFO level every ``log_every`` seconds, so long jobs always show progress.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

logger = logging.getLogger("spark_hub.progress")


class TokensPerSecondColumn(ProgressColumn):
    """Completion tokens per second since the task started (from the task's ``tokens`` field)."""

    def render(self, task) -> Text:
        tokens = task.fields.get("tokens", 0)
        started = task.fields.get("started_at")
        if not tokens or not started:
            return Text("- tok/s", style="progress.data.speed")
        rate = tokens / max(time.monotonic() - started, 1e-6)
        return Text(f"{rate:,.0f} tok/s", style="progress.data.speed")


def console() -> Console:
    return Console(stderr=True)


@dataclass
class _Task:
    name: str
    total: int
    done: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    last_log: float = 0.0


class StageProgress:
    """Progress of the pipeline stages; use as a context manager."""

    def __init__(self, enabled: bool = True, log_every: float = 15.0):
        self.enabled = enabled and os.environ.get("SPARK_HUB_NO_PROGRESS") != "1"
        self.live = self.enabled and sys.stderr.isatty()
        self.log_every = log_every
        self._tasks: dict[str, _Task] = {}
        self._ids: dict[str, int] = {}
        self._progress = None
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]{task.description:<9}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TokensPerSecondColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console(),
            )

    def __enter__(self) -> "StageProgress":
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
        for task in self._tasks.values():
            if self.enabled and not self.live:
                self._log(task)

    def add(self, name: str, total: int) -> None:
        """Start (or re-total) the task ``name``."""
        if name in self._tasks:
            self._tasks[name].total = total
            if self._progress is not None:
                self._progress.update(self._ids[name], total=total)
            return
        self._tasks[name] = _Task(name, total)
        if self._progress is not None:
            self._ids[name] = self._progress.add_task(name, total=total, tokens=0, started_at=time.monotonic())

    def advance(self, name: str, done: int, tokens: int = 0) -> None:
        task = self._tasks[name]
        task.done += done
        task.tokens += tokens
        if self._progress is not None:
            self._progress.update(self._ids[name], advance=done, tokens=task.tokens)
        elif self.enabled and time.monotonic() - task.last_log >= self.log_every:
            self._log(task)

    def on_batch(self, name: str):
        """A `CachedBackend.generate` ``on_batch`` callback advancing ``name`` by requests and tokens."""
        return lambda requests, outputs: self.advance(
            name, len(requests), sum(c.completion_tokens for out in outputs for c in out)
        )

    def _log(self, task: _Task) -> None:
        task.last_log = time.monotonic()
        elapsed = max(task.last_log - task.started, 1e-6)
        rate = task.tokens / elapsed
        eta = (task.total - task.done) * elapsed / task.done if task.done else float("nan")
        logger.info(
            "%s: %d/%d (%.0f%%), %.0f tok/s, elapsed %.0fs, ETA %.0fs",
            task.name, task.done, task.total, 100 * task.done / max(task.total, 1), rate, elapsed, eta,
        )
