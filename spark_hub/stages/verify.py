"""Stage I, step 2: N verifications per solution, as ONE request with n=N (shared prefill)."""

from __future__ import annotations

from spark_hub.backends.base import Completion, GenerationRequest
from spark_hub.parsing import parse_verification
from spark_hub.prompts import verifier_messages
from spark_hub.records import Problem, Solution, Verification


def verification_request(
    problem: Problem, solution: Solution, sampling: dict, seed: int, *, with_reference: bool = False
) -> GenerationRequest:
    """The verifier request for one solution; ``sampling["n"]`` is N.

    The reference answer is only included for the `reference_guided` ceiling baseline.
    """
    reference = problem.reference if with_reference else None
    messages = verifier_messages(problem.problem, solution.steps, solution.final_answer, reference)
    return GenerationRequest.from_chat(messages, seed=seed, **sampling)


def parse_verifications(
    solution: Solution, completions: list[Completion], verifier: str, *, kind: str = "sample"
) -> list[Verification]:
    """Parse the N completions for one solution (never raises; failures become statuses)."""
    out = []
    for index, completion in enumerate(completions):
        parsed = parse_verification(completion.text, expected_steps=len(solution.steps))
        out.append(
            Verification(
                problem_id=solution.problem_id,
                solution_index=solution.index,
                index=index,
                verifier=verifier,
                raw_text=completion.text,
                text=parsed.text,
                step_verdicts=parsed.step_verdicts,
                final_verdict=parsed.final_verdict,
                parse_status=parsed.status,
                expected_steps=len(solution.steps),
                finish_reason=completion.finish_reason,
                completion_tokens=completion.completion_tokens,
                kind=kind,
            )
        )
    return out
