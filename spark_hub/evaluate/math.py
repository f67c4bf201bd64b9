r"""Six math benchmarks for a policy: MATH500, AIME24, AIME25, AMC23, OlympiadBench, Minerva.

The protocol of SPARK's Table 1 (§3): the policy answers each problem in its RL format
(`spark_hub.rewards.policy_messages`: ``<step>`` blocks, then ``<answer> … \boxed{…} </answer>``),
the boxed answer is compared with the reference by math-verify (`spark_hub.grading`: worker
processes with a per-answer time limit, so a pathological answer never stalls the run), and
pass@1 is averaged over ``k`` samples per problem (``k = 1``: greedy). A benchmark's accuracy is the
mean pass@1 over its problems (in percent); the reported average is the mean of the benchmark
accuracies, as in the paper.

Generation goes through any spark-hub backend (transformers, vllm, openai, scripted); wrap it in a
`spark_hub.cache.CachedBackend` (``run(..., cache=PATH)`` does) and an interrupted evaluation
resumes from the call cache: re-running skips every answered request.

Data: a folder of ``<benchmark>.jsonl`` files with ``id``, ``problem`` and ``answer`` per line
(``../shared/data/math-benchmarks``); any file can be replaced through ``files={name: path}``. When a
``MANIFEST.json`` in the folder or its parent lists a file's sha256 and row count, they are checked.

`run` writes the results JSON and a bar chart; `record_results` writes the accuracies into a
policy's ``manifest.json``, from which its card's ``model-index`` is rendered.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from spark_hub.errors import SparkHubError

logger = logging.getLogger(__name__)

#: The six benchmarks, in the order of the paper's Table 1, with their display names.
BENCHMARKS = ("math500", "aime24", "aime25", "amc23", "olympiadbench", "minerva_math")
DISPLAY_NAMES = {
    "math500": "MATH500", "aime24": "AIME24", "aime25": "AIME25", "amc23": "AMC23",
    "olympiadbench": "OlympiadBench", "minerva_math": "Minerva",
}
#: Sampling for k > 1 (pass@1 averaged over k samples) unless overridden.
SAMPLED_TEMPERATURE, SAMPLED_TOP_P = 0.6, 0.95


@dataclass(frozen=True)
class MathProblem:
    id: str
    benchmark: str
    problem: str
    answer: str


@dataclass
class MathData:
    """The benchmarks read, with provenance of every file."""

    benchmarks: dict[str, list[MathProblem]]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)

    def problems(self) -> list[MathProblem]:
        return [p for problems in self.benchmarks.values() for p in problems]


def _read_problem(row: Any, benchmark: str, where: str) -> MathProblem:
    if not isinstance(row, dict):
        raise SparkHubError("each line must be a JSON object", where=where)
    for name in ("id", "problem"):
        if not isinstance(row.get(name), str) or not row[name].strip():
            raise SparkHubError(f"field '{name}' must be a non-empty string", where=where)
    answer = row.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)) or not str(answer).strip():
        raise SparkHubError("field 'answer' must be a non-empty string or number", where=where)
    return MathProblem(id=row["id"], benchmark=benchmark, problem=row["problem"], answer=str(answer))


def load_math_benchmarks(
    data_dir: str | Path | None,
    benchmarks: Sequence[str] | None = None,
    *,
    files: Mapping[str, str | Path] | None = None,
    limit: int | None = None,
    verify: bool = True,
) -> MathData:
    """Read benchmark files.

    Args:
        data_dir: the folder of ``<benchmark>.jsonl`` files (may be None when ``files`` names all).
        benchmarks: which to read, in this order (default: the six of `BENCHMARKS` present in the
            folder, then any other ``*.jsonl`` in it, sorted).
        files: ``{benchmark: path}`` overriding or adding files.
        limit: read only the first ``limit`` problems of each benchmark.
        verify: check files against a ``MANIFEST.json`` (sha256, rows) listing them.

    Raises:
        `SparkHubError`: a missing folder, benchmark or file; a malformed row (file:line, field);
            a duplicate id; a file that differs from its manifest entry.
    """
    from spark_hub.evaluate.data import read_checked_jsonl

    available: dict[str, Path] = {}
    folder = Path(data_dir) if data_dir is not None else None
    if folder is not None:
        if not folder.is_dir():
            raise SparkHubError(f"math benchmark folder not found: {folder}", hint="pass --data DIR")
        available = {p.stem: p for p in sorted(folder.glob("*.jsonl"))}
    for name, path in (files or {}).items():
        available[name] = Path(path)
    if not available:
        raise SparkHubError(f"no *.jsonl benchmark files in {folder}", hint=f"expected e.g. {', '.join(BENCHMARKS)}")
    if benchmarks is None:
        names = [b for b in BENCHMARKS if b in available] + sorted(set(available) - set(BENCHMARKS))
    else:
        names = list(dict.fromkeys(benchmarks))
        missing = [b for b in names if b not in available]
        if missing:
            raise SparkHubError(f"benchmark(s) {', '.join(missing)} not found in {folder}",
                                hint=f"available: {', '.join(sorted(available))}")
    if limit is not None and limit < 1:
        raise SparkHubError(f"limit must be >= 1, got {limit}")

    data = MathData(benchmarks={})
    for name in names:
        path = available[name]
        if not path.is_file():
            raise SparkHubError(f"benchmark file not found: {path}")
        problems, data.files[name] = read_checked_jsonl(
            path, lambda row, where, name=name: _read_problem(row, name, where), limit=limit, verify=verify,
            entry=None if verify else {},
        )
        data.benchmarks[name] = problems
    return data


# ------------------------------------------------------------------------------------------------
# Generation and scoring
# ------------------------------------------------------------------------------------------------


def sampling_settings(k: int = 1, temperature: float | None = None, top_p: float | None = None) -> dict[str, float]:
    """Greedy for ``k == 1``, else T=0.6, top_p 0.95 (each overridable)."""
    if k < 1:
        raise SparkHubError(f"k (samples per problem) must be >= 1, got {k}")
    if k == 1:
        return {"temperature": 0.0 if temperature is None else temperature, "top_p": 1.0 if top_p is None else top_p}
    return {"temperature": SAMPLED_TEMPERATURE if temperature is None else temperature,
            "top_p": SAMPLED_TOP_P if top_p is None else top_p}


def math_requests(
    problems: Sequence[MathProblem],
    *,
    k: int = 1,
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int = 2048,
    seed: int | None = 0,
    system: str | None = None,
):
    """One `GenerationRequest` per problem with ``n = k``, in the policy's RL prompt."""
    from spark_hub.backends.base import GenerationRequest
    from spark_hub.rewards import POLICY_SYSTEM, policy_messages

    sampling = sampling_settings(k, temperature, top_p)
    system = POLICY_SYSTEM if system is None else system
    return [GenerationRequest.from_chat(policy_messages(p.problem, system=system or None), n=k,
                                        max_tokens=max_tokens, seed=seed, **sampling) for p in problems]


@dataclass
class ProblemResult:
    """The k samples of one problem."""

    id: str
    benchmark: str
    reference: str
    answers: list[str | None]
    correct: list[bool | None]
    """math-verify per sample; None = could not tell (timeout) and counts as wrong."""
    valid_format: list[bool]
    truncated: list[bool]

    @property
    def pass_at_1(self) -> float:
        return sum(bool(c) for c in self.correct) / len(self.correct) if self.correct else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "benchmark": self.benchmark, "reference": self.reference, "answers": self.answers,
                "correct": self.correct, "valid_format": self.valid_format, "truncated": self.truncated,
                "pass@1": self.pass_at_1}


def score_texts(problem: MathProblem, texts: Sequence[str], finish_reasons: Sequence[str | None] | None = None,
                *, timeout: float = 5.0) -> ProblemResult:
    """Grade the k outputs of one problem (see `grade`)."""
    return grade([(problem, list(texts), list(finish_reasons or [None] * len(texts)))], timeout=timeout)[0]


def grade(outputs: Sequence[tuple[MathProblem, list[str], list[str | None]]], *, timeout: float = 5.0) -> list[ProblemResult]:
    """Grade many problems' outputs with ONE batched math-verify call.

    The answer of an output is its boxed answer (`spark_hub.rewards.final_answer`: the last
    ``\\boxed{}`` inside ``<answer>…</answer>`` after the cut at ``</answer>``, else the last one
    anywhere). The format is recorded but not required: accuracy is about the answer.
    """
    from spark_hub.grading import answers_match_many
    from spark_hub.rewards import check_format, final_answer

    pairs, results = [], []
    for problem, texts, reasons in outputs:
        answers = [final_answer(t) for t in texts]
        pairs.extend((a, problem.answer) for a in answers)
        results.append(ProblemResult(
            id=problem.id, benchmark=problem.benchmark, reference=problem.answer, answers=answers, correct=[],
            valid_format=[check_format(t).valid for t in texts], truncated=[r == "length" for r in reasons],
        ))
    matches = answers_match_many(pairs, timeout)
    position = 0
    for result in results:
        result.correct = [False if a is None else matches[position + j] for j, a in enumerate(result.answers)]
        position += len(result.answers)
    return results


def generate_and_grade(
    backend: Any,
    problems: Sequence[MathProblem],
    *,
    k: int = 1,
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int = 2048,
    seed: int | None = 0,
    system: str | None = None,
    timeout: float = 5.0,
    chunk_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> list[ProblemResult]:
    """Sample ``k`` answers per problem through ``backend`` (chunks of ``chunk_size`` requests, each
    graded as it returns) and grade them."""
    requests = math_requests(problems, k=k, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                             seed=seed, system=system)
    results: list[ProblemResult] = []
    for start in range(0, len(problems), max(1, chunk_size)):
        chunk = list(range(start, min(start + chunk_size, len(problems))))
        outputs = backend.generate([requests[i] for i in chunk])
        batch = []
        for i, completions in zip(chunk, outputs):
            completions = list(completions)[:k]
            if len(completions) != k:
                raise SparkHubError(f"the backend returned {len(completions)} completions for {problems[i].id}, expected {k}")
            batch.append((problems[i], [c.text for c in completions], [getattr(c, "finish_reason", None) for c in completions]))
        results.extend(grade(batch, timeout=timeout))
        if progress is not None:
            progress(chunk[-1] + 1, len(problems))
    return results


# ------------------------------------------------------------------------------------------------
# Metrics and results
# ------------------------------------------------------------------------------------------------


def compute_metrics(results: Sequence[ProblemResult], benchmarks: Sequence[str] | None = None) -> dict[str, Any]:
    """Per-benchmark accuracy (mean pass@1, percent, unrounded) and the mean over benchmarks.

    Returns:
        ``{"benchmarks": {name: {"n", "k", "accuracy", "format_valid", "no_answer", "truncated",
        "cannot_tell"}}, "average": mean accuracy}``; rates in percent.
    """
    by_name: dict[str, list[ProblemResult]] = {}
    for name in benchmarks or []:
        by_name[name] = []
    for r in results:
        by_name.setdefault(r.benchmark, []).append(r)
    metrics: dict[str, Any] = {}
    for name, rows in by_name.items():
        samples = [(a, c, v, t) for r in rows for a, c, v, t in zip(r.answers, r.correct, r.valid_format, r.truncated)]
        if not rows:
            metrics[name] = {"n": 0, "k": 0, "accuracy": None, "format_valid": None, "no_answer": None,
                             "truncated": None, "cannot_tell": 0}
            continue
        metrics[name] = {
            "n": len(rows),
            "k": max(len(r.answers) for r in rows),
            "accuracy": 100.0 * sum(r.pass_at_1 for r in rows) / len(rows),
            "format_valid": 100.0 * sum(v for _, _, v, _ in samples) / len(samples),
            "no_answer": 100.0 * sum(a is None for a, _, _, _ in samples) / len(samples),
            "truncated": 100.0 * sum(t for _, _, _, t in samples) / len(samples),
            "cannot_tell": sum(a is not None and c is None for a, c, _, _ in samples),
        }
    scored = [m["accuracy"] for m in metrics.values() if m["accuracy"] is not None]
    return {"benchmarks": metrics, "average": sum(scored) / len(scored) if scored else None}


def format_table(results: Mapping[str, Any]) -> str:
    """The six-benchmark table, one decimal, with the average."""

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    lines = [f"{'benchmark':<16}{'n':>6}{'k':>4}{'acc':>8}{'format':>9}{'no ans':>8}"]
    for name, m in results["benchmarks"].items():
        lines.append(f"{DISPLAY_NAMES.get(name, name):<16}{m['n']:>6}{m['k']:>4}{fmt(m['accuracy']):>8}"
                     f"{fmt(m['format_valid']):>9}{fmt(m['no_answer']):>8}")
    lines.append(f"{'average':<16}{'':>6}{'':>4}{fmt(results.get('average')):>8}")
    return "\n".join(lines)


def plot_results(results: Mapping[str, Any], path: str | Path, *, title: str | None = None) -> Path:
    """A bar chart of the per-benchmark accuracies and their average ("Avg", orange), each value
    printed above its bar, written atomically as PNG (`spark_hub.plots.bar_chart`)."""
    from spark_hub.plots import BLUE, ORANGE, bar_chart

    names = list(results["benchmarks"])
    labels = [DISPLAY_NAMES.get(n, n) for n in names] + ["Avg"]
    values = [results["benchmarks"][n]["accuracy"] for n in names] + [results.get("average")]
    k = max([m["k"] for m in results["benchmarks"].values()] or [1])
    top = max([100.0] + [v + 10 for v in values if v is not None])
    prefix = f"{title} \u00b7 " if title else ""
    return bar_chart(path, labels, [("accuracy", values, [BLUE] * len(names) + [ORANGE])],
                     title=f"{prefix}pass@1 (k={k})", ylabel="accuracy (%)",
                     ylim=(0, top), value_labels=True, legend=False)


def manifest_results(results: Mapping[str, Any]) -> dict[str, Any]:
    """The ``results["math"]`` section of a policy manifest (what its card's model-index reads):
    ``{benchmark: {"accuracy", "n", "k"}, "average": mean}``, one decimal."""

    def r(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    section: dict[str, Any] = {name: {"accuracy": r(m["accuracy"]), "n": m["n"], "k": m["k"]}
                               for name, m in results["benchmarks"].items() if m["accuracy"] is not None}
    section["average"] = r(results.get("average"))
    return section


def model_index(results: Mapping[str, Any], model_name: str) -> list[dict[str, Any]]:
    """The ``model-index`` card metadata for these results (one entry per benchmark)."""
    entries = [
        {"task": {"type": "text-generation", "name": "Math reasoning"},
         "dataset": {"name": DISPLAY_NAMES.get(name, name), "type": name},
         "metrics": [{"type": "accuracy", "name": f"pass@1 (k={m['k']})", "value": round(m["accuracy"], 1)}]}
        for name, m in results["benchmarks"].items() if m["accuracy"] is not None
    ]
    return [{"name": model_name, "results": entries}]


def record_results(folder: str | Path, results: Mapping[str, Any]) -> Path:
    """Write the accuracies into the ``manifest.json`` of a policy folder (file table refreshed), so
    that its card shows them (``model-index``) on the next push."""
    from spark_hub.manifest import read_manifest, write_manifest

    manifest = read_manifest(folder)
    if manifest.get("kind") != "policy":
        raise SparkHubError(f"{folder} holds a {manifest.get('kind')!r} artifact, not a policy",
                            hint="record math results into a folder written by `spark-hub train grpo`")
    manifest = {k: v for k, v in manifest.items() if k != "files"}
    manifest["results"] = {**(manifest.get("results") or {}), "math": manifest_results(results)}
    return write_manifest(folder, manifest)


def open_backend(model: str, *, backend: str = "transformers", cache: str | Path | None = None,
                 batch_size: int = 16, **options: Any):
    """A backend for ``model`` (path, Hub id, ``embedded``...), behind a call cache when ``cache`` is a
    path (then an interrupted run resumes)."""
    from spark_hub.backends.base import BackendConfig, load_backend

    engine = load_backend(BackendConfig(backend=backend, model=model, batch_size=batch_size, **options))
    if cache is None:
        return engine
    from spark_hub.cache import CachedBackend, CallCache

    return CachedBackend(engine, CallCache(cache), batch_size=batch_size)


def run(
    data_dir: str | Path | None,
    *,
    backend: Any,
    benchmarks: Sequence[str] | None = None,
    files: Mapping[str, str | Path] | None = None,
    limit: int | None = None,
    k: int = 1,
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int = 2048,
    seed: int | None = 0,
    system: str | None = None,
    timeout: float = 5.0,
    chunk_size: int = 64,
    cache: str | Path | None = None,
    output: str | Path | None = None,
    plot: str | Path | None = None,
    per_case: bool = True,
    verify: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate a policy on the math benchmarks and write the results (``spark-hub eval math``).

    Args:
        data_dir: the benchmark folder (``../shared/data/math-benchmarks``); ``files`` overrides files.
        backend: a backend object (wrap it in a `spark_hub.cache.CachedBackend` to resume), or a
            model path / Hub id loaded with the transformers backend (`open_backend`).
        benchmarks, limit: which benchmarks, and the first ``limit`` problems of each.
        k: samples per problem; pass@1 is averaged over them (k = 1: greedy).
        temperature, top_p: sampling overrides; max_tokens, seed: generation settings.
        timeout: seconds math-verify may take per answer (a timeout counts as wrong).
        cache: call-cache path used when ``backend`` is a model name.
        output: results JSON; ``plot``: PNG (default next to ``output`` with ``.png``).

    Returns:
        ``{"benchmark": "math", "model", "sampling", "data", "benchmarks": {...}, "average", "cases"}``.
    """
    if isinstance(backend, (str, Path)):
        backend = open_backend(str(backend), cache=cache)
    data = load_math_benchmarks(data_dir, benchmarks, files=files, limit=limit, verify=verify)
    problems = data.problems()
    sampling = {"k": k, **sampling_settings(k, temperature, top_p), "max_tokens": max_tokens, "seed": seed}
    results_rows = generate_and_grade(backend, problems, k=k, temperature=temperature, top_p=top_p,
                                      max_tokens=max_tokens, seed=seed, system=system, timeout=timeout,
                                      chunk_size=chunk_size, progress=progress)
    from spark_hub.rewards import POLICY_SYSTEM

    model: dict[str, Any] = {"id": getattr(backend, "model_id", None)}
    describe = getattr(backend, "describe", None) or getattr(getattr(backend, "backend", None), "describe", None)
    if describe is not None:
        model["provenance"] = describe()
    results: dict[str, Any] = {
        "benchmark": "math",
        "model": model,
        "sampling": sampling,
        "prompt": {"system": POLICY_SYSTEM if system is None else system},
        "data": data.files,
        **compute_metrics(results_rows, list(data.benchmarks)),
    }
    if limit is not None:
        results["limit"] = limit
    if per_case:
        results["cases"] = [r.to_dict() for r in results_rows]
    logger.info("math benchmarks\n%s", format_table(results))
    if output is not None:
        from spark_hub.io import atomic_write_json

        atomic_write_json(output, results)
        if plot is None:
            plot = Path(output).with_suffix(".png")
    if plot is not None:
        plot_results(results, plot, title=str(model.get("id") or "policy"))
    return results


__all__ = [
    "BENCHMARKS",
    "DISPLAY_NAMES",
    "MathData",
    "MathProblem",
    "ProblemResult",
    "compute_metrics",
    "format_table",
    "generate_and_grade",
    "grade",
    "load_math_benchmarks",
    "manifest_results",
    "math_requests",
    "model_index",
    "open_backend",
    "plot_results",
    "record_results",
    "run",
    "sampling_settings",
    "score_texts",
]
