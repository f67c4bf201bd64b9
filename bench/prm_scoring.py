"""Solutions scored per second by a generative PRM: `score_batch` vs one `score` call per solution.

Same run, same model, same solutions (the first ``--n`` ProcessBench GSM8K cases, or synthetic ones
when the shared data is absent). The base model stands in for a trained PRM: the spec is the SPARK
``--variant`` spec and the output is whatever the model writes (parse failures are counted, never
raised). Prints solutions/s both ways, their ratio, and the backend calls per `score_batch` (must be 1).

    python bench/prm_scoring.py [--model embedded] [--variant prm] [--n 16] [--max-tokens 48] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from spark_hub.backends.base import BackendConfig
from spark_hub.backends.models import resolve_model
from spark_hub.prm import generative_spec, load_prm

ROOT = Path(__file__).resolve().parent.parent
PROCESSBENCH = ROOT.parent / "shared" / "data" / "processbench" / "gsm8k.jsonl"


def load_items(count: int) -> list[tuple[str, list[str]]]:
    if PROCESSBENCH.is_file():
        items = []
        with open(PROCESSBENCH) as f:
            for line in f:
                row = json.loads(line)
                items.append((row["problem"], row["steps"]))
                if len(items) == count:
                    break
        return items
    return [(f"What is {i} + {i + 1}?", [f"{i} + {i + 1} = {2 * i + 1}.", f"The answer is {2 * i + 1}."])
            for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--variant", default="prm", choices=["orm", "prm", "prm_cot"])
    parser.add_argument("--n", type=int, default=16, help="solutions to score")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    folder = resolve_model(BackendConfig(model=args.model)).load_path()  # converts the embedded GGUF once
    spec = generative_spec(args.variant, generation={"max_tokens": args.max_tokens})
    prm = load_prm(folder, spec=spec, batch_size=args.batch_size)
    prm.backend.load()
    calls = []
    generate = prm.backend.generate
    prm.backend.generate = lambda requests: calls.append(len(requests)) or generate(requests)
    items = load_items(args.n)

    start = time.perf_counter()
    batched = prm.score_batch(items)
    batch_seconds = time.perf_counter() - start
    batch_calls = list(calls)
    calls.clear()
    start = time.perf_counter()
    single = [prm.score(problem, steps) for problem, steps in items]
    single_seconds = time.perf_counter() - start

    ok = sum(s.status == "ok" for s in batched)
    print(f"model {args.model}, variant {args.variant}, {len(items)} solutions, max_tokens {args.max_tokens}")
    print(f"score_batch : {len(items) / batch_seconds:7.2f} solutions/s ({batch_seconds:.1f} s, "
          f"{len(batch_calls)} backend call(s) for {len(items)} solutions)")
    print(f"one by one  : {len(items) / single_seconds:7.2f} solutions/s ({single_seconds:.1f} s, {len(calls)} calls)")
    print(f"speed-up    : {single_seconds / batch_seconds:7.2f}x")
    print(f"parsed ok   : {ok}/{len(batched)} batched, {sum(s.status == 'ok' for s in single)}/{len(single)} single")
    if len(batch_calls) != 1:
        raise SystemExit(f"score_batch made {len(batch_calls)} backend calls, expected 1")


if __name__ == "__main__":
    main()
