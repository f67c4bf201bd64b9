"""Tokens/s of format-constrained vs unconstrained verification on the demo workload, in one run.

The workload is the demo's verifier call (embedded SmolLM2-135M, transformers backend): verifier
prompts over GSM8K reference solutions, ``--n`` verifications each, all in one batch. Cases run in
alternation (``--rounds`` times) so that load from other processes hits them alike:

  free         unconstrained sampling (what the demo did before `verifier.constrained`)
  constrained  spark-hub's token-level state machine (`spark_hub.constrained`)
  xgrammar     xgrammar's HF logits processor on the same format as a regex (only when xgrammar
               imports; it is NOT a spark-hub dependency: install it anywhere on PYTHONPATH)

For each case: completion tokens/s (tokens up to and including EOS, over wall-clock seconds of
``generate``), the share of that time spent in the logits processor (load-independent overhead
measure), decoding steps/s (rows x the longest completion of the batch, over the same seconds:
``generate`` keeps finished rows in the batch until the last one ends, so this is the engine's cost
per step with the processor included, whatever the lengths), the share of outputs that parse with
status ok, and finish reasons. The summary prints the constrained / free ratios of the medians of
both (target >= 0.85 for tok/s).

    python bench/constrained.py [--requests 4] [--n 4] [--max-tokens 160] [--rounds 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_backend import load_problems, reference_steps  # noqa: E402

from spark_hub.backends.base import BackendConfig, GenerationRequest  # noqa: E402
from spark_hub.prompts import verifier_messages  # noqa: E402


PROCESSOR_SECONDS = [0.0]
"""Time spent inside the logits processor during the current case."""


def timed(cls):
    """A subclass of a logits processor class whose calls add to PROCESSOR_SECONDS."""

    class Timed(cls):
        def __call__(self, input_ids, scores):
            start = time.perf_counter()
            try:
                return super().__call__(input_ids, scores)
            finally:
                PROCESSOR_SECONDS[0] += time.perf_counter() - start

    return Timed


class _XGrammarProcessor:
    """xgrammar's HF processor behind the interface the transformers backend calls."""

    def __init__(self, compiled, constraints):
        import xgrammar as xgr

        self.inner = xgr.contrib.hf.LogitsProcessor([compiled[c] for c in constraints])
        self.logprobs = [[] for _ in constraints]

    def __call__(self, input_ids, scores):
        return self.inner(input_ids, scores)

    def finish(self, last_tokens):
        pass


def xgrammar_factory(backend, constraints: set[str]):
    """A drop-in for `ConstrainedLogitsProcessor` that builds xgrammar processors (or None)."""
    try:
        import xgrammar as xgr
    except ImportError:
        return None
    from spark_hub.constrained import verification_regex

    start = time.perf_counter()
    vocab = backend.model.get_output_embeddings().weight.shape[0]
    info = xgr.TokenizerInfo.from_huggingface(backend.tokenizer, vocab_size=vocab)
    compiler = xgr.GrammarCompiler(info)
    compiled = {c: compiler.compile_regex(verification_regex(c)) for c in constraints}
    print(f"xgrammar: tokenizer info + {len(compiled)} regex grammars compiled in "
          f"{time.perf_counter() - start:.1f} s (once, not in the tok/s)", flush=True)

    def factory(table, row_constraints, max_new_tokens, record_logprobs=False):
        return timed(_XGrammarProcessor)(compiled, row_constraints)

    return factory


def run_case(backend, requests, name: str, expected: list[int]) -> float:
    from spark_hub.parsing import parse_verification

    tokens_before = backend.stats.generated_tokens
    PROCESSOR_SECONDS[0] = 0.0
    start = time.perf_counter()
    results = backend.generate(requests)
    wall = time.perf_counter() - start
    tokens = backend.stats.generated_tokens - tokens_before
    outputs = [(c, k) for completions, k in zip(results, expected) for c in completions]
    ok = sum(parse_verification(c.text, k).status == "ok" for c, k in outputs)
    reasons = [c.finish_reason for c, _ in outputs]
    rate = tokens / wall
    steps = len(outputs) * max(c.completion_tokens for c, _ in outputs) / wall
    print(f"  {name:<12} {tokens:6d} tokens in {wall:6.1f} s = {rate:6.1f} tok/s  {steps:6.1f} steps/s   "
          f"parse ok {ok}/{len(outputs)}   [stop {reasons.count('stop')}, length {reasons.count('length')}]   "
          f"processor {100 * PROCESSOR_SECONDS[0] / wall:4.1f}% of the time   load {os.getloadavg()[0]:.1f}",
          flush=True)
    return rate, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--requests", type=int, default=4, help="verifier prompts (GSM8K reference solutions)")
    parser.add_argument("--n", type=int, default=4, help="verifications per prompt")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-xgrammar", action="store_true", help="skip the xgrammar case")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import spark_hub.constrained as constrained
    from spark_hub.backends.transformers_ import TransformersBackend

    backend = TransformersBackend(BackendConfig(model=args.model, batch_size=args.requests))
    backend.load()
    sampling = dict(n=args.n, temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                    seed=args.seed)
    free, forced, steps = [], [], []
    for p in load_problems(args.requests):
        solution_steps, answer = reference_steps(p["solution"])
        messages = verifier_messages(p["problem"], solution_steps, answer)
        constraint = constrained.verification_constraint(len(solution_steps))
        free.append(GenerationRequest.from_chat(messages, **sampling))
        forced.append(GenerationRequest.from_chat(messages, constraint=constraint, **sampling))
        steps.append(len(solution_steps))
    table_start = time.perf_counter()
    constrained.token_table(backend.tokenizer, backend.model.get_output_embeddings().weight.shape[0])
    print(f"{args.requests} requests x n={args.n}, max_tokens {args.max_tokens}, steps {steps}; spark-hub "
          f"token table built in {time.perf_counter() - table_start:.1f} s (once per tokenizer)", flush=True)

    own = constrained.ConstrainedLogitsProcessor
    constrained.ConstrainedLogitsProcessor = timed(own)
    xgr = None if args.no_xgrammar else xgrammar_factory(backend, {r.constraint for r in forced})
    rates: dict[str, list[tuple[float, float]]] = {"free": [], "constrained": [], "xgrammar": []}
    for round_ in range(args.rounds):
        print(f"round {round_ + 1}", flush=True)
        rates["free"].append(run_case(backend, free, "free", steps))
        rates["constrained"].append(run_case(backend, forced, "constrained", steps))
        if xgr is not None:
            constrained.ConstrainedLogitsProcessor = xgr
            try:
                rates["xgrammar"].append(run_case(backend, forced, "xgrammar", steps))
            finally:
                constrained.ConstrainedLogitsProcessor = timed(own)
    for column, unit in ((0, "tok/s"), (1, "steps/s")):
        median = {name: statistics.median(r[column] for r in runs) for name, runs in rates.items() if runs}
        base = median["free"]
        print(f"median {unit}: " + ", ".join(
            f"{name} {value:.1f}" + ("" if name == "free" else f" (x{value / base:.2f})") for name, value in median.items()
        ) + (" - target x0.85 for constrained tok/s" if column == 0 else ""))


if __name__ == "__main__":
    main()
