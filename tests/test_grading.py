"""spark_hub.grading: math-verify in worker processes with a time limit, usable from any thread."""

from __future__ import annotations

import concurrent.futures
import signal
import threading
import time

import pytest

from spark_hub import grading
from spark_hub.grading import answers_match, answers_match_many
from spark_hub.stages.balance import BalanceConfig, answer_is_correct, balance_problem


# Module-level so that the spawned workers can import them by name.
def sleepy(pred: str, ref: str) -> bool:
    """A comparison that hangs in Python code (the worker's timer interrupts it)."""
    if pred == "slow":
        time.sleep(60)
    return pred == ref


def stuck(pred: str, ref: str) -> bool:
    """A comparison the timer cannot reach (as if stuck in C code): only killing the worker helps."""
    if pred == "stuck":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(60)
    return pred == ref


def test_equivalent_answers():
    pairs = [("\\frac{1}{2}", "0.5"), ("72", "72"), ("72.0", "72"), ("3", "4"), ("\\boxed{18}", "18"),
             ("(x+1)^2", "x^2+2x+1"), ("$1,000$", "1000"), ("no answer here", "12"), (None, "1"), ("1", None)]
    assert answers_match_many(pairs) == [True, True, True, False, True, True, True, False, None, None]
    assert answers_match("1/3", "\\frac{1}{3}") is True


def test_math_verify_needs_the_main_thread_and_grading_does_not():
    """Why the pool exists: math-verify's SIGALRM timeout fails off the main thread."""
    from math_verify import parse

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        with pytest.raises(ValueError, match="threaded environment"):
            pool.submit(parse, "$1/2$").result()
        assert pool.submit(answers_match, "1/2", "0.5").result() is True
        assert pool.submit(answers_match_many, [("2", "2.0"), ("2", "3")]).result() == [True, False]


def test_ground_truth_balancing_runs_in_a_thread():
    rows = [{"problem_id": "p", "status": "ok", "final_label": None, "final_answer": a, "reference": "\\frac{1}{2}",
             "solution_index": i} for i, a in enumerate(["0.5", "2", "1/2", "7"])]
    config = BalanceConfig(enabled=True, by="ground_truth", per_class=1)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        kept = pool.submit(balance_problem, rows, config, 42).result()
        assert pool.submit(answer_is_correct, "0.50", "1/2").result() is True
    assert len(kept) == 2 and {r["final_answer"] in ("0.5", "1/2") for r in kept} == {True, False}


def test_a_hang_is_cut_by_the_timeout(caplog):
    start = time.monotonic()
    assert answers_match_many([("a", "a "), ("slow", "x"), ("b", "c")], timeout=0.5, check=sleepy) == [True, None, False]
    assert time.monotonic() - start < 10
    assert "timed out" in caplog.text and "restarting" not in caplog.text  # the worker's timer cut it


def test_a_hang_is_cut_from_a_thread(caplog):
    out = {}
    thread = threading.Thread(target=lambda: out.update(r=answers_match_many([("slow", "x"), ("q", "q")],
                                                                             timeout=0.5, check=sleepy)))
    start = time.monotonic()
    thread.start()
    thread.join(30)
    assert not thread.is_alive() and out["r"] == [None, True]
    assert time.monotonic() - start < 10
    assert "restarting" not in caplog.text


def test_a_worker_the_timer_cannot_reach_is_killed_and_replaced(monkeypatch, caplog):
    monkeypatch.setattr(grading, "GRACE", 0.5)
    grading.answers_match("1", "1.0")  # pool started before the clock runs
    start = time.monotonic()
    result = answers_match_many([("a", "b"), ("stuck", "x"), ("c", "c2"), ("d", "d")], timeout=0.5, check=stuck)
    elapsed = time.monotonic() - start
    assert result == [False, None, False, True]
    assert elapsed < 30  # without the kill this would wait for the 60 s sleep
    assert "restarting its worker" in caplog.text
    assert answers_match("2", "2") is True and answers_match("1/4", "0.25") is True  # a fresh pool works


def test_concurrent_callers_share_the_pool():
    pairs = [(str(i), f"{i}.0") for i in range(20)]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: answers_match_many(pairs), range(4)))
    assert results == [[True] * 20] * 4


def test_workers_end_with_a_parent_killed_by_sigkill():
    """An orphaned grader would hold the parent's stdout open: whoever reads it (a shell, a test) hangs."""
    import os
    import subprocess
    import sys

    code = ("from spark_hub import grading; print(grading.answers_match('1/2', '0.5'), flush=True); "
            "import time; time.sleep(120)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert parent.stdout.readline().strip() == b"True"  # the pool is up and graded in a worker
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        reader = threading.Thread(target=parent.stdout.read, daemon=True)
        reader.start()
        reader.join(30)  # EOF only once every worker holding the pipe has gone
        assert not reader.is_alive(), "grading workers outlived their SIGKILLed parent"
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)  # never leave workers behind, whatever happened
        except ProcessLookupError:
            pass
