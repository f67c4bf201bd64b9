"""Prompts and targets of SPARK's generative reward models (ORM, PRM, PRM-CoT; SPARK.md §2).

The paper's RM prompts, reconstructed from its RL-time parsers:

============  =====================================================  ==================================
variant       prompt                                                 target (what the RM writes)
============  =====================================================  ==================================
``orm``       Problem, Solution, "Is the answer correct (Yes/No)?"   ``Yes`` or ``No``, nothing else
``prm``       Problem, Student Solution, "Let's verify step by       ``Step k: Correct|Incorrect`` lines,
              step."                                                 then the final Verification line
``prm_cot``   the PRM prompt                                         the verifier's own text: ``## Step
                                                                     k:`` analysis + bold verdict per
                                                                     step, then the Verification line
============  =====================================================  ==================================

The SFT data (`spark_hub.train.sft_data`) and the PRM at inference (`spark_hub.prm`) both build
prompts here, so a trained model is always asked in the words it was trained on. A PRM folder's
``prm_spec.json`` stores the template text and its sha256.

This module also reads the targets back (`parse_orm`, `parse_prm_lines`); they never raise on model
text: a failure is a status.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

from spark_hub.io import sha256_text

VARIANTS = ("orm", "prm", "prm_cot")

ORM_TEMPLATE = """\
Problem: {problem}

Solution:
{solution}

Is the answer correct (Yes/No)?"""

PRM_TEMPLATE = """\
Problem: {problem}

Student Solution:
{solution}

Let's verify step by step."""

#: PRM-CoT models are asked exactly like PRMs; only the target differs.
PRM_COT_TEMPLATE = PRM_TEMPLATE

TEMPLATES = {"orm": ORM_TEMPLATE, "prm": PRM_TEMPLATE, "prm_cot": PRM_COT_TEMPLATE}

STEP_FORMAT = "Step {k}: {step}"
ANSWER_FORMAT = "Answer: {answer}"
FINAL_LINE = "Verification: Is the answer correct (Yes/No)? {verdict}"


def template_hash(variant: str) -> str:
    """sha256 of a variant's prompt template."""
    return sha256_text(TEMPLATES[variant])


def render_solution(
    steps: Sequence[str],
    final_answer: str | None = None,
    *,
    step_format: str = STEP_FORMAT,
    answer_format: str = ANSWER_FORMAT,
) -> str:
    """Number the steps ``Step 1: ...`` one per line, then ``Answer: ...`` when an answer is given."""
    lines = [step_format.format(k=k, step=step.strip()) for k, step in enumerate(steps, start=1)]
    if final_answer is not None and answer_format:
        lines.append(answer_format.format(answer=final_answer))
    return "\n".join(lines)


def rm_prompt(
    variant: str,
    problem: str,
    steps: Sequence[str],
    final_answer: str | None = None,
    *,
    template: str | None = None,
    step_format: str = STEP_FORMAT,
    answer_format: str = ANSWER_FORMAT,
) -> str:
    """The user message asking a ``variant`` RM to judge a solution."""
    text = template if template is not None else TEMPLATES[variant]
    solution = render_solution(steps, final_answer, step_format=step_format, answer_format=answer_format)
    return text.format(problem=problem.strip(), solution=solution)


def orm_target(final_label: bool) -> str:
    return "Yes" if final_label else "No"


def prm_target(labels: Sequence[bool], final_label: bool) -> str:
    """``Step k: Correct|Incorrect`` per step, then the final Verification line."""
    lines = [f"Step {k}: {'Correct' if ok else 'Incorrect'}" for k, ok in enumerate(labels, start=1)]
    lines.append(FINAL_LINE.format(verdict="Yes" if final_label else "No"))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Reading RM outputs
# ------------------------------------------------------------------------------------------------

OK = "ok"
EMPTY = "empty"
UNPARSED = "unparsed"
NO_STEPS = "no_steps"
NO_FINAL = "no_final_verdict"
MISSING_STEP_VERDICT = "missing_step_verdict"
STEP_COUNT_MISMATCH = "step_count_mismatch"


@dataclass
class Verdicts:
    """What an RM output says, with where each verdict word starts in the text (for logprobs)."""

    step_verdicts: list[bool | None] = field(default_factory=list)
    step_positions: list[int | None] = field(default_factory=list)
    """Character offset of each step's verdict word (``Correct``/``Incorrect``...), None if absent."""
    final_verdict: bool | None = None
    final_position: int | None = None
    """Character offset of the final ``Yes``/``No``."""
    status: str = OK


_ORM_RE = re.compile(r"^[\s*_`\"'\\{}()\[\]]*(?:\\boxed\{)?\s*(yes|no)\b[\s*_`\"'.!}\])]*$", re.IGNORECASE)
_PRM_LINE_RE = re.compile(
    r"^[ \t>#*_]*step[ \t]*(\d+)[ \t]*[:.)\-][ \t*_]*(correct|incorrect)\b", re.IGNORECASE | re.MULTILINE
)
_FINAL_RE = re.compile(
    r"is[ \t]+the[ \t]+answer[ \t]+correct[ \t]*\(?[ \t]*yes[ \t]*/[ \t]*no[ \t]*\)?[ \t]*\??[ \t*_:]*"
    r"(?:\\boxed\{)?[ \t*_]*(yes|no)\b",
    re.IGNORECASE,
)
_COT_VERDICT_RE = re.compile(
    r"this[ \t]+step[ \t]+is[ \t]+(?:\*\*)?[ \t]*(correct|incorrect|wrong|right)\b", re.IGNORECASE
)
_COT_HEADER_RE = re.compile(r"^[ \t]*(?:#{1,6}[ \t]*(?:\*\*)?|\*\*)[ \t]*step[ \t]*(\d+)\b", re.IGNORECASE | re.MULTILINE)


def parse_orm(text: str | None) -> Verdicts:
    """A whole-response ``Yes``/``No`` (markup and punctuation around it tolerated)."""
    text = text or ""
    if not text.strip():
        return Verdicts(status=EMPTY)
    m = _ORM_RE.match(text)
    if not m:
        return Verdicts(status=UNPARSED)
    return Verdicts(final_verdict=m.group(1).lower() == "yes", final_position=m.start(1))


def _final(text: str) -> tuple[bool | None, int | None]:
    last = None
    for last in _FINAL_RE.finditer(text):
        pass
    if last is None:
        return None, None
    return last.group(1).lower() == "yes", last.start(1)


def _status(verdicts: list[bool | None], final: bool | None, expected_steps: int | None) -> str:
    if not verdicts:
        return NO_STEPS
    if final is None:
        return NO_FINAL
    if None in verdicts:
        return MISSING_STEP_VERDICT
    if expected_steps is not None and len(verdicts) != expected_steps:
        return STEP_COUNT_MISMATCH
    return OK


def parse_prm_lines(text: str | None, expected_steps: int | None = None) -> Verdicts:
    """``Step k: Correct|Incorrect`` lines + the final Verification line.

    Verdicts are placed by their step number (1-based); a step number repeated keeps its last line,
    a number beyond ``expected_steps`` is a count mismatch. Status as in
    `spark_hub.parsing.parse_verification`: ``empty``, ``no_steps``, ``no_final_verdict``,
    ``missing_step_verdict``, ``step_count_mismatch`` or ``ok``.
    """
    text = text or ""
    if not text.strip():
        return Verdicts(status=EMPTY)
    found: dict[int, tuple[bool, int]] = {}
    for m in _PRM_LINE_RE.finditer(text):
        k = int(m.group(1))
        if k >= 1:
            found[k] = (m.group(2).lower() == "correct", m.start(2))
    count = max(found, default=0)
    verdicts: list[bool | None] = [found[k][0] if k in found else None for k in range(1, count + 1)]
    positions: list[int | None] = [found[k][1] if k in found else None for k in range(1, count + 1)]
    final, final_pos = _final(text)
    return Verdicts(verdicts, positions, final, final_pos, _status(verdicts, final, expected_steps))


def parse_prm_cot(text: str | None, expected_steps: int | None = None) -> Verdicts:
    """The verifier format: ``## Step k`` blocks, the last bold verdict in each, the final line.

    Same reading as `spark_hub.parsing.parse_verification` (which the Stage I labels come from),
    plus the character offsets of the verdict words.
    """
    from spark_hub.parsing import strip_think

    raw = text or ""
    clean = strip_think(raw)
    if not clean:
        return Verdicts(status=EMPTY)
    shift = raw.find(clean) if clean in raw else 0  # offsets refer to the raw text when possible
    starts = [m.start() for m in _COT_HEADER_RE.finditer(clean)]
    verdicts: list[bool | None] = [None] * len(starts)
    positions: list[int | None] = [None] * len(starts)
    if starts:
        block = 0
        for v in _COT_VERDICT_RE.finditer(clean, starts[0]):
            while block + 1 < len(starts) and starts[block + 1] <= v.start():
                block += 1
            verdicts[block] = v.group(1).lower() in ("correct", "right")
            positions[block] = v.start(1) + shift
    final, final_pos = _final(clean)
    if final_pos is not None:
        final_pos += shift
    return Verdicts(verdicts, positions, final, final_pos, _status(verdicts, final, expected_steps))


READERS = {"orm": parse_orm, "prm": parse_prm_lines, "prm_cot": parse_prm_cot}


def read_verdicts(reader: str, text: str | None, expected_steps: int | None = None) -> Verdicts:
    """Dispatch on a spec's verdict reader name (``orm``, ``prm`` or ``prm_cot``)."""
    if reader == "orm":
        return parse_orm(text)
    return READERS[reader](text, expected_steps)


__all__ = [
    "ANSWER_FORMAT",
    "FINAL_LINE",
    "ORM_TEMPLATE",
    "PRM_COT_TEMPLATE",
    "PRM_TEMPLATE",
    "STEP_FORMAT",
    "TEMPLATES",
    "VARIANTS",
    "Verdicts",
    "orm_target",
    "parse_orm",
    "parse_prm_cot",
    "parse_prm_lines",
    "prm_target",
    "read_verdicts",
    "render_solution",
    "rm_prompt",
    "template_hash",
]
