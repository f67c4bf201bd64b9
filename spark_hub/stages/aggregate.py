"""Turn N parsed verifications of one solution into step labels (SPARK §1, "Aggregation").

Pure functions, no model calls. Definitions (all configurable through `AggregationConfig`):

- A verification is **complete** when it parsed with status ``ok``: one verdict for every step of
  the solution and a final verdict.
- **Outcome vote**: every verification with a final verdict votes Yes/No.
- **Step votes**: with ``step_mismatch="drop"`` (default) only verifications with exactly one
  verdict per solution step vote on steps; with ``"align"`` a verification votes on the steps it
  covers (block k -> step k), extra blocks are ignored and missing verdicts abstain.
- **Ties** (equal votes) follow ``tie_break``: ``incorrect`` (default; a step nobody can agree on
  is not trusted), ``correct``, or ``drop`` (the solution stays unlabelled with status ``tie``).
- **Methods**:
  ``single``: labels of the first complete verification (the N=1 baseline).
  ``meta_critique`` / ``hybrid_outcome`` / ``hybrid_step``: the verification selected by
  ``single`` / ``outcome_consistency`` / ``step_consistency`` is critiqued and merged (two more
  calls, see `apply_merged`); the merged verification gives the labels and the CoT target.
  ``reference_guided``: ``step_consistency`` over verifications that saw the reference answer
  (the paper's ceiling baseline; such datasets are flagged as using references).
  ``outcome_consistency``: majority final verdict y*; labels of the first complete verification
  whose final verdict equals y*.
  ``step_consistency`` (the paper's winner): per-step majority labels, final label = y*.
- **Probabilities** (backends that return logprobs): ``step_probs`` is, per step, the mean P(correct)
  over the verifications that voted on that step; ``final_prob`` the mean P(Yes) over those with a
  final verdict. Soft labels kept beside the votes; they never change the labels.
- **PRM-CoT target**: the text of the selected verification. For ``step_consistency`` it is the
  first complete verification whose step labels AND final verdict equal the aggregate; when none
  does, ``cot_target="closest"`` (default) takes the complete verification agreeing on the most
  labels (lowest index on ties) and marks ``cot_exact_match=False``, ``"exact"`` leaves it empty.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from spark_hub.errors import SparkHubError
from spark_hub.parsing import OK, ParsedVerification
from spark_hub.records import StepLabels

VOTE_METHODS = ("single", "outcome_consistency", "step_consistency")
#: Meta-critique methods and the vote method whose selected verification they critique.
META_METHODS = {"meta_critique": "single", "hybrid_outcome": "outcome_consistency", "hybrid_step": "step_consistency"}
METHODS = VOTE_METHODS + tuple(META_METHODS) + ("reference_guided",)
TIE_BREAKS = ("incorrect", "correct", "drop")
STEP_MISMATCH = ("drop", "align")
COT_TARGETS = ("closest", "exact")


@dataclass
class AggregationConfig:
    """How N verifications become labels. See the module docstring for exact semantics."""

    method: str = field(
        default="step_consistency",
        metadata={"help": f"Aggregation method: {', '.join(METHODS)}."},
    )
    critique_temperature: float = field(
        default=0.0, metadata={"help": "Meta-critique: temperature of the critique and merge calls (paper: 0)."}
    )
    critique_max_tokens: int = field(
        default=2048, metadata={"help": "Meta-critique: max new tokens of the critique and merge calls."}
    )
    tie_break: str = field(
        default="incorrect",
        metadata={"help": "Equal votes: `incorrect` (default), `correct`, or `drop` (leave unlabelled)."},
    )
    step_mismatch: str = field(
        default="drop",
        metadata={"help": "Verifications with a different step count: `drop` from step votes, or `align` by position."},
    )
    cot_target: str = field(
        default="closest",
        metadata={"help": "PRM-CoT target when no verification matches the aggregate exactly: `closest` or `exact` (none)."},
    )

    def __post_init__(self):
        for name, valid in (
            ("method", METHODS),
            ("tie_break", TIE_BREAKS),
            ("step_mismatch", STEP_MISMATCH),
            ("cot_target", COT_TARGETS),
        ):
            value = getattr(self, name)
            if value not in valid:
                raise SparkHubError(
                    f"aggregation.{name} must be one of {', '.join(valid)}, got {value!r}",
                    hint=f"--set aggregation.{name}={valid[0]}",
                )


@dataclass(kw_only=True)
class Aggregate(StepLabels):
    """The aggregated labels of one solution: the label columns of a `StepRecord` (declared once,
    in `spark_hub.records.StepLabels`) plus which verification became the PRM-CoT target.
    `StepRecord.from_labels` builds the record from it."""

    selected: int | None = None
    """Index of the verification whose text is the PRM-CoT target."""
    exact_match: bool | None = None


def base_method(method: str) -> str:
    """The vote method behind ``method`` (meta-critique methods critique its selection;
    ``reference_guided`` votes like ``step_consistency`` over reference-guided verifications)."""
    if method in META_METHODS:
        return META_METHODS[method]
    return "step_consistency" if method == "reference_guided" else method


def _majority(yes: int, no: int, tie_break: str) -> bool | None:
    """True/False by majority; ties per ``tie_break`` (None means drop)."""
    if yes > no:
        return True
    if no > yes:
        return False
    if yes == 0:
        return None
    return {"incorrect": False, "correct": True, "drop": None}[tie_break]


def _step_voters(verifications: list[ParsedVerification], n_steps: int, step_mismatch: str) -> list:
    """The verifications that vote on steps: with ``drop``, only those with one verdict per step."""
    voters = []
    for v in verifications:
        if not v.step_verdicts:
            continue
        if (len(v.step_verdicts) != n_steps or None in v.step_verdicts) and step_mismatch == "drop":
            continue
        voters.append(v)
    return voters


def _step_votes(voters: list[ParsedVerification], n_steps: int) -> tuple[list[int], list[int]]:
    correct = [0] * n_steps
    incorrect = [0] * n_steps
    for v in voters:
        for i, verdict in enumerate(v.step_verdicts[:n_steps]):
            if verdict is True:
                correct[i] += 1
            elif verdict is False:
                incorrect[i] += 1
    return correct, incorrect


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def step_probabilities(voters: list[ParsedVerification], n_steps: int) -> list[float | None] | None:
    """Per step, the mean P(correct) over the voters that gave a verdict AND a probability for it.

    None when no voter carries ``step_probs`` (a backend without logprobs); a step no voter gave a
    probability for is None.
    """
    sums = [0.0] * n_steps
    counts = [0] * n_steps
    for v in voters:
        probs = getattr(v, "step_probs", None)
        if not probs:
            continue
        for i, (verdict, p) in enumerate(zip(v.step_verdicts[:n_steps], probs)):
            if verdict is not None and p is not None:
                sums[i] += p
                counts[i] += 1
    if not any(counts):
        return None
    return [s / c if c else None for s, c in zip(sums, counts)]


def _is_complete(v: ParsedVerification, n_steps: int) -> bool:
    return v.status == OK and len(v.step_verdicts) == n_steps


def aggregate(
    verifications: list[ParsedVerification], n_steps: int, config: AggregationConfig
) -> Aggregate:
    """Aggregate the parsed verifications of one solution with ``n_steps`` steps.

    >>> from spark_hub.parsing import ParsedVerification as P
    >>> vs = [P("a", [True, False], False), P("b", [True, True], True), P("c", [True, False], False)]
    >>> agg = aggregate(vs, 2, AggregationConfig())
    >>> agg.labels, agg.final_label, agg.selected
    ([True, False], False, 0)
    """
    # A verification parsed with an explicit step count mismatch is still "ok" for this solution
    # if its block count happens to equal n_steps (statuses are computed with expected_steps).
    complete = [i for i, v in enumerate(verifications) if _is_complete(v, n_steps)]
    yes = sum(1 for v in verifications if v.final_verdict is True)
    no = sum(1 for v in verifications if v.final_verdict is False)
    voters = _step_voters(verifications, n_steps, config.step_mismatch)
    votes_c, votes_i = _step_votes(voters, n_steps)
    agreement = [
        (max(c, w) / (c + w)) if (c + w) else None for c, w in zip(votes_c, votes_i)
    ]
    base = dict(
        votes_correct=votes_c,
        votes_incorrect=votes_i,
        agreement=agreement,
        step_probs=step_probabilities(voters, n_steps),
        final_votes_yes=yes,
        final_votes_no=no,
        final_prob=_mean([p for v in verifications if v.final_verdict is not None
                          and (p := getattr(v, "final_prob", None)) is not None]),
        n_parsed=len(complete),
    )

    def unlabelled(status: str) -> Aggregate:
        return Aggregate(status=status, labels=None, final_label=None, **base)

    if n_steps == 0:
        return unlabelled("no_steps")

    method = base_method(config.method)
    if method == "single":
        if not complete:
            return unlabelled("no_valid_verification")
        i = complete[0]
        v = verifications[i]
        return Aggregate(
            status="ok", labels=list(v.step_verdicts), final_label=v.final_verdict,
            selected=i, exact_match=True, **base,
        )

    final = _majority(yes, no, config.tie_break)
    if yes + no == 0:
        return unlabelled("no_valid_verification")
    if final is None:
        return unlabelled("tie")

    if method == "outcome_consistency":
        for i in complete:
            if verifications[i].final_verdict is final:
                v = verifications[i]
                return Aggregate(
                    status="ok", labels=list(v.step_verdicts), final_label=final,
                    selected=i, exact_match=True, **base,
                )
        return unlabelled("no_consistent_verification")

    if method == "step_consistency":
        if sum(votes_c) + sum(votes_i) == 0:
            return unlabelled("no_valid_verification")
        labels = []
        for c, w in zip(votes_c, votes_i):
            label = _majority(c, w, config.tie_break)
            if label is None:
                if c + w == 0:  # a step no verification covered (align mode): cannot label
                    return unlabelled("no_valid_verification")
                return unlabelled("tie")
            labels.append(label)
        selected, exact = _select_cot(verifications, complete, labels, final, config.cot_target)
        return Aggregate(
            status="ok", labels=labels, final_label=final, selected=selected,
            exact_match=exact, **base,
        )

    raise SparkHubError(f"unknown aggregation method {config.method!r}", hint=f"valid: {', '.join(METHODS)}")


def apply_merged(base: Aggregate, merged: ParsedVerification | None, n_steps: int) -> Aggregate:
    """Meta-critique: the merged verification's labels replace the base selection's.

    The merged text must parse completely (one verdict per step and a final verdict); otherwise the
    solution stays unlabelled with status ``merge_failed``. Votes and agreement stay those of the N
    sampled verifications.
    """
    if base.status != "ok" or merged is None:
        return base
    if merged.status != OK or len(merged.step_verdicts) != n_steps:
        return dataclasses.replace(base, status="merge_failed", labels=None, final_label=None,
                                   selected=None, exact_match=None)
    return dataclasses.replace(base, labels=list(merged.step_verdicts), final_label=merged.final_verdict,
                               exact_match=True)


def _select_cot(
    verifications: list[ParsedVerification],
    complete: list[int],
    labels: list[bool],
    final: bool,
    policy: str,
) -> tuple[int | None, bool | None]:
    """Pick the verification whose text becomes the PRM-CoT target for aggregated labels."""
    best, best_score = None, -1
    for i in complete:
        v = verifications[i]
        score = sum(a == b for a, b in zip(v.step_verdicts, labels)) + (v.final_verdict is final)
        if score == len(labels) + 1:
            return i, True
        if score > best_score:
            best, best_score = i, score
    if policy == "closest" and best is not None:
        return best, False
    return None, None


__all__ = ["AggregationConfig", "Aggregate", "aggregate", "apply_merged", "base_method", "METHODS", "META_METHODS"]
