"""Stage I statistics: streamed over the rows a build writes, stored in the manifest.

`LabelStats` keeps constant memory whatever the build size. `labelling_warning` turns statistics
that mean "this build produced (almost) no labels" into one loud message with what to try.

Agreement figures come with the votes behind them: ``mean_step_agreement`` 1.0 means little when
every step had a single vote, so ``mean_votes_per_step`` and ``single_vote_steps`` are reported
beside it.
"""

from __future__ import annotations

from typing import Any

AGREEMENT_STEPS = 30  # agreement_by_step covers steps 1..30
LOW_LABELLED_FRACTION = 0.5
"""Below this fraction of labelled solutions (or above this parse-failure rate) a build warns."""


class LabelStats:
    """Streaming statistics over step records and verifications (constant memory)."""

    def __init__(self):
        self.problems = 0
        self.solutions = 0
        self.solution_status: dict[str, int] = {}
        self.verifications = 0
        self.verification_status: dict[str, int] = {}
        self.record_status: dict[str, int] = {}
        self.steps_correct = 0
        self.steps_incorrect = 0
        self.final_yes = 0
        self.final_no = 0
        self.agreement_sum = 0.0
        self.agreement_n = 0
        self.votes_sum = 0
        self.single_vote_steps = 0
        self.unanimous = 0
        self.by_step_sum = [0.0] * AGREEMENT_STEPS
        self.by_step_n = [0] * AGREEMENT_STEPS
        self.cot_exact = 0
        self.cot_targets = 0
        self.tokens: dict[str, int] = {"generator": 0, "verifier": 0}
        self.kept_problems: set[str] = set()
        self.meta_calls: dict[str, int] = {}
        self.merge_status: dict[str, int] = {}

    @staticmethod
    def _bump(d: dict[str, int], key: str) -> None:
        d[key] = d.get(key, 0) + 1

    def add_record_row(self, record: dict[str, Any]) -> None:
        self.solutions += 1
        self.kept_problems.add(record["problem_id"])
        self._bump(self.solution_status, record["solution_status"])
        self._bump(self.record_status, record["status"])
        labels = record["labels"]
        if labels is not None:
            n_ok = sum(labels)
            self.steps_correct += n_ok
            self.steps_incorrect += len(labels) - n_ok
            if record["final_label"]:
                self.final_yes += 1
            else:
                self.final_no += 1
            yes_votes = record.get("votes_correct") or []
            no_votes = record.get("votes_incorrect") or []
            for i, a in enumerate(record["agreement"]):
                if a is None:
                    continue
                self.agreement_sum += a
                self.agreement_n += 1
                self.unanimous += a == 1.0
                votes = (yes_votes[i] if i < len(yes_votes) else 0) + (no_votes[i] if i < len(no_votes) else 0)
                self.votes_sum += votes
                self.single_vote_steps += votes == 1
                if i < AGREEMENT_STEPS:
                    self.by_step_sum[i] += a
                    self.by_step_n[i] += 1
            if record["cot_target"] is not None:
                self.cot_targets += 1
                self.cot_exact += bool(record["cot_exact_match"])

    def add_verification_status(self, status: str, kind: str = "sample") -> None:
        if kind != "sample":
            self._bump(self.meta_calls, kind)
            if kind == "merged":
                self._bump(self.merge_status, status)
            return
        self.verifications += 1
        self._bump(self.verification_status, status)

    def to_dict(self) -> dict[str, Any]:
        labelled = self.record_status.get("ok", 0)
        steps = self.steps_correct + self.steps_incorrect
        failures = self.verifications - self.verification_status.get("ok", 0)
        by_step = [round(s / n, 4) for s, n in zip(self.by_step_sum, self.by_step_n) if n]
        return {
            "problems": self.problems,
            "solutions": self.solutions,
            "solution_status": dict(sorted(self.solution_status.items())),
            "verifications": self.verifications,
            "verification_status": dict(sorted(self.verification_status.items())),
            "parse_failure_rate": round(failures / self.verifications, 4) if self.verifications else 0.0,
            "records": self.solutions,
            "records_labelled": labelled,
            "record_status": dict(sorted(self.record_status.items())),
            "steps_labelled": steps,
            "steps_correct": self.steps_correct,
            "steps_incorrect": self.steps_incorrect,
            "step_label_balance": round(self.steps_correct / steps, 4) if steps else None,
            "final_yes": self.final_yes,
            "final_no": self.final_no,
            "final_label_balance": round(self.final_yes / labelled, 4) if labelled else None,
            "mean_step_agreement": round(self.agreement_sum / self.agreement_n, 4) if self.agreement_n else None,
            "mean_votes_per_step": round(self.votes_sum / self.agreement_n, 4) if self.agreement_n else None,
            "single_vote_steps": self.single_vote_steps,
            "unanimous_step_rate": round(self.unanimous / self.agreement_n, 4) if self.agreement_n else None,
            "agreement_by_step": by_step,
            "cot_exact_match_rate": round(self.cot_exact / self.cot_targets, 4) if self.cot_targets else None,
            "completion_tokens": dict(self.tokens),
            "meta_critique": {"calls": dict(sorted(self.meta_calls.items())),
                              "merge_status": dict(sorted(self.merge_status.items()))} if self.meta_calls else None,
        }


def labelling_warning(statistics: dict[str, Any], *, constrained: bool = False) -> str | None:
    """One message when a build labelled nothing or nearly nothing, else None.

    It gives the figures (labelled solutions, unparsable verifications by status, votes per step)
    and what to try: constrained decoding (unless it is on already), another verifier, more tokens
    when verifications were cut off.
    """
    solutions = statistics.get("records", 0)
    labelled = statistics.get("records_labelled", 0)
    verifications = statistics.get("verifications", 0)
    status = statistics.get("verification_status", {})
    failed = verifications - status.get("ok", 0)
    if not solutions:
        return None
    low_labels = labelled < LOW_LABELLED_FRACTION * solutions
    low_parse = verifications > 0 and failed > LOW_LABELLED_FRACTION * verifications
    if not (low_labels or low_parse):
        return None
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(status.items(), key=lambda kv: -kv[1]) if k != "ok")
    text = f"only {labelled} of {solutions} solution(s) labelled"
    if verifications:
        text += f"; {failed} of {verifications} verification(s) did not parse" + (f" ({reasons})" if reasons else "")
    votes = statistics.get("mean_votes_per_step")
    if votes is not None:
        text += f"; {votes:g} vote(s) per labelled step on average"
    tries = []
    if not constrained:
        tries.append("constrained decoding (--set verifier.constrained=true)")
    tries.append("another verifier (--set verifier.model=...)")
    if status.get("no_final_verdict"):  # often a verification cut off at max_tokens
        tries.append("more tokens (--set verifier.max_tokens=...)")
    return f"{text}. The verifier does not follow the verification format; try {', or '.join(tries)}"
