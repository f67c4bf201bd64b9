"""Solution balancing per problem, as in the paper's training data (SPARK §1, "Problems").

The authors kept, per problem, equal numbers of correct and incorrect solutions, capped at 3 + 3,
seed 42, and dropped problems whose solutions were all right or all wrong. Their code decided
"correct" with math-verify against the reference answer. spark-hub defaults to a reference-free
criterion instead:

- ``by: majority_verdict`` (default): a solution is "correct" when the aggregated final verdict
  of its N verifications is Yes. No reference is used anywhere.
- ``by: ground_truth``: math-verify of the solution's final answer against the reference, as the
  authors' code did. The manifest and card then say that solution selection used references.

Pure functions over step records; selection is deterministic for a given seed and problem id.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from spark_hub.errors import SparkHubError

BALANCE_BY = ("majority_verdict", "ground_truth")


@dataclass
class BalanceConfig:
    """Per-problem balancing of correct and incorrect solutions."""

    enabled: bool = field(default=False, metadata={"help": "Balance solutions per problem (paper: on, 3 + 3)."})
    by: str = field(default="majority_verdict", metadata={"help": "`majority_verdict` (reference-free) or `ground_truth` (math-verify vs reference)."})
    per_class: int = field(default=3, metadata={"help": "At most this many correct and this many incorrect solutions per problem."})

    def __post_init__(self):
        if self.by not in BALANCE_BY:
            raise SparkHubError(f"balance.by must be one of {', '.join(BALANCE_BY)}, got {self.by!r}",
                                hint="--set balance.by=majority_verdict")
        if self.per_class < 1:
            raise SparkHubError(f"balance.per_class must be >= 1, got {self.per_class}")

    @property
    def uses_references(self) -> bool:
        return self.enabled and self.by == "ground_truth"


def answer_is_correct(answer: str | None, reference: str | None) -> bool | None:
    """math-verify equivalence of ``answer`` and ``reference`` (None when either is missing, or when
    the comparison times out); see `spark_hub.grading.answers_match`. Safe from any thread."""
    from spark_hub.grading import answers_match

    return answers_match(answer, reference)


def solution_class(record: dict[str, Any], by: str) -> bool | None:
    """True (correct), False (incorrect) or None (cannot tell: unlabelled or no reference)."""
    return solution_classes([record], by)[0]


def solution_classes(records: list[dict[str, Any]], by: str) -> list[bool | None]:
    """`solution_class` of each record; ``ground_truth`` grades all answers in one batch."""
    if by == "majority_verdict":
        return [r["final_label"] if r["status"] == "ok" else None for r in records]
    from spark_hub.grading import answers_match_many

    graded = [i for i, r in enumerate(records) if r["status"] == "ok"]
    truths = answers_match_many([(records[i]["final_answer"], records[i]["reference"]) for i in graded])
    classes: list[bool | None] = [None] * len(records)
    for i, truth in zip(graded, truths):
        classes[i] = truth
    return classes


def balance_problem(records: list[dict[str, Any]], config: BalanceConfig, seed: int) -> list[dict[str, Any]]:
    """Keep k correct + k incorrect solutions of one problem, k = min(per_class, both counts).

    Returns [] when the problem has no correct or no incorrect solution. Kept records stay in
    their original order.

    >>> rows = [{"problem_id": "p", "status": "ok", "final_label": v, "solution_index": i}
    ...         for i, v in enumerate([True, True, False, True])]
    >>> [r["solution_index"] for r in balance_problem(rows, BalanceConfig(enabled=True, per_class=3), 42)]
    [0, 2]
    """
    classes = list(zip(records, solution_classes(records, config.by)))
    correct = [r for r, c in classes if c is True]
    incorrect = [r for r, c in classes if c is False]
    k = min(config.per_class, len(correct), len(incorrect))
    if k == 0:
        return []
    digest = hashlib.sha256(f"{seed}:{records[0]['problem_id']}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    keep = {id(r) for r in rng.sample(correct, k) + rng.sample(incorrect, k)}
    return [r for r in records if id(r) in keep]
