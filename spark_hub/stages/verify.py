"""Stage I, step 2: N verifications per solution, as ONE request with n=N (shared prefill).

With ``verifier.constrained`` the request carries a format constraint (`spark_hub.constrained`) built
from the solution's step count, so every verification parses with exactly one block per step. With
``verifier.logprobs`` the completions carry token logprobs, from which `verdict_probabilities` reads
the verifier's P(correct) at each step's verdict and P(Yes) at the final verdict.
"""

from __future__ import annotations

import math
import re
from typing import Any

from spark_hub.backends.base import Completion, GenerationRequest
from spark_hub.constrained import verification_constraint
from spark_hub.parsing import parse_verification
from spark_hub.prompts import verifier_messages
from spark_hub.records import Problem, Solution, Verification


def _request_sampling(sampling: dict[str, Any], constrained: bool | None) -> tuple[dict[str, Any], bool]:
    """``sampling`` without the ``constrained`` flag (`RoleConfig.sampling` may carry it), and the flag."""
    sampling = dict(sampling)
    flag = bool(sampling.pop("constrained", False))
    return sampling, flag if constrained is None else bool(constrained)


def verification_request(
    problem: Problem, solution: Solution, sampling: dict, seed: int, *, with_reference: bool = False,
    constrained: bool | None = None, think: bool = False,
) -> GenerationRequest:
    """The verifier request for one solution; ``sampling["n"]`` is N.

    The reference answer is only included for the `reference_guided` ceiling baseline.
    ``constrained`` (default: ``sampling["constrained"]``, else False) constrains the output to the
    verifier format with one block per solution step (``think``: an optional ``<think>`` preamble).
    """
    sampling, constrained = _request_sampling(sampling, constrained)
    reference = problem.reference if with_reference else None
    messages = verifier_messages(problem.problem, solution.steps, solution.final_answer, reference)
    constraint = verification_constraint(len(solution.steps), think=think) if constrained and solution.steps else None
    return GenerationRequest.from_chat(messages, seed=seed, constraint=constraint, **sampling)


def parse_verifications(
    solution: Solution, completions: list[Completion], verifier: str, *, kind: str = "sample"
) -> list[Verification]:
    """Parse the N completions for one solution (never raises; failures become statuses)."""
    out = []
    for index, completion in enumerate(completions):
        parsed = parse_verification(completion.text, expected_steps=len(solution.steps))
        step_probs, final_prob = verdict_probabilities(completion, parsed.step_verdicts, parsed.final_verdict)
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
                step_probs=step_probs,
                final_prob=final_prob,
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# Verdict probabilities from token logprobs
# ---------------------------------------------------------------------------------------------

# Located in the raw text (lower-cased), after any <think> block, like the parser reads them.
_HEADER_RE = re.compile(r"\n[ \t]*(?:#{1,6}[ \t]*(?:\*\*)?|\*\*)[ \t]*step[ \t]*\d+\b")
_VERDICT_WORD_RE = re.compile(r"this[ \t]+step[ \t]+is[ \t]+(?:\*\*)?[ \t]*(correct|incorrect|wrong|right)\b")
_FINAL_WORD_RE = re.compile(
    r"is[ \t]+the[ \t]+answer[ \t]+correct[ \t]*\(?[ \t]*yes[ \t]*/[ \t]*no[ \t]*\)?[ \t]*\??[ \t*_:]*"
    r"(?:\\boxed\{)?[ \t*_]*(yes|no)\b"
)


def verdict_probabilities(
    completion: Completion, step_verdicts: list[bool | None], final_verdict: bool | None
) -> tuple[list[float | None] | None, float | None]:
    """P(correct) at each step's verdict and P(Yes) at the final verdict, from token logprobs.

    The verdict word ("correct" / "incorrect", "Yes" / "No") that the parser counted is located in
    the completion; the probability of the chosen branch is ``exp`` of the summed logprobs of the
    tokens that spell it, the blank before it included (one token under the transformers constraint, where the choice is a single
    branching token and the logprob is taken after the constraint mask, so it is exactly the model's
    probability of that branch against the other). The other branch gets ``1 - p``:
    P(correct) = p when the verdict is "correct", else 1 - p. Without a constraint the model may
    also have put mass on other words; 1 - p then counts that mass for the other branch.

    Returns ``(None, None)`` without logprobs; a step whose verdict cannot be located gets None.
    """
    if completion.logprobs is None or completion.token_offsets is None:
        return None, None
    text = completion.text
    lower = text.lower()
    start = 0
    close = lower.rfind("</think>")
    if close >= 0:
        start = close + len("</think>")
    opened = lower.find("<think>", start)
    end = opened if opened >= 0 else len(lower)
    body = "\n" + lower[start:end]
    offset = start - 1  # body index -> text index

    def prob(span: tuple[int, int]) -> float | None:
        start = span[0]
        while start > 0 and body[start - 1] in " \t*_:":  # a token " correct" starts at the blank
            start -= 1
        tokens = completion.token_span(start + offset, span[1] + offset)
        if not tokens:
            return None
        return math.exp(sum(completion.logprobs[i] for i in tokens))

    headers = [m.start() for m in _HEADER_RE.finditer(body)]
    step_probs: list[float | None] = [None] * len(step_verdicts)
    if headers and len(headers) == len(step_verdicts):
        last: list[tuple[int, int, str] | None] = [None] * len(headers)
        block = 0
        for m in _VERDICT_WORD_RE.finditer(body, headers[0]):
            while block + 1 < len(headers) and headers[block + 1] <= m.start():
                block += 1
            last[block] = (m.start(1), m.end(1), m.group(1))
        for i, found in enumerate(last):
            if found is None or step_verdicts[i] is None:
                continue
            p = prob(found[:2])
            if p is not None:
                step_probs[i] = round(p if found[2] in ("correct", "right") else 1.0 - p, 6)
    final_prob = None
    if final_verdict is not None:
        matches = list(_FINAL_WORD_RE.finditer(body))
        if matches:
            m = matches[-1]
            p = prob((m.start(1), m.end(1)))
            if p is not None:
                final_prob = round(p if m.group(1) == "yes" else 1.0 - p, 6)
    return step_probs, final_prob

