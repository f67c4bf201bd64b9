"""Contamination check: word n-gram overlap of the problems with evaluation benchmarks.

Run before any model call, so ``decontaminate: true`` drops matching problems before a GPU-hour is
spent on them. The report goes into the manifest and the dataset card.

A problem *matches* a benchmark problem when at least ``threshold`` of its word n-grams (lower-cased
alphanumeric words, ``ngram`` words long; problems shorter than that count as one n-gram) occur in
that benchmark problem.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spark_hub.errors import SparkHubError
from spark_hub.records import Problem

_WORD_RE = re.compile(r"[a-z0-9]+")
MAX_LISTED_MATCHES = 200


@dataclass
class ContaminationConfig:
    """Which benchmarks to check against, and what to do with matches."""

    benchmarks: list[str] = field(
        default_factory=list,
        metadata={"help": "Benchmark files (.jsonl/.parquet with a `problem` field), e.g. ProcessBench and MATH500. Empty = no check."},
    )
    ngram: int = field(default=8, metadata={"help": "Words per n-gram."})
    threshold: float = field(default=0.5, metadata={"help": "Share of a problem's n-grams found in one benchmark problem to call it a match."})
    decontaminate: bool = field(default=False, metadata={"help": "Drop matching problems before generation."})

    def __post_init__(self):
        if self.ngram < 1:
            raise SparkHubError(f"contamination.ngram must be >= 1, got {self.ngram}")
        if not 0 < self.threshold <= 1:
            raise SparkHubError(f"contamination.threshold must be in (0, 1], got {self.threshold}")


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Word n-grams of lower-cased alphanumeric words (the whole text when shorter than n)."""
    words = _WORD_RE.findall(text.lower())
    if not words:
        return set()
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _benchmark_name(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem


def check(problems: list[Problem], config: ContaminationConfig) -> dict[str, Any]:
    """Compare ``problems`` with every benchmark; returns the report (see module docstring)."""
    from spark_hub.inputs import check_input_path, content_hash, load_problems

    index: dict[tuple[str, ...], list[tuple[str, str]]] = defaultdict(list)
    benchmarks: dict[str, dict[str, Any]] = {}
    for raw in config.benchmarks:
        path = Path(raw)
        if not path.exists():
            raise SparkHubError(f"contamination benchmark not found: {path}",
                                hint="fix contamination.benchmarks or set it to []")
        check_input_path(path, "contamination benchmark")  # a FIFO or device would block
        name = _benchmark_name(path)
        items = load_problems(path, answer_field=None)
        benchmarks[name] = {"path": str(path), "sha256": content_hash(path), "problems": len(items), "matched": 0}
        for item in items:
            for gram in ngrams(item.problem, config.ngram):
                index[gram].append((name, item.id))

    matches = []
    for problem in problems:
        grams = ngrams(problem.problem, config.ngram)
        if not grams or not index:
            continue
        hits: Counter = Counter()
        for gram in grams:
            for owner in set(index.get(gram, ())):
                hits[owner] += 1
        if not hits:
            continue
        (bench, bench_id), shared = hits.most_common(1)[0]
        overlap = shared / len(grams)
        if overlap >= config.threshold:
            benchmarks[bench]["matched"] += 1
            matches.append({"problem_id": problem.id, "benchmark": bench, "benchmark_id": bench_id,
                            "overlap": round(overlap, 4)})
    return {
        "ngram": config.ngram,
        "threshold": config.threshold,
        "benchmarks": benchmarks,
        "checked": len(problems),
        "matched": len(matches),
        "matches": matches[:MAX_LISTED_MATCHES],
        "matched_ids": [m["problem_id"] for m in matches],
        "decontaminated": config.decontaminate,
    }
