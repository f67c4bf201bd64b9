"""Record types of Stage I, with explicit ``to_dict`` / ``from_dict``.

- `Problem`: one input problem (reference answer optional; Stage I never shows it to the verifier
  unless the `reference_guided` method is chosen).
- `Solution`: one generator completion, parsed into steps.
- `Verification`: one verifier completion for one solution: raw text kept beside what was parsed.
- `StepRecord`: one labelled solution, the row of the published dataset (schemas/step_record.v1.json).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = "1"


@dataclass
class Problem:
    id: str
    problem: str
    reference: str | None = None
    source: str | None = None
    """Where the problem came from, e.g. ``problems.jsonl:12``."""


@dataclass
class Solution:
    problem_id: str
    index: int
    text: str
    steps: list[str]
    final_answer: str | None
    status: str
    finish_reason: str | None = None
    completion_tokens: int = 0

    @property
    def id(self) -> str:
        return f"{self.problem_id}/s{self.index}"


@dataclass
class Verification:
    problem_id: str
    solution_index: int
    index: int
    verifier: str
    raw_text: str
    text: str
    step_verdicts: list[bool | None]
    final_verdict: bool | None
    parse_status: str
    expected_steps: int
    finish_reason: str | None = None
    completion_tokens: int = 0
    kind: str = "sample"
    """``sample`` (one of the N verifications) or, for meta-critique, ``critique`` / ``merged``."""

    @property
    def id(self) -> str:
        return f"{self.problem_id}/s{self.solution_index}/{self.kind[0]}{self.index}"

    @property
    def status(self) -> str:
        """The parse status (the name aggregation reads, shared with `ParsedVerification`)."""
        return self.parse_status

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "id": self.id,
            "record_id": f"{self.problem_id}/s{self.solution_index}",
            "problem_id": self.problem_id,
            "solution_index": self.solution_index,
            "verification_index": self.index,
            "kind": self.kind,
            "verifier": self.verifier,
            "raw_text": self.raw_text,
            "text": self.text,
            "step_verdicts": self.step_verdicts,
            "final_verdict": self.final_verdict,
            "parse_status": self.parse_status,
            "expected_steps": self.expected_steps,
            "finish_reason": self.finish_reason,
            "completion_tokens": self.completion_tokens,
        }


@dataclass
class StepRecord:
    """One labelled solution (a row of the default config of a spark-hub dataset)."""

    problem_id: str
    problem: str
    reference: str | None
    solution_index: int
    solution: str
    steps: list[str]
    final_answer: str | None
    solution_status: str
    generator: str
    verifier: str
    method: str
    labels: list[bool] | None
    final_label: bool | None
    votes_correct: list[int]
    votes_incorrect: list[int]
    agreement: list[float | None]
    final_votes_yes: int
    final_votes_no: int
    n_verifications: int
    n_parsed: int
    status: str
    cot_target: str | None = None
    cot_verification_index: int | None = None
    cot_exact_match: bool | None = None
    cot_verification_id: str | None = None

    @property
    def id(self) -> str:
        return f"{self.problem_id}/s{self.solution_index}"

    @property
    def first_error_step(self) -> int | None:
        """0-based index of the first step labelled incorrect; -1 if all correct; None if unlabelled."""
        if self.labels is None:
            return None
        return next((i for i, ok in enumerate(self.labels) if not ok), -1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "id": self.id,
            "problem_id": self.problem_id,
            "problem": self.problem,
            "reference": self.reference,
            "solution_index": self.solution_index,
            "solution": self.solution,
            "steps": self.steps,
            "final_answer": self.final_answer,
            "solution_status": self.solution_status,
            "generator": self.generator,
            "verifier": self.verifier,
            "method": self.method,
            "status": self.status,
            "labels": self.labels,
            "final_label": self.final_label,
            "first_error_step": self.first_error_step,
            "votes_correct": self.votes_correct,
            "votes_incorrect": self.votes_incorrect,
            "agreement": self.agreement,
            "final_votes_yes": self.final_votes_yes,
            "final_votes_no": self.final_votes_no,
            "n_verifications": self.n_verifications,
            "n_parsed": self.n_parsed,
            "cot_target": self.cot_target,
            "cot_verification_index": self.cot_verification_index,
            "cot_verification_id": self.cot_verification_id,
            "cot_exact_match": self.cot_exact_match,
        }
