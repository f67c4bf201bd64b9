"""Reward-layer throughput: PRM calls per rollout batch, completions scored per second, overhead.

One run, two PRMs behind the same `spark_hub.rewards.PRMReward`:

- scripted: a SPARK generative PRM spec served by the scripted backend (canned verifier text; no
  model time, so it shows the reward layer's own cost per completion);
- embedded: the same spec on the embedded SmolLM2-135M through transformers (a real model call;
  skipped with ``--no-embedded``).

A rollout batch is ``--prompts`` prompts x ``--group`` completions (a GRPO generation batch); a share
of them breaks the format (appended solution, text after ``</answer>``) and is never sent to the PRM.
Reported per PRM: ``prm.score_batch`` calls per reward call (must be 1), completions scored per
second through the reward, and the reward layer's overhead: time inside the reward call but outside
the PRM call, relative to the PRM call in the same reward call (target < 5%). For the scripted PRM
also the bare ``score_batch`` on the same items, timed on its own.

Measured here (2 shared cores, load ~7.7): scripted 256 completions in one PRM call, ~4-6k completions/s,
reward layer ~80 us/completion; embedded PRM-CoT, 8 completions x 24 tokens: 1 PRM call, ~110 s, reward
layer 0.5 ms (0.0005% of the PRM call).

    python bench/reward_throughput.py [--prompts 16] [--group 16] [--steps 6] [--repeats 5]
                                      [--embedded-completions 8] [--max-tokens 24] [--no-embedded]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

from spark_hub.prm import generative_spec, load_prm, write_spec
from spark_hub.rewards import PRMReward, parse_policy_output


def rollout_batch(prompts: int, group: int, steps: int) -> tuple[list[str], list[str]]:
    """``(problems, completions)``: every 8th completion appends a solution, every 8th+1 has text after </answer>."""
    problems, completions = [], []
    for p in range(prompts):
        problem = f"Problem {p}: a shop sells {p + 3} apples a day for {steps} days. How many apples?"
        for g in range(group):
            body = "\n".join(f"<step>Day {j + 1}: {p + 3} more apples, {(p + 3) * (j + 1)} so far.</step>"
                             for j in range(steps))
            text = f"{body}\n<answer>The answer is \\boxed{{{(p + 3) * steps + (g % 3 == 0)}}}.</answer>"
            if g % 8 == 0:
                text += "\n\nProblem 2: what is 1 + 1?\n<step>1 + 1 = 2</step>\n<answer>\\boxed{2}</answer>"
            elif g % 8 == 1:
                text += " Hope this helps!"
            problems.append(problem)
            completions.append(text)
    return problems, completions


def scripted_prm(folder: Path, steps: int):
    verdicts = "\n".join(f"## Step {j + 1}: the count is right. **This step is correct.**" for j in range(steps))
    script = folder / "prm.jsonl"
    script.write_text(json.dumps({"completions": [verdicts + "\nVerification: Is the answer correct (Yes/No)? Yes"]}) + "\n")
    write_spec(folder, generative_spec("prm_cot"))
    return load_prm(folder, backend="scripted", model=str(script))


def measure(prm, problems, completions, repeats: int) -> dict[str, float]:
    """Time reward calls, splitting each into PRM time and reward-layer time."""
    backend = prm.backend
    inner = prm.score_batch
    spent = {"prm": 0.0, "calls": 0}

    def timed(items):
        start = time.perf_counter()
        try:
            return inner(items)
        finally:
            spent["prm"] += time.perf_counter() - start
            spent["calls"] += 1

    prm.score_batch = timed
    reward = PRMReward(prm, "step_augmented")
    totals, prm_times, calls_per_batch, backend_calls = [], [], [], []
    for _ in range(repeats):
        spent.update(prm=0.0, calls=0)
        before = getattr(backend, "calls", None)
        start = time.perf_counter()
        rewards = reward(None, completions, problem=problems)
        totals.append(time.perf_counter() - start)
        prm_times.append(spent["prm"])
        calls_per_batch.append(spent["calls"])
        backend_calls.append(None if before is None else backend.calls - before)
    prm.score_batch = inner
    total, in_prm = statistics.median(totals), statistics.median(prm_times)
    return {
        "completions": len(completions),
        "sent_to_prm": sum(d["valid_format"] for d in reward.last_details),
        "prm_calls_per_batch": max(calls_per_batch),
        "backend_calls_per_batch": None if None in backend_calls else max(backend_calls),
        "reward_seconds": total,
        "prm_seconds": in_prm,
        "completions_per_second": len(completions) / total,
        "overhead_seconds": total - in_prm,
        "overhead_pct": 100.0 * (total - in_prm) / in_prm if in_prm > 0 else float("inf"),
        "overhead_us_per_completion": 1e6 * (total - in_prm) / len(completions),
        "mean_reward": sum(r or 0.0 for r in rewards) / len(rewards),
    }


def bare(prm, problems, completions, repeats: int) -> float:
    parsed = [parse_policy_output(c) for c in completions]
    items = [(q, p.steps, p.answer) for q, p in zip(problems, parsed) if p.format.valid]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        prm.score_batch(items)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(name: str, m: dict[str, float], bare_seconds: float | None = None) -> None:
    print(f"[{name}] {m['completions']} completions ({m['sent_to_prm']} format-valid sent to the PRM)")
    engine = m["backend_calls_per_batch"]
    print(f"  PRM calls per rollout batch : {m['prm_calls_per_batch']}"
          + (f" (backend generate calls: {engine})" if engine is not None else ""))
    print(f"  completions scored / s      : {m['completions_per_second']:.1f} (reward call {m['reward_seconds'] * 1e3:.1f} ms,"
          f" PRM inside it {m['prm_seconds'] * 1e3:.1f} ms)")
    print(f"  reward-layer overhead       : {m['overhead_seconds'] * 1e3:.2f} ms = {m['overhead_us_per_completion']:.0f} us"
          f"/completion = {m['overhead_pct']:.1f}% of the PRM call")
    if bare_seconds is not None:
        print(f"  bare score_batch (same items): {bare_seconds * 1e3:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--group", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--embedded-completions", type=int, default=8, help="rollout batch size for the embedded PRM")
    parser.add_argument("--max-tokens", type=int, default=24, help="PRM tokens per completion (embedded)")
    parser.add_argument("--no-embedded", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    problems, completions = rollout_batch(args.prompts, args.group, args.steps)
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        prm = scripted_prm(Path(tmp), args.steps)
        m = measure(prm, problems, completions, args.repeats)
        report("scripted PRM", m, bare(prm, problems, completions, args.repeats))
        if m["prm_calls_per_batch"] != 1 or m["backend_calls_per_batch"] != 1:
            failures.append("scripted: more than one PRM call per rollout batch")

    if not args.no_embedded:
        from spark_hub.backends.base import BackendConfig
        from spark_hub.backends.models import resolve_model

        folder = resolve_model(BackendConfig(model="embedded")).load_path()  # converts the GGUF once
        spec = generative_spec("prm_cot", generation={"max_tokens": args.max_tokens})
        prm = load_prm(folder, spec=spec, batch_size=args.embedded_completions)
        prm.backend.load()
        n = args.embedded_completions
        m = measure(prm, problems[:n], completions[:n], 1)
        report(f"embedded PRM (SmolLM2-135M, {args.max_tokens} tokens)", m)
        if m["prm_calls_per_batch"] != 1:
            failures.append("embedded: more than one PRM call per rollout batch")
        if m["overhead_pct"] >= 5.0:
            failures.append(f"embedded: reward-layer overhead {m['overhead_pct']:.1f}% >= 5%")
    if failures:
        raise SystemExit("; ".join(failures))


if __name__ == "__main__":
    main()
