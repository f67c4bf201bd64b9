"""Stage I, step 1: M step-numbered solutions per problem (one request with n=M per problem)."""

from __future__ import annotations

from spark_hub.backends.base import Completion, GenerationRequest
from spark_hub.parsing import parse_solution
from spark_hub.prompts import generator_messages
from spark_hub.records import Problem, Solution


def solution_request(problem: Problem, sampling: dict, seed: int) -> GenerationRequest:
    """The generator request for one problem; ``sampling["n"]`` is M."""
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
            )
        )
    return solutions


def given_solutions(problem: Problem, rows: list[dict]) -> list[Solution]:
    """Wrap existing step-split solutions (``--solutions``) as `Solution` records."""
    from spark_hub.prompts import format_solution

    return [
        Solution(
            problem_id=problem.id,
            index=index,
            text=format_solution(row["steps"], row.get("final_answer")),
            steps=row["steps"],
            final_answer=row.get("final_answer"),
            status="given",
        )
        for index, row in enumerate(rows)
    ]
