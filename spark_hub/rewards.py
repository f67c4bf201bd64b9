r"""Reward functions for GRPO on math with a (process) reward model: SPARK §3.

Every reward has TRL's reward-function signature::

    reward(prompts, completions, completion_ids=None, **kwargs) -> list[float | None]

``completions`` are strings or conversational lists of messages; ``kwargs`` carries the dataset
columns (``problem``, ``answer``...), ``trainer_state``, ``log_extra`` and ``log_metric`` (all
optional here). Pass them to `trl.GRPOTrainer` (``reward_funcs=[...]``) or build them by name with
`make_reward_funcs`.

The policy writes its reasoning in ``<step>…</step>`` blocks and its final answer as
``<answer> … \boxed{…} </answer>`` (`policy_messages` asks for exactly that). The tags are plain
text, not special tokens: TRL decodes completions with ``skip_special_tokens=True``, which would
erase special tags from what rewards see.

======================== =========================================================================
name                     reward of one completion (0 whenever the format is invalid)
======================== =========================================================================
``format_validity``      1 when the format is valid (`check_format`), else 0
``prm_outcome``          the PRM's final verdict y ∈ {0, 1} ("process-aware": the verdict comes
                         from a step-by-step verification)
``prm_step_augmented``   0.4·k/n + 0.6·y, k of the n policy steps judged correct
``orm``                  the outcome verdict of an outcome reward model (same rule as prm_outcome)
``rlvr``                 math-verify of the boxed answer against the reference column
``random``               a seeded random 0 or 1 (the paper's sanity baseline)
``majority_vote``        1 when the answer agrees with the majority answer of the completions of
                         the same prompt (TTRL-style online self-consistency, no reference)
======================== =========================================================================

Anti-hacking: a completion is cut at its first ``</answer>`` before anything scores it
(`cut_at_answer`), and its format must be valid (exactly one ``\boxed{}``, exactly one
``<answer>…</answer>``, nothing but whitespace after ``</answer>``): appended solutions and text
after the answer earn 0. Step-count guards against step inflation/reduction act on the token-level
advantages (`spark_hub.advantages`).

PRM rewards (`PRMReward`, `AsyncPRMReward`) take a PRM from `spark_hub.prm.load_prm` and score the
format-valid completions of a whole rollout batch with ONE ``prm.score_batch`` call. The PRM builds
its own prompt from its spec (``prm_spec.json``: ORM, PRM or PRM-CoT template, step and answer
format); a reward never chooses the prompt, so a PRM-CoT model always gets the PRM-CoT prompt
whatever the reward design (the paper's code sent the ORM prompt to it for two designs).

Step details for token-level advantages: after each call, a reward function made here holds
``last_details``, one dict per completion in call order::

    {"valid_format": bool, "format_reason": str, "n_steps": int,          # policy steps after the cut
     "step_labels": [True, False, None, ...] | None,                     # PRM verdicts (None: not scored)
     "prm_n_steps": int,     # == n_steps when the labels line up with the policy's steps, else -1
     "final_verdict": bool | None, "status": str, "answer": str | None,
     "token_spans": [(start, end), ...] | None}                           # with a tokenizer + completion_ids

A `trl.GRPOTrainer` subclass reads ``reward.last_details`` right after the rewards of a generation
batch are computed (same order as its local completions); `spark_hub.advantages.pack_details` turns
them into tensors and `spark_hub.advantages.step_index` maps the policy's steps to token positions.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import random as _random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from spark_hub.errors import SparkHubError

logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------
# The policy's output format
# ------------------------------------------------------------------------------------------------

#: The policy instruction (the paper's exact RL instruction text was not published; this asks for
#: the format its reward code checks).
POLICY_SYSTEM = (
    "Solve the math problem step by step. Write each step of your reasoning inside <step> and </step> tags. "
    "After the last step, give the final answer inside <answer> and </answer> tags, with the answer itself "
    "in \\boxed{}, for example: <answer>The answer is \\boxed{42}.</answer> Write nothing after </answer>."
)

STEP_OPEN, STEP_CLOSE = "<step>", "</step>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

_STEP_RE = re.compile(r"<step>(.*?)</step>", re.DOTALL)
_BOXED_RE = re.compile(r"\\boxed\s*\{")


def policy_messages(problem: str, *, system: str | None = POLICY_SYSTEM) -> list[dict[str, str]]:
    """The chat prompt of the policy for one problem (system instruction + the problem).

    >>> [m["role"] for m in policy_messages("What is 2+2?")]
    ['system', 'user']
    """
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": problem}]


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or the contents of a conversational list of messages
    (assistant messages joined by newlines; messages without a role count as assistant).

    >>> completion_text([{"role": "assistant", "content": "<step>x</step>"}])
    '<step>x</step>'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        return str(completion.get("content") or "")
    if isinstance(completion, (list, tuple)):
        parts = [m.get("content") or "" for m in completion
                 if isinstance(m, Mapping) and m.get("role", "assistant") == "assistant"]
        return "\n".join(p if isinstance(p, str) else str(p) for p in parts)
    return "" if completion is None else str(completion)


def prompt_problem(prompt: Any) -> str:
    """The problem in a policy prompt: the last user message of a conversation, or the string."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)):
        users = [m.get("content") or "" for m in prompt if isinstance(m, Mapping) and m.get("role") == "user"]
        if users:
            return str(users[-1])
        return completion_text(prompt)
    return "" if prompt is None else str(prompt)


def cut_at_answer(text: str) -> str:
    r"""The response up to and including its first ``</answer>`` (what any RM is shown).

    >>> cut_at_answer("<step>a</step><answer>\\boxed{1}</answer> Problem 2: ...")
    '<step>a</step><answer>\\boxed{1}</answer>'
    >>> cut_at_answer("no answer tag")
    'no answer tag'
    """
    end = text.find(ANSWER_CLOSE)
    return text if end < 0 else text[: end + len(ANSWER_CLOSE)]


def boxed_contents(text: str) -> list[str]:
    r"""The contents of every ``\boxed{...}`` in ``text``, nested braces included, in order.

    >>> boxed_contents(r"\boxed{\frac{1}{2}} and \boxed{3}")
    ['\\frac{1}{2}', '3']
    """
    out = []
    for m in _BOXED_RE.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end(): i - 1].strip())
    return out


@dataclass(frozen=True)
class FormatCheck:
    """Whether a response has the policy format, and if not, the first rule it breaks."""

    valid: bool
    reason: str = "ok"


def check_format(text: str) -> FormatCheck:
    r"""The paper's format rules: exactly one ``\boxed{}``, exactly one ``<answer>…</answer>``
    (opening before closing) and nothing but whitespace after ``</answer>``.

    Reasons: ``ok``, ``boxed_count``, ``answer_tag_count``, ``answer_tag_order``, ``text_after_answer``.

    >>> check_format("<step>2+2=4</step><answer>\\boxed{4}</answer>\n")
    FormatCheck(valid=True, reason='ok')
    >>> check_format("<step>2+2=4</step><answer>\\boxed{4}</answer> Next problem: ...").reason
    'text_after_answer'
    >>> check_format("<answer>\\boxed{4}</answer><answer>\\boxed{5}</answer>").reason
    'boxed_count'
    """
    if len(_BOXED_RE.findall(text)) != 1:
        return FormatCheck(False, "boxed_count")
    if text.count(ANSWER_OPEN) != 1 or text.count(ANSWER_CLOSE) != 1:
        return FormatCheck(False, "answer_tag_count")
    start, end = text.find(ANSWER_OPEN), text.find(ANSWER_CLOSE)
    if start > end:
        return FormatCheck(False, "answer_tag_order")
    if text[end + len(ANSWER_CLOSE):].strip():
        return FormatCheck(False, "text_after_answer")
    return FormatCheck(True)


def final_answer(text: str) -> str | None:
    r"""The answer of a response: the last ``\boxed{}`` inside ``<answer>…</answer>`` (after the
    cut), else the last one anywhere; None when there is none.

    >>> final_answer("<step>so 6</step><answer>It is \\boxed{6}.</answer>")
    '6'
    """
    text = cut_at_answer(text)
    start, end = text.find(ANSWER_OPEN), text.find(ANSWER_CLOSE)
    if 0 <= start < end:
        inner = boxed_contents(text[start:end])
        if inner:
            return inner[-1]
    found = boxed_contents(text)
    return found[-1] if found else None


@dataclass
class PolicyOutput:
    """A policy response read for rewards: everything refers to ``text`` (the response cut at
    ``</answer>``)."""

    text: str
    steps: list[str]
    """The stripped text inside each ``<step>…</step>``."""
    spans: list[tuple[int, int]]
    """``[start, end)`` character span of each step in ``text``, tags included."""
    answer: str | None
    format: FormatCheck
    tagged: bool = True
    """False when the response has no ``<step>`` tags (then the reasoning before ``<answer>``
    is one step)."""

    @property
    def n_steps(self) -> int:
        return len(self.steps) if self.tagged else 0


def parse_policy_output(completion: Any) -> PolicyOutput:
    r"""Cut a response at ``</answer>``, check its format, and find its steps and answer.

    Steps without tags: the reasoning before ``<answer>`` is handed to the PRM as ONE step, but
    ``n_steps`` is 0 (the policy wrote no steps; step-count guards treat it as too few).

    >>> out = parse_policy_output("<step>3*4 = 12</step>\n<step>2+12 = 14</step>\n<answer>\\boxed{14}</answer>")
    >>> out.steps, out.spans, out.answer, out.format.valid
    (['3*4 = 12', '2+12 = 14'], [(0, 21), (22, 44)], '14', True)
    """
    raw = completion_text(completion)
    text = cut_at_answer(raw)
    fmt = check_format(raw)
    steps, spans = [], []
    for m in _STEP_RE.finditer(text):
        steps.append(m.group(1).strip())
        spans.append((m.start(), m.end()))
    tagged = bool(steps)
    if not tagged:
        head = text.split(ANSWER_OPEN, 1)[0]
        if head.strip():
            start = len(head) - len(head.lstrip())
            steps, spans = [head.strip()], [(start, start + len(head.strip()))]
    return PolicyOutput(text=text, steps=steps, spans=spans, answer=final_answer(text), format=fmt, tagged=tagged)


# ------------------------------------------------------------------------------------------------
# Character spans -> token positions
# ------------------------------------------------------------------------------------------------


def decode_with_offsets(completion_ids: Sequence[int], tokenizer: Any, *, fast: bool = True) -> tuple[str, list[int]]:
    """Decode ``completion_ids`` as TRL does (``skip_special_tokens=True``) and return the text and,
    for every token, the character offset in it where the token's text starts.

    Fast path (``fast=True``, fast tokenizers): re-encode the text with offsets; used only when it
    gives back exactly the same ids (special tokens aside, which take no width). Otherwise decode
    incrementally (a short window per token, as streaming detokenizers do), so a character split
    over several byte-level tokens lands on the token that completes it; and when even those pieces
    do not add up to the text, decode every prefix (exact, quadratic).
    """
    ids = [int(i) for i in completion_ids]

    def decode(part: Sequence[int]) -> str:
        return tokenizer.decode(part, skip_special_tokens=True)

    text = decode(ids)
    if fast and getattr(tokenizer, "is_fast", False):
        offsets = _offsets_by_reencoding(ids, text, tokenizer)
        if offsets is not None:
            return text, offsets
    offsets: list[int] = []
    pieces: list[str] = []
    prefix, read = 0, 0
    pending = 0
    position = 0
    for i in range(len(ids)):
        pending += 1
        before = decode(ids[prefix:read])
        after = decode(ids[prefix: i + 1])
        if len(after) > len(before) and after.startswith(before) and not after.endswith("\ufffd"):
            piece = after[len(before):]
            offsets.extend([position] * pending)
            pending = 0
            pieces.append(piece)
            position += len(piece)
            prefix, read = read, i + 1
    offsets.extend([position] * pending)
    if "".join(pieces) == text:
        return text, offsets
    # rare (tokenizers whose clean-up rewrites earlier text): exact but quadratic
    logger.debug("incremental decoding did not reproduce the text; decoding every prefix")
    offsets = [min(len(decode(ids[:i])), len(text)) for i in range(len(ids))]
    return text, offsets


def _offsets_by_reencoding(ids: list[int], text: str, tokenizer: Any) -> list[int] | None:
    """Token start offsets from the fast tokenizer's offset mapping, or None when re-encoding
    ``text`` does not reproduce ``ids`` (special tokens excluded)."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    kept = [i for i in ids if i not in special]
    try:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    except Exception:  # a tokenizer without offsets support
        return None
    if list(encoded["input_ids"]) != kept:
        return None
    mapping = iter(encoded["offset_mapping"])
    offsets, position = [], 0
    for token in ids:
        if token in special:
            offsets.append(position)
            continue
        start, end = next(mapping)
        position = max(position, start)
        offsets.append(position)
        position = max(position, end) if end > start else position
    return offsets


def token_spans(offsets: Sequence[int], text_length: int, spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``[first, last + 1)`` token range of each character span, given token start ``offsets``.

    A token belongs to a span when its characters overlap it (zero-width tokens: when they sit
    inside it). A span no token overlaps gets ``(k, k)`` (empty).

    >>> token_spans([0, 3, 6, 9], 12, [(0, 6), (7, 12)])
    [(0, 2), (2, 4)]
    """
    ends = list(offsets[1:]) + [text_length]
    out = []
    for s, e in spans:
        members = [i for i, (a, b) in enumerate(zip(offsets, ends))
                   if (a < e and b > s) or (a == b and s <= a < e)]
        if members:
            out.append((members[0], members[-1] + 1))
        else:
            k = next((i for i, a in enumerate(offsets) if a >= s), len(offsets))
            out.append((k, k))
    return out


def step_token_spans(completion_ids: Sequence[int], tokenizer: Any) -> tuple[PolicyOutput, list[tuple[int, int]]]:
    """Parse the decoded completion and map each ``<step>…</step>`` (tags included) to its token
    range ``[first, end)`` in ``completion_ids``. Steps after ``</answer>`` are not steps."""
    text, offsets = decode_with_offsets(completion_ids, tokenizer)
    parsed = parse_policy_output(text)
    spans = parsed.spans if parsed.tagged else []
    return parsed, token_spans(offsets, len(text), spans)


# ------------------------------------------------------------------------------------------------
# Reward functions
# ------------------------------------------------------------------------------------------------


class RewardFunction:
    """Base of the reward callables made here: a TRL reward function with a ``__name__`` (TRL logs
    ``rewards/<name>/mean``) and ``last_details`` (per-completion details of the last call)."""

    def __init__(self, name: str):
        self.__name__ = name
        self.last_details: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        return f"<reward {self.__name__}>"

    def _log(self, kwargs: Mapping[str, Any], parsed: Sequence[PolicyOutput], extra: Mapping[str, float] = ()) -> None:
        log_metric = kwargs.get("log_metric")
        if not callable(log_metric) or not parsed:
            return
        n = len(parsed)
        log_metric(f"{self.__name__}/format_violations", sum(not p.format.valid for p in parsed) / n)
        log_metric(f"{self.__name__}/mean_steps", sum(p.n_steps for p in parsed) / n)
        for key, value in dict(extra).items():
            log_metric(f"{self.__name__}/{key}", value)


def _parse_all(completions: Sequence[Any]) -> list[PolicyOutput]:
    return [parse_policy_output(c) for c in completions]


def _base_details(p: PolicyOutput) -> dict[str, Any]:
    return {"valid_format": p.format.valid, "format_reason": p.format.reason, "n_steps": p.n_steps,
            "step_labels": None, "prm_n_steps": -1, "final_verdict": None, "status": "not_scored",
            "answer": p.answer, "token_spans": None}


class FormatValidity(RewardFunction):
    r"""1.0 when the response has the policy format (`check_format`), else 0.0.

    >>> format_validity(None, ["<step>1+1=2</step><answer>\\boxed{2}</answer>",
    ...                        "<answer>\\boxed{2}</answer> and also \\boxed{3}"])
    [1.0, 0.0]
    """

    def __init__(self, name: str = "format_validity"):
        super().__init__(name)

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        parsed = _parse_all(completions)
        self.last_details = [_base_details(p) for p in parsed]
        self._log(kwargs, parsed)
        return [1.0 if p.format.valid else 0.0 for p in parsed]


#: ``format_validity(prompts, completions, ...)``: 1.0 for a valid format, else 0.0.
format_validity = FormatValidity()


DESIGNS = ("outcome", "step_augmented")


class PRMReward(RewardFunction):
    r"""A PRM-scored reward: ONE ``prm.score_batch`` call per rollout batch.

    Args:
        prm: a PRM from `spark_hub.prm.load_prm` (anything with ``score_batch(items) ->
            [StepScores]``). Its spec decides the prompt it is asked with.
        design: ``outcome`` (r = y, the final verdict) or ``step_augmented``
            (r = step_weight·k/n + outcome_weight·y, k of the n policy steps judged correct).
        problem_column: dataset column holding the bare problem (default ``problem``); without it
            the last user message of the prompt is used.
        outcome_weight, step_weight: the step-augmented weights (0.6, 0.4 in the paper).
        soft: use the PRM's probability (final_prob, else solution_score) instead of the 0/1 verdict.
        unreadable: the reward when the PRM's output gives no verdict (default 0.0; None makes TRL
            skip the sample).
        tokenizer: the policy tokenizer; with ``completion_ids`` it adds each step's token range
            to ``last_details`` (``token_spans``).
        name: the function's ``__name__`` (default ``prm_<design>``).

    The verdict y is the PRM's final verdict, or ``solution_score >= spec threshold`` for PRMs
    without one (discriminative PRMs); an invalid format is 0 and is not sent to the PRM.

    >>> reward = PRMReward(load_prm("outputs/prm"), design="step_augmented")   # doctest: +SKIP
    >>> reward(prompts, completions, problem=problems)                          # doctest: +SKIP
    [0.8, 0.0, 1.0, ...]
    """

    def __init__(
        self,
        prm: Any,
        design: str = "outcome",
        *,
        problem_column: str = "problem",
        outcome_weight: float = 0.6,
        step_weight: float = 0.4,
        soft: bool = False,
        unreadable: float | None = 0.0,
        tokenizer: Any = None,
        name: str | None = None,
    ):
        if design not in DESIGNS:
            raise SparkHubError(f"unknown PRM reward design {design!r}", hint=f"valid: {', '.join(DESIGNS)}")
        if prm is None or not callable(getattr(prm, "score_batch", None)):
            raise SparkHubError(f"reward {name or 'prm_' + design} needs a PRM (spark_hub.prm.load_prm)",
                                hint="set reward_model / pass prm=")
        spec = getattr(prm, "spec", None) or {}
        if design == "step_augmented" and spec.get("variant") == "orm":
            raise SparkHubError("the step-augmented reward needs step verdicts; this reward model is an ORM",
                                hint="use prm_outcome / orm with an ORM, or a PRM / PRM-CoT model")
        super().__init__(name or f"prm_{design}")
        self.prm = prm
        self.design = design
        self.problem_column = problem_column
        self.outcome_weight = outcome_weight
        self.step_weight = step_weight
        self.soft = soft
        self.unreadable = unreadable
        self.tokenizer = tokenizer
        self.threshold = float(spec.get("threshold", 0.5))
        self.prm_calls = 0

    # -- the three phases, shared by the sync and async variants --
    def _prepare(self, prompts, completions, kwargs):
        parsed = _parse_all(completions)
        problems = kwargs.get(self.problem_column)
        if problems is None:
            problems = [prompt_problem(p) for p in (prompts or [""] * len(parsed))]
        index = [i for i, p in enumerate(parsed) if p.format.valid and p.steps]
        items = [(str(problems[i]), parsed[i].steps, parsed[i].answer) for i in index]
        return parsed, index, items

    def _verdict(self, scores: Any) -> float | None:
        if self.soft:
            for value in (getattr(scores, "final_prob", None), getattr(scores, "solution_score", None)):
                if value is not None:
                    return float(value)
        if scores.final_verdict is not None:
            return float(bool(scores.final_verdict))
        if scores.solution_score is not None:
            return float(scores.solution_score >= self.threshold)
        return None

    def _finish(self, parsed, index, results, completion_ids, kwargs) -> list[float | None]:
        results = list(results)
        if len(results) != len(index):
            raise RuntimeError(f"the PRM returned {len(results)} scores for {len(index)} solutions")
        details = [_base_details(p) for p in parsed]
        rewards: list[float | None] = [0.0] * len(parsed)
        unreadable = 0
        for i, scores in zip(index, results):
            n = parsed[i].n_steps
            labels = list(scores.step_verdicts) if scores.step_verdicts else None
            lined_up = (labels is not None and len(labels) == n and n > 0 and None not in labels
                        and scores.status != "step_count_mismatch")
            details[i].update(step_labels=labels, prm_n_steps=n if lined_up else -1,
                              final_verdict=scores.final_verdict, status=scores.status)
            y = self._verdict(scores)
            if y is None:
                unreadable += 1
                rewards[i] = self.unreadable
                continue
            if self.design == "outcome":
                rewards[i] = y
            else:
                k = sum(v is True for v in (labels or []))
                total = len(labels or []) or 1
                rewards[i] = self.step_weight * k / total + self.outcome_weight * y
        if self.tokenizer is not None and completion_ids is not None:
            for d, ids in zip(details, completion_ids):
                d["token_spans"] = step_token_spans(ids, self.tokenizer)[1]
        for d, r in zip(details, rewards):
            d["reward"] = r
        self.last_details = details
        self._log(kwargs, parsed, {"unreadable": unreadable / max(1, len(index))} if index else {})
        log_extra = kwargs.get("log_extra")
        if callable(log_extra):
            log_extra(f"{self.__name__}/labels", [_labels_text(d["step_labels"]) for d in details])
        return rewards

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float | None]:
        parsed, index, items = self._prepare(prompts, completions, kwargs)
        results = self.prm.score_batch(items) if items else []
        self.prm_calls += bool(items)
        return self._finish(parsed, index, results, completion_ids, kwargs)


class AsyncPRMReward(PRMReward):
    """`PRMReward` as an async reward function, for a PRM behind an OpenAI-compatible server
    (``load_prm(path, backend="openai", base_url=...)``): TRL runs async rewards concurrently with
    the others on its event-loop thread; the batch's requests go out concurrently
    (``max_concurrency`` of the openai backend), in a worker thread so the loop never blocks.

    >>> reward = AsyncPRMReward(load_prm("org/prm", backend="openai", base_url=URL))  # doctest: +SKIP
    """

    async def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float | None]:
        parsed, index, items = self._prepare(prompts, completions, kwargs)
        results = await asyncio.to_thread(self.prm.score_batch, items) if items else []
        self.prm_calls += bool(items)
        return self._finish(parsed, index, results, completion_ids, kwargs)


def _labels_text(labels: Sequence[bool | None] | None) -> str:
    if labels is None:
        return ""
    return "".join("+" if v is True else "-" if v is False else "?" for v in labels)


class RLVR(RewardFunction):
    r"""1.0 when the boxed answer is math-verify-equivalent to the reference, else 0.0.

    All comparisons of a batch go to `spark_hub.grading.answers_match_many` at once: worker
    processes with a per-answer time limit, so it works from any thread (async reward loops
    included) and a pathological answer costs at most ``timeout`` seconds, never the run.

    Args:
        reference_column: the dataset column with the reference answer (default ``answer``).
        require_format: 0 for an invalid format (default True, as the paper's rewards).
        timeout: seconds per comparison; a timeout counts as 0 (logged as ``timeouts``).
        check: the comparison (a picklable module-level ``(pred, ref) -> bool | None``; default
            math-verify).

    >>> rlvr(None, ["<step>6*7</step><answer>\\boxed{42}</answer>", "<answer>\\boxed{41}</answer>"],
    ...      answer=["42", "42"])
    [1.0, 0.0]
    """

    def __init__(self, *, reference_column: str = "answer", require_format: bool = True, timeout: float = 5.0,
                 check: Callable[[str, str], bool | None] | None = None, name: str = "rlvr"):
        super().__init__(name)
        self.reference_column = reference_column
        self.require_format = require_format
        self.timeout = timeout
        self.check = check

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        from spark_hub.grading import answers_match_many

        references = kwargs.get(self.reference_column)
        if references is None:
            columns = sorted(k for k in kwargs if k not in ("trainer_state", "log_extra", "log_metric"))
            raise SparkHubError(f"reward {self.__name__} needs the reference column {self.reference_column!r}",
                                hint=f"dataset columns: {', '.join(columns) or 'none'}; set reference_column")
        parsed = _parse_all(completions)
        pairs = [(p.answer if (p.format.valid or not self.require_format) else None,
                  None if r is None else str(r)) for p, r in zip(parsed, references)]
        matches = answers_match_many(pairs, self.timeout, check=self.check)
        details = [_base_details(p) for p in parsed]
        for d, m, (pred, ref) in zip(details, matches, pairs):
            d["status"] = "no_answer" if pred is None else ("cannot_tell" if m is None else "ok")
            d["correct"] = m
        self.last_details = details
        tried = [m for m, (pred, ref) in zip(matches, pairs) if pred is not None and ref is not None]
        self._log(kwargs, parsed, {"cannot_tell": sum(m is None for m in tried) / len(tried)} if tried else {})
        return [1.0 if m else 0.0 for m in matches]


rlvr = RLVR()


class RandomReward(RewardFunction):
    r"""A valid format earns a random 0 or 1 (the paper's sanity baseline); invalid earns 0.

    Seeded and reproducible: the draw depends on ``seed``, the training step (from
    ``trainer_state``) and the completion's position and text, so a resumed run draws the same.

    >>> r = RandomReward(seed=0)
    >>> valid = "<step>x</step><answer>\\boxed{1}</answer>"
    >>> r(None, [valid] * 4) == r(None, [valid] * 4), r(None, ["no format"])
    (True, [0.0])
    """

    def __init__(self, *, seed: int = 0, name: str = "random"):
        super().__init__(name)
        self.seed = seed

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        parsed = _parse_all(completions)
        step = getattr(kwargs.get("trainer_state"), "global_step", 0)
        rewards = []
        for i, p in enumerate(parsed):
            rng = _random.Random(f"{self.seed}:{step}:{i}:{p.text}")
            rewards.append(float(rng.random() < 0.5) if p.format.valid else 0.0)
        self.last_details = [_base_details(p) for p in parsed]
        self._log(kwargs, parsed)
        return rewards


random_reward = RandomReward()


def _normalise(answer: str) -> str:
    return re.sub(r"\s+", "", answer).rstrip(".")


class MajorityVote(RewardFunction):
    r"""TTRL-style reward: the majority answer among a prompt's completions is the pseudo-label.

    Completions are grouped by prompt (identical prompts in the batch form a group, as GRPO
    repeats each prompt ``num_generations`` times). Only format-valid answers vote; the majority
    is over whitespace-normalised answer strings (first seen wins a tie). A completion earns 1.0
    when its answer equals the pseudo-label, by math-verify (``verify=True``, default, through
    `spark_hub.grading`) or by the normalised string; invalid format or no answer earns 0.0.

    >>> mv = MajorityVote(verify=False)
    >>> c = ["<answer>\\boxed{%s}</answer>" % a for a in ("4", "4", "5", "4 ")]
    >>> mv(["p"] * 4, c)
    [1.0, 1.0, 0.0, 1.0]
    """

    def __init__(self, *, verify: bool = True, timeout: float = 5.0, name: str = "majority_vote"):
        super().__init__(name)
        self.verify = verify
        self.timeout = timeout

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        parsed = _parse_all(completions)
        prompts = list(prompts) if prompts is not None else [None] * len(parsed)
        groups: dict[str, list[int]] = {}
        for i, prompt in enumerate(prompts):
            groups.setdefault(json.dumps(prompt, sort_keys=True, default=str), []).append(i)
        labels: list[str | None] = [None] * len(parsed)
        for members in groups.values():
            votes = [_normalise(parsed[i].answer) for i in members if parsed[i].format.valid and parsed[i].answer]
            if votes:
                winner = Counter(votes).most_common(1)[0][0]
                label = next(parsed[i].answer for i in members
                             if parsed[i].format.valid and parsed[i].answer and _normalise(parsed[i].answer) == winner)
                for i in members:
                    labels[i] = label
        answers = [p.answer if p.format.valid else None for p in parsed]
        if self.verify:
            from spark_hub.grading import answers_match_many

            matches = answers_match_many(list(zip(answers, labels)), self.timeout)
        else:
            matches = [a is not None and l is not None and _normalise(a) == _normalise(l)
                       for a, l in zip(answers, labels)]
        details = [_base_details(p) for p in parsed]
        for d, label in zip(details, labels):
            d["pseudo_label"] = label
        self.last_details = details
        self._log(kwargs, parsed)
        return [1.0 if m else 0.0 for m in matches]


majority_vote = MajorityVote()


# ------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------


def _prm_factory(design: str, default_name: str):
    def make(prm: Any = None, *, asynchronous: bool = False, problem_column: str = "problem",
             outcome_weight: float = 0.6, step_weight: float = 0.4, soft: bool = False,
             unreadable: float | None = 0.0, tokenizer: Any = None) -> PRMReward:
        cls = AsyncPRMReward if asynchronous else PRMReward
        return cls(prm, design, problem_column=problem_column, outcome_weight=outcome_weight,
                   step_weight=step_weight, soft=soft, unreadable=unreadable, tokenizer=tokenizer,
                   name=default_name)

    make.__name__ = f"make_{default_name}"
    return make


def _make_format(prm: Any = None) -> RewardFunction:
    return FormatValidity()


def _make_rlvr(prm: Any = None, *, reference_column: str = "answer", require_format: bool = True,
               timeout: float = 5.0, check: Callable | None = None) -> RewardFunction:
    return RLVR(reference_column=reference_column, require_format=require_format, timeout=timeout, check=check)


def _make_random(prm: Any = None, *, seed: int = 0) -> RewardFunction:
    return RandomReward(seed=seed)


def _make_majority(prm: Any = None, *, verify: bool = True, timeout: float = 5.0) -> RewardFunction:
    return MajorityVote(verify=verify, timeout=timeout)


#: Reward names -> factories ``(prm, **options) -> reward function``.
REWARDS: dict[str, Callable[..., Callable]] = {
    "format_validity": _make_format,
    "prm_outcome": _prm_factory("outcome", "prm_outcome"),
    "prm_step_augmented": _prm_factory("step_augmented", "prm_step_augmented"),
    "orm": _prm_factory("outcome", "orm"),
    "rlvr": _make_rlvr,
    "random": _make_random,
    "majority_vote": _make_majority,
}

#: Rewards that need a reward model.
NEEDS_PRM = ("prm_outcome", "prm_step_augmented", "orm")


def _import_reward(path: str) -> Callable:
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        target = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise SparkHubError(f"cannot import reward function {path!r} ({e})",
                            hint=f"valid names: {', '.join(REWARDS)}, or a 'package.module:function' path") from e
    if not callable(target):
        raise SparkHubError(f"{path!r} is not callable")
    return target


def make_reward_funcs(names: str | Sequence[str], prm: Any = None, **options: Any) -> list[Callable]:
    """Reward functions by name (`REWARDS`) or dotted path (``package.module:function``, used as is).

    Args:
        names: one name or a list, e.g. ``["prm_outcome", "format_validity"]``.
        prm: the PRM for ``prm_outcome``, ``prm_step_augmented`` and ``orm``.
        **options: passed to the factories that accept them (``seed``, ``reference_column``,
            ``problem_column``, ``timeout``, ``asynchronous``, ``tokenizer``, weights...); an option
            no requested reward accepts is an error.

    >>> [f.__name__ for f in make_reward_funcs(["format_validity", "random"], seed=3)]
    ['format_validity', 'random']
    >>> make_reward_funcs("prm_outcom")
    Traceback (most recent call last):
    ...
    spark_hub.errors.SparkHubError: unknown reward 'prm_outcom' (valid: format_validity, prm_outcome, prm_step_augmented, orm, rlvr, random, majority_vote; or a 'package.module:function' path)
    """
    names = [names] if isinstance(names, str) else list(names)
    funcs, used = [], set()
    for name in names:
        factory = REWARDS.get(name)
        if factory is None:
            if ":" in name or "." in name:
                funcs.append(_import_reward(name))
                continue
            raise SparkHubError(f"unknown reward {name!r}",
                                hint=f"valid: {', '.join(REWARDS)}; or a 'package.module:function' path")
        accepted = set(inspect.signature(factory).parameters) - {"prm"}
        kwargs = {k: v for k, v in options.items() if k in accepted}
        used |= set(kwargs)
        funcs.append(factory(prm, **kwargs))
    unknown = sorted(set(options) - used)
    if unknown:
        raise SparkHubError(f"reward option(s) {', '.join(unknown)} are not used by {', '.join(names)}")
    seen = Counter(getattr(f, "__name__", "") for f in funcs)
    if any(count > 1 for count in seen.values()):
        raise SparkHubError(f"reward functions must be distinct: {', '.join(names)}")
    return funcs


__all__ = [
    "ANSWER_CLOSE",
    "ANSWER_OPEN",
    "AsyncPRMReward",
    "DESIGNS",
    "FormatCheck",
    "FormatValidity",
    "MajorityVote",
    "NEEDS_PRM",
    "POLICY_SYSTEM",
    "PRMReward",
    "PolicyOutput",
    "REWARDS",
    "RLVR",
    "RandomReward",
    "RewardFunction",
    "boxed_contents",
    "check_format",
    "completion_text",
    "cut_at_answer",
    "decode_with_offsets",
    "final_answer",
    "format_validity",
    "majority_vote",
    "make_reward_funcs",
    "parse_policy_output",
    "policy_messages",
    "prompt_problem",
    "random_reward",
    "rlvr",
    "step_token_spans",
    "token_spans",
]
