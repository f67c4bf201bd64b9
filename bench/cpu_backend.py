"""Aggregate tokens/s of the transformers backend on the demo workload (embedded SmolLM2-135M).

Two cases, as `build-dataset` runs them on CPU:
  1. generator: ``--gen-requests`` GSM8K problems (default 1) with the generator prompt, n samples each;
  2. verifier: ``--verify-requests`` (default 8) verifier prompts over GSM8K reference solutions, n
     verifications each, all in one batch of ``--batch-size`` prompts (one ``model.generate`` call).
Prints completion tokens/s per case and its ratio to the 60 tok/s target.

    python bench/cpu_backend.py [--n 4] [--max-tokens 256] [--verify-requests 8] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import time
from pathlib import Path

from spark_hub.backends.base import BackendConfig, GenerationRequest
from spark_hub.prompts import generator_messages, verifier_messages

ROOT = Path(__file__).resolve().parent.parent
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
TARGET_TOKENS_PER_SECOND = 60.0


def load_problems(count: int) -> list[dict]:
    rows = []
    with open(GSM8K) as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) == count:
                break
    return rows


def reference_steps(solution: str) -> tuple[list[str], str]:
    """GSM8K reference solution -> (steps without <<calc>> annotations, final answer)."""
    body, _, answer = solution.partition("####")
    steps = [re.sub(r"<<[^>]*>>", "", line).strip() for line in body.strip().splitlines() if line.strip()]
    return steps, answer.strip()


def run_case(backend, name: str, requests: list[GenerationRequest]) -> float | None:
    if not requests:
        return None
    tokens_before, seconds_before = backend.stats.generated_tokens, backend.stats.seconds
    start = time.perf_counter()
    results = backend.generate(requests)
    wall = time.perf_counter() - start
    tokens = backend.stats.generated_tokens - tokens_before
    engine = backend.stats.seconds - seconds_before
    reasons = [c.finish_reason for completions in results for c in completions]
    rate = tokens / wall
    print(
        f"{name:<38} {tokens:6d} tokens in {wall:6.1f} s (engine {engine:5.1f} s) = {rate:6.1f} tok/s  "
        f"ratio vs {TARGET_TOKENS_PER_SECOND:.0f} tok/s target: {rate / TARGET_TOKENS_PER_SECOND:.2f}  "
        f"[stop {reasons.count('stop')}, length {reasons.count('length')}]",
        flush=True,
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--gen-requests", type=int, default=1, help="generator prompts (GSM8K problems)")
    parser.add_argument("--verify-requests", type=int, default=8, help="verifier prompts")
    parser.add_argument("--n", type=int, default=4, help="samples per request")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per model.generate call")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="auto", help="auto (float32 on CPU), bfloat16, ...")
    parser.add_argument("--no-share-prefill", action="store_true", help="plain left-padded generate")
    parser.add_argument(
        "--omp-wait-policy", default="PASSIVE",
        help="OMP_WAIT_POLICY for torch's OpenMP threads (set before torch is imported). PASSIVE keeps "
        "throughput when other processes share the cores; ACTIVE (spin-waiting) can be 20x slower then.",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.omp_wait_policy:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    import torch  # after OMP_WAIT_POLICY is set

    from spark_hub.backends.transformers_ import TransformersBackend

    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    extra = {"share_prefill": not args.no_share_prefill}
    config = BackendConfig(model=args.model, batch_size=args.batch_size, dtype=args.dtype, extra=extra)
    backend = TransformersBackend(config)
    print(f"model {args.model}: ready in {time.perf_counter() - start:.1f} s (includes the one-time GGUF "
          f"conversion on a fresh cache); dtype {backend.dtype}, torch threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    sampling = dict(n=args.n, temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed)

    problems = load_problems(max(args.gen_requests, args.verify_requests))
    generator = [
        GenerationRequest.from_chat(generator_messages(p["problem"]), **sampling) for p in problems[: args.gen_requests]
    ]
    verifier = []
    for p in problems[: args.verify_requests]:
        steps, answer = reference_steps(p["solution"])
        verifier.append(GenerationRequest.from_chat(verifier_messages(p["problem"], steps, answer), **sampling))
    print(f"prompt tokens: generator {[backend.count_tokens(r) for r in generator]}, "
          f"verifier {[backend.count_tokens(r) for r in verifier]}", flush=True)

    run_case(backend, f"generator: {len(generator)} request(s) x n={args.n}", generator)
    run_case(backend, f"verifier: {len(verifier)} requests x n={args.n}, bs={args.batch_size}", verifier)


if __name__ == "__main__":
    main()
