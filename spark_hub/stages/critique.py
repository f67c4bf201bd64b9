"""Stage I, step 3 for the meta-critique methods: critique the selected verification, then merge.

``meta_critique``, ``hybrid_outcome`` and ``hybrid_step`` pick one of the N verifications of a
solution (by ``single`` / ``outcome_consistency`` / ``step_consistency``), ask the verifier to
critique it, then to merge verification and critique into a final verification (SPARK §1). Both
calls are greedy (``critique_temperature``, paper: 0) with n=1; the merged verification is parsed
like any other and gives the labels (`spark_hub.stages.aggregate.apply_merged`). The critique is
kept verbatim (``parse_status="not_parsed"``).

With ``verifier.constrained`` the merge is constrained like a verification (one block per solution
step, then the final verdict) and the critique must open with its heading (`spark_hub.constrained`);
with ``verifier.logprobs`` the merge asks for logprobs, so merged rows carry verdict probabilities.
"""

from __future__ import annotations

from typing import Any, Protocol

from spark_hub.backends.base import Completion, GenerationRequest
from spark_hub.constrained import critique_constraint, verification_constraint
from spark_hub.parsing import strip_think
from spark_hub.prompts import critique_messages, merge_messages
from spark_hub.records import Problem, Solution, Verification
from spark_hub.stages.aggregate import Aggregate, AggregationConfig, apply_merged
from spark_hub.stages.verify import parse_verifications


class _Item(Protocol):
    """One solution on its way to a step record (`spark_hub.stages.build.Labelled`)."""

    problem: Problem
    solution: Solution
    verifications: list[Verification]
    aggregate: Aggregate
    critique: Verification | None
    merged: Verification | None


def critique_sampling(config: AggregationConfig) -> dict[str, Any]:
    """Sampling of the critique and merge calls: n=1 at ``critique_temperature``."""
    return {"n": 1, "temperature": config.critique_temperature, "top_p": 1.0,
            "max_tokens": config.critique_max_tokens}


def critique_request(problem: Problem, solution: Solution, verification: str, sampling: dict,
                     seed: int, *, constrained: bool = False) -> GenerationRequest:
    """The critique request for one verification text of ``solution`` (free text; constrained: it
    must open with the critique heading)."""
    messages = critique_messages(problem.problem, solution.steps, solution.final_answer, verification)
    constraint = critique_constraint() if constrained else None
    return GenerationRequest.from_chat(messages, seed=seed, constraint=constraint, **sampling)


def merge_request(problem: Problem, solution: Solution, verification: str, critique: str, sampling: dict,
                  seed: int, *, constrained: bool = False, logprobs: bool = False) -> GenerationRequest:
    """The merge request: the verification and its critique (think blocks stripped); constrained
    like a verification of ``solution``."""
    messages = merge_messages(problem.problem, solution.steps, solution.final_answer, verification,
                              strip_think(critique))
    constraint = verification_constraint(len(solution.steps)) if constrained and solution.steps else None
    return GenerationRequest.from_chat(messages, seed=seed, constraint=constraint, logprobs=logprobs, **sampling)


def critique_verification(solution: Solution, completion: Completion, verifier: str) -> Verification:
    """A critique row: kept verbatim, not parsed into verdicts."""
    return Verification(
        problem_id=solution.problem_id, solution_index=solution.index, index=0, verifier=verifier,
        raw_text=completion.text, text=strip_think(completion.text), step_verdicts=[], final_verdict=None,
        parse_status="not_parsed", expected_steps=len(solution.steps), finish_reason=completion.finish_reason,
        completion_tokens=completion.completion_tokens, kind="critique",
    )


def meta_critique(items: list[_Item], verifier, config: AggregationConfig, seed: int, *,
                  verifier_id: str, bar=None, constrained: bool = False, logprobs: bool = False) -> int:
    """Critique, then merge, the selected verification of every labelled item, in place.

    Items that are unlabelled or have no selected verification are left as they are. ``verifier``
    is a `spark_hub.cache.CachedBackend`; ``bar`` an optional `spark_hub.progress.StageProgress`
    with ``critique`` and ``merge`` tasks. Returns the completion tokens of both calls.
    """
    sampling = critique_sampling(config)
    todo = [item for item in items if item.aggregate.status == "ok" and item.aggregate.selected is not None]
    if bar is not None:
        for task in ("critique", "merge"):  # unlabelled solutions have nothing to critique
            bar.advance(task, len(items) - len(todo))
    base_texts = [item.verifications[item.aggregate.selected].text for item in todo]
    requests = [critique_request(item.problem, item.solution, text, sampling, seed, constrained=constrained)
                for item, text in zip(todo, base_texts)]
    critiques = verifier.generate(requests, on_batch=bar.on_batch("critique") if bar is not None else None)
    requests = [merge_request(item.problem, item.solution, text, out[0].text, sampling, seed,
                              constrained=constrained, logprobs=logprobs)
                for item, text, out in zip(todo, base_texts, critiques)]
    merges = verifier.generate(requests, on_batch=bar.on_batch("merge") if bar is not None else None)
    tokens = 0
    for item, crit, merged in zip(todo, critiques, merges):
        tokens += crit[0].completion_tokens + merged[0].completion_tokens
        item.critique = critique_verification(item.solution, crit[0], verifier_id)
        item.merged = parse_verifications(item.solution, merged, verifier_id, kind="merged")[0]
        item.aggregate = apply_merged(item.aggregate, item.merged, len(item.solution.steps))
    return tokens
