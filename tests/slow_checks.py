"""Answer checkers for grading tests, in a module that imports nothing heavy: spawned grading
workers import it to unpickle the checker, and that import counts against the caller's wait."""

from __future__ import annotations

import time


def sleepy_or_magic(pred: str, ref: str) -> bool:
    """Hangs on "slow" (as math-verify can on a pathological expression); "magic" equals anything."""
    if pred == "slow":
        time.sleep(60)
    return pred == ref or pred == "magic"
