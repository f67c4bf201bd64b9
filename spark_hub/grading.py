"""Answer grading: is a predicted final answer equivalent to the reference? One grader for balancing,
the pilot, and (next) rewards and evaluation.

math-verify does the comparison (LaTeX, fractions, sets, intervals, units). Its own time limit uses
``SIGALRM``, which only works on the main thread of the main interpreter, and a pathological
expression can make sympy run for minutes. So every comparison runs in a small pool of worker
processes (started with ``spawn``, shared by the whole process):

- inside a worker, an interval timer interrupts a comparison after ``timeout`` seconds (the worker's
  main thread owns the signal, so this works whatever thread called us);
- the caller waits ``timeout + GRACE`` seconds at most per answer; a worker stuck where the timer
  cannot reach it (inside C code) is killed and the pool is replaced.

A comparison that times out or fails is ``None`` ("cannot tell"), never an exception: callers
treat None like a missing reference. `answers_match` and `answers_match_many` are safe to call
from any thread, including async reward functions running on a background event loop.

>>> answers_match("\\\\frac{1}{2}", "0.5")
True
>>> answers_match_many([("72", "72"), ("3", "4"), (None, "1")])
[True, False, None]
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Sequence

logger = logging.getLogger(__name__)

#: Seconds one comparison may take (math-verify's own default is 5).
DEFAULT_TIMEOUT = 5.0
#: Extra seconds the caller waits beyond ``timeout`` before it kills a stuck worker.
GRACE = 5.0
#: Seconds a fresh pool may take to start (spawn + importing sympy on a busy machine).
STARTUP_TIMEOUT = 180.0

Checker = Callable[[str, str], "bool | None"]


# ------------------------------------------------------------------------------------------------
# Worker side
# ------------------------------------------------------------------------------------------------
class _Deadline(BaseException):
    """Raised by the interval timer inside a worker. A BaseException, so that math-verify's
    ``except Exception`` handlers cannot swallow it."""


def _on_alarm(signum, frame):  # pragma: no cover - runs in a worker
    raise _Deadline()


def _die_with_parent(parent: int) -> None:  # pragma: no cover - runs in a worker
    """End this worker soon after its parent dies, even by SIGKILL: an orphaned grader would keep the
    parent's output pipes open, and a shell or test waiting on them would hang. (A watcher thread,
    not prctl's parent-death signal, which fires when the creating THREAD ends.)"""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="grading-parent-watch", daemon=True).start()


def _init_worker(parent: int | None = None) -> None:  # pragma: no cover - runs in a worker
    if parent is not None:
        _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGALRM, _on_alarm)
    try:
        import math_verify.grader
        import math_verify.parser

        # we pass timeout=None to math-verify (our timer covers parse and verify together); silence
        # its one-time "timeout is disabled" warning, which is about exactly that
        math_verify.parser.TIMEOUT_WARNING_SHOWN = True
        math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    except ImportError:
        pass


def _ready() -> int:  # pragma: no cover - runs in a worker
    return os.getpid()


def math_verify_match(pred: str, ref: str) -> bool | None:
    """math-verify equivalence of ``pred`` and ``ref``, without any time limit of its own.

    Each side is parsed as written, then wrapped in ``$...$`` when nothing was found; when either
    side still cannot be parsed, the stripped strings are compared. Call it through
    `answers_match`, which adds the time limit; calling it directly can hang.
    """
    from math_verify import parse, verify

    gold = parse(ref, parsing_timeout=None) or parse(f"${ref}$", parsing_timeout=None)
    answer = parse(pred, parsing_timeout=None) or parse(f"${pred}$", parsing_timeout=None)
    if not gold or not answer:
        return pred.strip() == ref.strip()
    return bool(verify(gold, answer, timeout_seconds=None))


def _grade(check: Checker, pred: str, ref: str, timeout: float) -> tuple[bool | None, str]:  # pragma: no cover - worker
    """``(result, status)`` with status ``ok``, ``timeout`` or ``error: ...``."""
    signal.signal(signal.SIGALRM, _on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, max(timeout, 1e-3))
        try:
            value = check(pred, ref)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        return (None if value is None else bool(value)), "ok"
    except _Deadline:
        return None, "timeout"
    except Exception as error:  # a grader bug must not stop a build: count it as "cannot tell"
        return None, f"error: {type(error).__name__}: {error}"


# ------------------------------------------------------------------------------------------------
# Caller side
# ------------------------------------------------------------------------------------------------
_pool: concurrent.futures.ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _workers() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def _get_pool() -> concurrent.futures.ProcessPoolExecutor:
    """The shared worker pool, started (and warmed up) on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=_workers(), mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                initargs=(os.getpid(),),
            )
            # start every worker now, so that the per-answer wait never includes interpreter start-up
            try:
                for future in [pool.submit(_ready) for _ in range(_workers())]:
                    future.result(timeout=STARTUP_TIMEOUT)
            except BaseException:
                _kill(pool)
                raise
            _pool = pool
        return _pool


def _kill(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
        return
    # ProcessPoolExecutor cannot cancel a running call before 3.14: kill its processes directly
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            process.kill()
        except Exception:  # already gone
            pass
    pool.shutdown(wait=False, cancel_futures=True)


def _discard(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Kill ``pool`` and forget it (unless another thread replaced it already)."""
    global _pool
    with _pool_lock:
        if _pool is pool:
            _pool = None
    _kill(pool)


def shutdown() -> None:
    """Stop the worker pool (it restarts on the next call)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def answers_match_many(
    pairs: Sequence[tuple[str | None, str | None]],
    timeout: float = DEFAULT_TIMEOUT,
    *,
    check: Checker | None = None,
) -> list[bool | None]:
    """Grade ``(prediction, reference)`` pairs; see `answers_match`.

    Args:
        pairs: predictions and references; a None on either side gives None.
        timeout: seconds each comparison may take; a slower one gives None.
        check: the comparison, a picklable module-level function ``(pred, ref) -> bool | None``
            (default: `math_verify_match`).

    Returns:
        One ``True`` / ``False`` / ``None`` (cannot tell: missing, timed out or failed) per pair.
    """
    check = check or math_verify_match
    results: list[bool | None] = [None] * len(pairs)
    pending: list[int] = []
    for i, (pred, ref) in enumerate(pairs):
        if pred is None or ref is None:
            continue
        if pred.strip() and pred.strip() == ref.strip():
            results[i] = True  # identical text needs no parser
        else:
            pending.append(i)
    problems = {"timeout": 0, "error": 0}
    broken: dict[int, int] = {}
    while pending:
        pool = _get_pool()
        try:
            futures = [pool.submit(_grade, check, pairs[i][0], pairs[i][1], timeout) for i in pending]
        except (BrokenProcessPool, RuntimeError):  # another thread killed this pool: take a fresh one
            _discard(pool)
            continue
        retry: list[int] = []
        for n, (i, future) in enumerate(zip(pending, futures)):
            # Workers take calls in order, so when every earlier call has returned this one is
            # running (or done): waiting timeout + GRACE from here bounds its run time.
            try:
                value, status = future.result(timeout=timeout + GRACE)
            except concurrent.futures.TimeoutError:
                logger.warning("math-verify did not return within %.1fs + %.1fs; restarting its worker",
                               timeout, GRACE)
                _discard(pool)
                problems["timeout"] += 1
                retry = _collect(pending[n + 1:], futures[n + 1:], results, problems)
                break
            except BrokenProcessPool:  # a worker died: killed by another thread, or crashed on this input
                _discard(pool)
                broken[i] = broken.get(i, 0) + 1
                retry = _collect(pending[n + 1:], futures[n + 1:], results, problems)
                if broken[i] < 2:
                    retry.insert(0, i)
                else:
                    problems["error"] += 1
                break
            results[i] = _record(value, status, problems)
        pending = retry
    if problems["timeout"] or problems["error"]:
        logger.warning("grading: %d of %d comparison(s) timed out (limit %.1fs) and %d failed; "
                       "they count as 'cannot tell'", problems["timeout"], len(pairs), timeout, problems["error"])
    return results


def _record(value: bool | None, status: str, problems: dict[str, int]) -> bool | None:
    if status == "timeout":
        problems["timeout"] += 1
    elif status != "ok":
        problems["error"] += 1
        logger.debug("grading failed: %s", status)
    return value


def _collect(indices, futures, results, problems) -> list[int]:
    """Keep the results that came back before a pool was discarded; return the rest to retry."""
    retry = []
    for i, future in zip(indices, futures):
        if future.done() and not future.cancelled() and future.exception() is None:
            value, status = future.result()
            results[i] = _record(value, status, problems)
        else:
            retry.append(i)
    return retry


def answers_match(pred: str | None, ref: str | None, timeout: float = DEFAULT_TIMEOUT) -> bool | None:
    """Whether answer ``pred`` is mathematically equivalent to reference ``ref`` (math-verify).

    Runs in a worker process with a time limit, so it is safe from any thread and never hangs.

    Args:
        pred: the predicted final answer (None: no answer).
        ref: the reference answer (None: no reference).
        timeout: seconds the comparison may take.

    Returns:
        True or False; None when either side is missing or the comparison timed out or failed.
    """
    return answers_match_many([(pred, ref)], timeout)[0]


__all__ = ["DEFAULT_TIMEOUT", "answers_match", "answers_match_many", "math_verify_match", "shutdown"]
