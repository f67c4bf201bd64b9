"""Format-constrained decoding of verifications (``verifier.constrained: true``).

A constrained verification has exactly the shape `spark_hub.parsing.parse_verification` reads, with
one block per solution step, so it always parses with status ``ok`` and the right step count::

    [<think> ... </think>\\n\\n]                      (only with think=True)
    ## Step 1:<title and analysis: free text>
    **This step is correct.**            (or incorrect)

    ## Step 2: ...
    ...
    Verification: Is the answer correct (Yes/No)? Yes   (or No)

Inside the free text no line may start (after spaces) with ``#`` or ``*`` (the parser would read a
``## Step k`` / ``**Step k`` header there), and ``<think>`` / ``</think>`` cannot appear (they would
hide text from the parser). At the start of a line of analysis the model ends the block by writing
``**``, which starts the forced ``**This step is``; the model then chooses `` correct`` or
`` incorrect`` (a single branching token) and the rest is forced.

A constraint travels with the request as a JSON string (`verification_constraint`), so it is part of
the cache key. Each engine enforces it its own way:

- transformers: `ConstrainedLogitsProcessor`, a token-level state machine written here. Every token's
  text is classified once per tokenizer (`TokenTable`), so a decoding step costs one masked add over
  the vocabulary; forced text costs one token per step. It also budgets the free text: each step's
  analysis gets an equal share of what ``max_tokens`` leaves after the forced text (unused tokens
  roll over to later steps), and when a share runs out the verdict is forced, so the output always
  ends with the final verdict within ``max_tokens`` (if ``max_tokens`` covers the forced text at
  all: see `min_tokens`).
- vLLM and OpenAI-compatible servers: `verification_regex`, handed to the engine's structured-output
  support (a regex has no token budget: a model that rambles can still hit ``max_tokens``).

Critique calls of meta-critique (``critique`` kind) are free text that must open with
``**Critique of the original verification**``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from spark_hub.errors import SparkHubError

logger = logging.getLogger(__name__)

VERIFICATION = "verification"
CRITIQUE = "critique"
KINDS = (VERIFICATION, CRITIQUE)

HEADER = "## Step {k}:"
VERDICT_PREFIX = "**This step is"
VERDICTS = (" correct.**", " incorrect.**")
FINAL_PREFIX = "Verification: Is the answer correct (Yes/No)?"
FINALS = (" Yes", " No")
THINK_OPEN, THINK_CLOSE = "<think>\n", "</think>"
CRITIQUE_OPENING = "**Critique of the original verification**"
BLOCK_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Format:
    """A parsed constraint."""

    kind: str
    steps: int = 0
    think: bool = False


def verification_constraint(steps: int, *, think: bool = False) -> str:
    """The constraint string for a verification of a solution with ``steps`` steps.

    >>> verification_constraint(3)
    '{"kind": "verification", "steps": 3, "think": false}'
    """
    if steps < 1:
        raise ValueError(f"a constrained verification needs at least one step, got {steps}")
    return json.dumps({"kind": VERIFICATION, "steps": int(steps), "think": bool(think)}, sort_keys=True)


def critique_constraint() -> str:
    """The constraint string of a meta-critique call (forced opening line, then free text)."""
    return json.dumps({"kind": CRITIQUE}, sort_keys=True)


def parse_constraint(text: str) -> Format:
    """Read a constraint string; `SparkHubError` naming the problem when it is not one."""
    try:
        data = json.loads(text)
        kind = data["kind"]
    except (ValueError, TypeError, KeyError):
        raise SparkHubError(f"not a constraint: {text!r}", hint="build it with spark_hub.constrained") from None
    if kind not in KINDS:
        raise SparkHubError(f"unknown constraint kind {kind!r}", hint=f"valid kinds: {', '.join(KINDS)}")
    steps = int(data.get("steps", 0))
    if kind == VERIFICATION and steps < 1:
        raise SparkHubError(f"a verification constraint needs steps >= 1, got {steps}")
    return Format(kind=kind, steps=steps, think=bool(data.get("think", False)))


# ---------------------------------------------------------------------------------------------
# Regex (vLLM structured outputs, OpenAI-compatible servers)
# ---------------------------------------------------------------------------------------------

def _esc(text: str) -> str:
    """Escape regex metacharacters the way every engine's regex dialect reads them (newline as \\n)."""
    return "".join("\\n" if c == "\n" else "\\" + c if c in ".^$*+?{}[]\\|()" else c for c in text)


# Free text: no "<" at all (keeps <think> out), no line that starts with # or * after blanks.
_LINE_REST = r"[^\n<]*"
_LINE = r"(?:[ \t]*[^\n<#* \t]" + _LINE_REST + r")?"


def verification_regex(constraint: str | Format) -> str:
    """A regular expression for the constrained format (used by vLLM and OpenAI-compatible servers).

    Same shape as the token-level processor, a little stricter in free text ("<" is not allowed).
    """
    spec = parse_constraint(constraint) if isinstance(constraint, str) else constraint
    if spec.kind == CRITIQUE:
        return _esc(CRITIQUE_OPENING) + r"(?:\n|[^\n<])*"
    parts = []
    if spec.think:
        parts.append(_esc(THINK_OPEN) + r"[^<]*" + _esc(THINK_CLOSE) + _esc(BLOCK_SEPARATOR))
    verdict = "(?:" + "|".join(_esc(v) for v in VERDICTS) + ")"
    for k in range(1, spec.steps + 1):
        if k > 1:
            parts.append(_esc(BLOCK_SEPARATOR))
        parts.append(_esc(HEADER.format(k=k)) + _LINE_REST + r"(?:\n" + _LINE + r")*\n")
        parts.append(_esc(VERDICT_PREFIX) + verdict)
    parts.append(_esc(BLOCK_SEPARATOR + FINAL_PREFIX) + "(?:" + "|".join(_esc(f) for f in FINALS) + ")")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# Token level (transformers)
# ---------------------------------------------------------------------------------------------


class TokenTable:
    """What every token of a tokenizer looks like as text, computed once per tokenizer.

    Attributes (torch bool tensors over the model's vocabulary; True = allowed):
        free_mid: free text, inside a line.
        free_start: free text, at the start of a line (only blanks written on it so far).
    """

    def __init__(self, tokenizer, vocab_size: int):
        import torch

        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        n = min(len(tokenizer), vocab_size)
        self.texts: list[str] = tokenizer.batch_decode(
            [[i] for i in range(n)], skip_special_tokens=False, clean_up_tokenization_spaces=False
        ) + [""] * (vocab_size - n)
        special = set(tokenizer.all_special_ids or [])
        for token_id, token in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
            if getattr(token, "special", False):
                special.add(token_id)
        mid = [False] * vocab_size
        start = [False] * vocab_size
        # after the token: 1 = at a line start, 0 = inside a line, -1 = unchanged (blank-only token)
        self.line_after: list[int] = [0] * vocab_size
        self.has_gt: list[bool] = [False] * vocab_size
        for i, text in enumerate(self.texts):
            if not text or i in special:
                continue
            lines = text.split("\n")
            later_ok = all(_line_ok(line) for line in lines[1:])
            mid[i] = later_ok
            start[i] = later_ok and _line_ok(lines[0])
            last = lines[-1]
            if len(lines) > 1:
                self.line_after[i] = 1 if not last.strip(" \t") else 0
            else:
                self.line_after[i] = -1 if not last.strip(" \t") else 0
            self.has_gt[i] = ">" in text
        self.free_mid = torch.tensor(mid)
        self.free_start = torch.tensor(start)
        # rows of forbidden tokens: [at a line start, inside a line, nothing forbidden]
        self.forbid = torch.stack([~self.free_start, ~self.free_mid, torch.zeros(vocab_size, dtype=torch.bool)])
        self.gt_ids = [i for i, flag in enumerate(self.has_gt) if flag and (mid[i] or start[i])]
        self.eos_token_id = tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def _line_ok(line: str) -> bool:
    """A (part of a) line that starts a line is allowed in free text: not ``#...`` or ``*...``."""
    stripped = line.lstrip(" \t")
    return not stripped or stripped[0] not in "#*"


START, MID, ANY = 0, 1, 2
"""Rows of `TokenTable.forbid`."""

_TABLES: dict[int, TokenTable] = {}


def token_table(tokenizer, vocab_size: int) -> TokenTable:
    """The `TokenTable` of a tokenizer, built on first use and kept for the process."""
    key = id(tokenizer)
    table = _TABLES.get(key)
    if table is None or table.vocab_size != vocab_size or table.tokenizer is not tokenizer:
        table = _TABLES[key] = TokenTable(tokenizer, vocab_size)
    return table


# Program operations ------------------------------------------------------------------------------
# ("force", [ids])                   emit these tokens
# ("choose", [[ids], [ids], ...])    the model picks one alternative by its first token, rest forced
# ("free", weight, exit_ids, exit_anywhere, budget_exit_start_ids, budget_exit_mid_ids, at_line_start)
#                                    free text; sampling exit_ids[0] (at a line start unless
#                                    exit_anywhere) leaves it, the rest of exit_ids forced; when its
#                                    budget (weight shares of the tokens left) is spent the budget
#                                    exit is forced (line-start or mid-line variant)
# ("eos",)                           the end-of-sequence token
# ("any",)                           no constraint from here on


def _program(spec: Format, table: TokenTable) -> list[tuple]:
    enc = table.encode
    ops: list[tuple] = []
    if spec.kind == CRITIQUE:
        ops.append(("force", enc(CRITIQUE_OPENING)))
        ops.append(("any",))
        return ops
    verdict_start = enc(VERDICT_PREFIX)
    verdict_mid = enc("\n" + VERDICT_PREFIX)
    if spec.think:
        close = enc(THINK_CLOSE + BLOCK_SEPARATOR)
        ops.append(("force", enc(THINK_OPEN)))
        ops.append(("free", spec.steps, close, True, close, enc("\n" + THINK_CLOSE + BLOCK_SEPARATOR), True))
    for k in range(1, spec.steps + 1):
        ops.append(("force", enc((BLOCK_SEPARATOR if k > 1 else "") + HEADER.format(k=k))))
        ops.append(("free", 1, verdict_start, False, verdict_start, verdict_mid, False))
        ops.append(("choose", [enc(v) for v in VERDICTS]))
    ops.append(("force", enc(BLOCK_SEPARATOR + FINAL_PREFIX)))
    ops.append(("choose", [enc(f) for f in FINALS]))
    ops.append(("eos",))
    return ops


def _fixed_cost(op: tuple) -> int:
    """Tokens an operation needs whatever the model does (free text: its longest forced exit)."""
    if op[0] == "force":
        return len(op[1])
    if op[0] == "choose":
        return max(len(alt) for alt in op[1])
    if op[0] == "free":
        return max(len(op[4]), len(op[5]))
    if op[0] == "any":
        return 0
    return 1


def min_tokens(constraint: str, tokenizer, vocab_size: int | None = None) -> int:
    """Tokens a constrained output needs with empty free text (``max_tokens`` below this truncates)."""
    table = token_table(tokenizer, vocab_size or len(tokenizer))
    return sum(_fixed_cost(op) for op in _program(parse_constraint(constraint), table))


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


class _RowState:
    """Where one sequence is in its program."""

    def __init__(self, ops: list[tuple], max_tokens: int, table: TokenTable):
        self.ops = ops
        self.table = table
        self.max_tokens = max_tokens
        self.index = 0  # current op
        self.pending: list[int] = []  # tokens still to force
        self.alternatives: list[list[int]] | None = None
        self.generated = 0
        self.budget = 0
        self.line_start = False
        self.tail = ""  # last characters of free text (to keep "<think>" out)
        self.done = False
        self._suffix_cost = [0] * (len(ops) + 1)
        self._suffix_weight = [0] * (len(ops) + 1)
        for i in range(len(ops) - 1, -1, -1):
            self._suffix_cost[i] = self._suffix_cost[i + 1] + _fixed_cost(ops[i])
            self._suffix_weight[i] = self._suffix_weight[i + 1] + (ops[i][1] if ops[i][0] == "free" else 0)
        if self._suffix_cost[0] > max_tokens:
            _warn_once(
                f"max_tokens={max_tokens} is below the {self._suffix_cost[0]} tokens this constrained output "
                f"needs even with empty analysis: it will be cut off (raise verifier.max_tokens)"
            )
        self._enter()

    # -- moving through the program ---------------------------------------------------------------

    def _enter(self) -> None:
        """Set up the current op (skipping empty forced text)."""
        while self.index < len(self.ops):
            op = self.ops[self.index]
            if op[0] == "force":
                if op[1]:
                    self.pending = list(op[1])
                    return
                self.index += 1
                continue
            if op[0] == "choose":
                self.alternatives = [list(a) for a in op[1] if a]
                return
            if op[0] == "free":
                left = self.max_tokens - self.generated - self._suffix_cost[self.index]
                weight = self._suffix_weight[self.index]
                self.budget = max(0, left) * op[1] // max(1, weight)
                self.line_start = op[6]
                self.tail = ""
                return
            if op[0] == "any":
                self.done = True
            return  # eos, any
        self.done = True

    def _next(self) -> None:
        self.index += 1
        self.pending = []
        self.alternatives = None
        self._enter()

    def consume(self, token: int) -> None:
        """Advance with the token that was sampled."""
        if self.done:
            return
        self.generated += 1
        op = self.ops[self.index]
        if self.pending:  # forced text (of a force op, a chosen branch, or an exit of free text)
            self.pending.pop(0)
            if not self.pending:
                self._next()
            return
        if op[0] == "choose":
            matching = [alt for alt in self.alternatives if alt[0] == token]
            if not matching:  # cannot happen while the mask holds; never crash generation over it
                logger.debug("token %d is none of the constrained alternatives; constraint dropped", token)
                self.done = True
                return
            rest = [alt[1:] for alt in matching]
            if len(rest) == 1 or all(not r for r in rest):
                self.pending = rest[0] if rest else []
                if not self.pending:
                    self._next()
            else:  # alternatives share this token: choose again among the rest
                self.alternatives = [r for r in rest if r]
            return
        if op[0] == "free":
            exit_ids = op[2]
            if token == exit_ids[0] and (self.line_start or op[3]):
                self.pending = list(exit_ids[1:])
                if not self.pending:
                    self._next()
                return
            self.budget -= 1
            after = self.table.line_after[token]
            if after == 1:
                self.line_start = True
            elif after == 0:
                self.line_start = False
            self.tail = (self.tail + self.table.texts[token])[-8:]
            return
        if op[0] == "eos":
            self.done = True

    # -- what is allowed now ----------------------------------------------------------------------

    def allowed(self) -> tuple[str, Any]:
        """("one", id) | ("set", [ids]) | ("mask", START or MID, extra forbidden ids, exit id or None)
        | ("any", None)."""
        if self.done:
            return ("any", None)
        op = self.ops[self.index]
        if self.pending:
            return ("one", self.pending[0])
        if op[0] == "choose":
            return ("set", sorted({alt[0] for alt in self.alternatives}))
        if op[0] == "eos":
            return ("one", self.table.eos_token_id)
        # free text
        if self.budget <= 0:
            self.pending = list(op[4] if self.line_start else op[5])
            return ("one", self.pending[0])
        mask = START if self.line_start else MID
        forbidden = []
        if "<" in self.tail:
            forbidden = [i for i in self.table.gt_ids if _makes_think_tag(self.tail + self.table.texts[i])]
        exit_id = op[2][0]
        if self.line_start or op[3]:
            return ("mask", mask, [i for i in forbidden if i != exit_id], exit_id)
        return ("mask", mask, forbidden, None)


def _makes_think_tag(text: str) -> bool:
    lower = text.lower()
    return "<think>" in lower or "</think>" in lower


class ConstrainedLogitsProcessor:
    """A transformers logits processor that enforces one constraint per row and/or records logprobs.

    Args:
        table: the tokenizer's `TokenTable`.
        constraints: one constraint string (or None = free) per row of the generate batch.
        max_new_tokens: the generate call's ``max_new_tokens`` (the budget of every row).
        record_logprobs: record, per row, the log-probability of each sampled token under the
            model's distribution after the constraint mask (temperature 1, before top-p).

    After ``generate``, call `finish` with the generated tokens to get the last token's logprob.
    """

    def __init__(self, table: TokenTable, constraints: list[str | None], max_new_tokens: int,
                 record_logprobs: bool = False):
        self.table = table
        self.rows = [
            _RowState(_program(parse_constraint(c), table), max_new_tokens, table) if c else None
            for c in constraints
        ]
        self.record_logprobs = record_logprobs
        self.logprobs: list[list[float]] = [[] for _ in constraints]
        self._last = None
        self._calls = 0
        self._forbid = None

    def __call__(self, input_ids, scores):
        import torch

        if self._calls > 0:
            last = input_ids[:, -1].tolist()
            if self._last is not None:
                picked = self._last.gather(1, input_ids[:, -1:].to(self._last.device)).squeeze(1).tolist()
                for row, lp in enumerate(picked):
                    self.logprobs[row].append(lp)
            for row, state in enumerate(self.rows):
                if state is not None:
                    state.consume(last[row])
        self._calls += 1

        # One (rows, vocab) mask of forbidden tokens, built from the table's precomputed rows, and one
        # masked_fill: per-row tensor operations cost more than the model step on CPU.
        kinds, fixes = [], []
        for row, state in enumerate(self.rows):
            allowed = ("any", None) if state is None else state.allowed()
            kind = allowed[0]
            if kind == "mask":
                kinds.append(allowed[1])
                if allowed[2] or allowed[3] is not None:
                    fixes.append((row, allowed[2], allowed[3]))
            elif kind == "any":
                kinds.append(ANY)
            else:  # one token or a small set: forbid everything, then allow those
                kinds.append(-1)
                fixes.append((row, None, [allowed[1]] if kind == "one" else allowed[1]))
        if any(kind != ANY for kind in kinds):
            if self._forbid is None or self._forbid.device != scores.device:
                self._forbid = self.table.forbid.to(scores.device)
            index = torch.tensor([max(kind, 0) for kind in kinds], device=scores.device)
            forbid = self._forbid[index]
            for row, forbidden, allow in fixes:
                if forbidden is None:  # one/set
                    forbid[row] = True
                    forbid[row, allow] = False
                else:
                    if forbidden:
                        forbid[row, forbidden] = True
                    if allow is not None:
                        forbid[row, allow] = False
            scores = scores.masked_fill(forbid, torch.finfo(scores.dtype).min)
        if self.record_logprobs:
            self._last = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, last_tokens: list[int]) -> None:
        """Record the logprob of the final generated token of every row (generate's last step)."""
        if self._last is not None and self.record_logprobs:
            for row, token in enumerate(last_tokens):
                self.logprobs[row].append(float(self._last[row, token]))
