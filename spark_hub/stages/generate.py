"""Stage I, step 1: M step-numbered solutions per problem (one request with n=M per problem)."""

from __future__ import annotations

import logging

from spark_hub.backends.base import Completion, GenerationRequest
from spark_hub.parsing import parse_solution
from spark_hub.prompts import generator_messages
from spark_hub.records import Problem, Solution

logger = logging.getLogger(__name__)
_warned_constrained = False


def solution_request(problem: Problem, sampling: dict, seed: int) -> GenerationRequest:
    """The generator request for one problem; ``sampling["n"]`` is M.

    Solutions are free text (the step format is asked for in the prompt, never forced), so a
    ``constrained`` setting in ``sampling`` is ignored, with one warning.
    """
    global _warned_constrained
    if "constrained" in sampling:
        sampling = {k: v for k, v in sampling.items() if k != "constrained"}
        if not _warned_constrained:
            _warned_constrained = True
            logger.warning("generator.constrained is ignored: only verifications are format-constrained")
    return GenerationRequest.from_chat(generator_messages(problem.problem), seed=seed, **sampling)


def parse_solutions(problem: Problem, completions: list[Completion]) -> list[Solution]:
    """Parse the M completions of one problem into `Solution` records (never raises)."""
    solutions = []
    for index, completion in enumerate(completions):
        parsed = parse_solution(completion.text)
        solutions.append(
            Solution(
                problem_id=problem.id,
                index=index,
                text=completion.text,
                steps=parsed.steps,
                final_answer=parsed.final_answer,
                status=parsed.status,
                finish_reason=completion.finish_reason,
                completion_tokens=completion.completion_tokens,
                step_spans=parsed.spans or None,
            )
        )
    return solutions


def given_solutions(problem: Problem, rows: list[dict]) -> list[Solution]:
    """Wrap existing step-split solutions (``--solutions``) as `Solution` records.

    The text is the steps formatted as a generator would write them; ``step_spans`` locate each
    step in it.
    """
    from spark_hub import parsing
    from spark_hub.prompts import format_solution

    locate = getattr(parsing, "locate_steps", None)
    solutions = []
    for index, row in enumerate(rows):
        text = format_solution(row["steps"], row.get("final_answer"))
        solutions.append(Solution(
            problem_id=problem.id,
            index=index,
            text=text,
            steps=row["steps"],
            final_answer=row.get("final_answer"),
            status="given",
            step_spans=locate(text, row["steps"]) if locate else None,
        ))
    return solutions
