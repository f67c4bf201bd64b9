"""Score solutions step by step with a process reward model: ``load_prm(path_or_repo)``.

>>> prm = load_prm("outputs/prm")                               # doctest: +SKIP
>>> s = prm.score("What is 2+3*4?", ["3*4 = 12.", "2+12 = 14."])  # doctest: +SKIP
>>> s.step_verdicts, s.step_probs, s.final_verdict, s.solution_score, s.first_error  # doctest: +SKIP
([True, True], [0.97, 0.93], True, 0.93, -1)

A PRM is a model folder (or a Hub repo) plus ``prm_spec.json`` (``schemas/prm_spec.v1.json``), which
says everything needed to score with it. Three kinds:

- ``generative``: SPARK's own RMs (SFT-trained chat models, `spark_hub.rm_prompts`). The solution
  goes into the variant's prompt; the model WRITES its verdicts (``orm``: Yes/No; ``prm``:
  ``Step k: Correct|Incorrect`` lines + the final line; ``prm_cot``: the verifier's analysis per
  step). Text comes from any spark-hub backend (transformers, vllm, openai), one ``generate`` call
  per `PRM.score_batch`. Per-step P(correct) is read from the logprobs of the tokens of the verdict
  word when the backend returns logprobs (``p`` when it wrote "correct", ``1 - p`` when it wrote
  "incorrect"; exact when the two verdicts are the only choices, an approximation otherwise, since
  other wordings are ignored); else it is None.
  A ``prm_cot`` spec with ``generation.constrained: true`` decodes in the verifier format
  (`spark_hub.constrained`): one block per step, always parseable, and the verdict is a choice
  between exactly two tokens, so its probability is exact.
- ``step_separator``: the Qwen2.5-Math-PRM convention. The steps are the assistant turn of a chat,
  each followed by a separator token (``<extra_0>``); a two-class head on the last hidden states is
  softmaxed at each separator and the positive class is P(correct). Upstream loads this with remote
  code; here the backbone is a plain ``AutoModel`` and the ``Linear-ReLU-Linear`` head is read from
  the checkpoint's ``score.*`` tensors (``head: mlp``), or the model is an
  ``AutoModelForTokenClassification`` (``head: token_classification``). No remote code.
- ``step_tag``: the Math-Shepherd convention. A causal LM reads ``problem + steps``, each step ending
  in a tag (``ки``); at each tag the logits of the ``+`` and ``-`` tokens are softmaxed and ``+`` is
  P(correct).

Every result is a `StepScores`: per-step verdicts and probabilities, the final verdict and its
probability (generative), the raw text, a parse status (model text never raises), and one solution
score aggregated as the spec declares (``min``, ``product``, ``last``, ``mean`` over the per-step
probabilities, verdicts counting 1/0 where no probability exists; or ``final``). Discriminative
kinds run one padded forward pass per `PRM.score_batch`.

Weights are read from safetensors only, and ``trust_remote_code`` stays off unless the caller
passes ``trust_remote_code=True``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from spark_hub import rm_prompts
from spark_hub.errors import SparkHubError
from spark_hub.io import atomic_write_json, sha256_text

logger = logging.getLogger(__name__)

SPEC_NAME = "prm_spec.json"
SPEC_VERSION = "1"
AGGREGATIONS = ("min", "product", "last", "mean", "final")
KINDS = ("generative", "step_separator", "step_tag")

# Statuses of discriminative scoring (generative statuses come from `spark_hub.rm_prompts`).
OK = "ok"
TRUNCATED = "truncated"
STEP_COUNT_MISMATCH = "step_count_mismatch"
NO_STEPS = "no_steps"

#: Files fetched for a published (non spark-hub) PRM: configs, tokenizer, safetensors weights.
SAFE_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ------------------------------------------------------------------------------------------------
# Specs
# ------------------------------------------------------------------------------------------------

QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."

BUILTIN_SPECS: dict[str, dict[str, Any]] = {
    "qwen2.5-math-prm": {
        "schema_version": SPEC_VERSION,
        "kind": "step_separator",
        "name": "Qwen2.5-Math-PRM",
        "model": {"head": "mlp", "head_prefix": "score", "num_labels": 2, "positive_label": 1,
                  "trust_remote_code": False},
        "input": {"format": "chat", "system": QWEN_PRM_SYSTEM, "step_format": "{step}{marker}", "joiner": "",
                  "marker": "<extra_0>", "marker_id": None, "add_special_tokens": True, "max_length": None},
        "aggregation": "min",
        "threshold": 0.5,
        "notes": "Qwen/Qwen2.5-Math-PRM-7B and -72B layout: Qwen2 backbone (model.*) + score.0/score.2 head; "
                 "P(correct) = softmax(head)[1] at each <extra_0> after a step in the assistant turn.",
    },
    "math-shepherd": {
        "schema_version": SPEC_VERSION,
        "kind": "step_tag",
        "name": "Math-Shepherd",
        "model": {"head": "lm", "trust_remote_code": False},
        "input": {"format": "plain", "template": "{problem} {solution}", "step_format": "Step {k}: {step} {marker}",
                  "joiner": "\n", "marker": "ки", "marker_id": None, "add_special_tokens": True,
                  "max_length": None},
        "score": {"candidates": "+ -", "positive_token_id": None, "negative_token_id": None},
        "aggregation": "min",
        "threshold": 0.5,
        "notes": "peiyi9979/math-shepherd-mistral-7b-prm: P(correct) = softmax(logits[+], logits[-])[+] at each "
                 "'ки' step tag; token ids from tokenizing '+' and '-' (override with positive/negative_token_id).",
    },
}

#: Published repos whose convention is known (no prm_spec.json of their own).
KNOWN_REPOS = {
    "Qwen/Qwen2.5-Math-PRM-7B": "qwen2.5-math-prm",
    "Qwen/Qwen2.5-Math-PRM-72B": "qwen2.5-math-prm",
    "peiyi9979/math-shepherd-mistral-7b-prm": "math-shepherd",
}

#: Architectures in config.json that identify a convention.
KNOWN_ARCHITECTURES = {"Qwen2ForProcessRewardModel": "qwen2.5-math-prm"}

DEFAULT_GENERATION = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 1024, "seed": 0}
DEFAULT_AGGREGATION = {"orm": "final", "prm": "min", "prm_cot": "min"}


def generative_spec(
    variant: str,
    *,
    template: str | None = None,
    system: str | None = None,
    aggregation: str | None = None,
    threshold: float = 0.5,
    generation: Mapping[str, Any] | None = None,
    base_model: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """The spec of a SPARK generative RM (what ``spark-hub train prm`` writes next to the weights).

    Args:
        variant: ``orm``, ``prm`` or ``prm_cot``.
        template: the prompt template (default: the variant's template in `spark_hub.rm_prompts`).
        aggregation: solution score; default ``final`` for ``orm``, ``min`` otherwise.
        generation: overrides of temperature / top_p / max_tokens / seed (defaults: greedy, 1024 tokens;
            PRM-CoT targets are long, raise max_tokens for them).
    """
    if variant not in rm_prompts.VARIANTS:
        raise SparkHubError(f"unknown PRM variant {variant!r}", hint=f"valid: {', '.join(rm_prompts.VARIANTS)}")
    text = rm_prompts.TEMPLATES[variant] if template is None else template
    gen = {**DEFAULT_GENERATION, **(generation or {})}
    if variant == "prm_cot" and not (generation and "max_tokens" in generation):
        gen["max_tokens"] = 4096
    spec = {
        "schema_version": SPEC_VERSION,
        "kind": "generative",
        "name": name or f"spark-{variant.replace('_', '-')}",
        "variant": variant,
        "prompt": {"template": text, "template_sha256": sha256_text(text), "system": system,
                   "step_format": rm_prompts.STEP_FORMAT, "answer_format": rm_prompts.ANSWER_FORMAT},
        "verdicts": {"reader": variant},
        "generation": gen,
        "aggregation": aggregation or DEFAULT_AGGREGATION[variant],
        "threshold": threshold,
        "base_model": base_model,
    }
    validate_spec(spec)
    return spec


def builtin_spec(name: str) -> dict[str, Any]:
    """A copy of a built-in convention spec (``qwen2.5-math-prm``, ``math-shepherd``)."""
    if name not in BUILTIN_SPECS:
        raise SparkHubError(f"unknown built-in PRM spec {name!r}", hint=f"valid: {', '.join(BUILTIN_SPECS)}")
    return copy.deepcopy(BUILTIN_SPECS[name])


def spec_hash(spec: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a spec (recorded in manifests and `PRM.describe`)."""
    return sha256_text(json.dumps(spec, sort_keys=True, ensure_ascii=False))


def validate_spec(spec: Any, *, where: str = SPEC_NAME) -> dict[str, Any]:
    """Check a spec against ``schemas/prm_spec.v1.json`` and its own consistency; return it.

    Raises:
        `SparkHubError` naming the JSON path: schema violations, a template whose sha256 differs
        from ``template_sha256``, a template without ``{problem}``/``{solution}``, or a verdict
        reader that does not match the variant.
    """
    from spark_hub.schema import validate

    if not isinstance(spec, dict):
        raise SparkHubError("a PRM spec must be a JSON object", where=where)
    validate("prm_spec", spec, where=where)
    if spec["kind"] == "generative":
        prompt = spec["prompt"]
        if sha256_text(prompt["template"]) != prompt["template_sha256"]:
            raise SparkHubError(
                "prompt.template does not match prompt.template_sha256", where=where,
                hint="the template was edited after the model was trained; restore it or retrain",
            )
        for placeholder in ("{problem}", "{solution}"):
            if placeholder not in prompt["template"]:
                raise SparkHubError(f"prompt.template has no {placeholder} placeholder", where=where)
        if spec["generation"].get("constrained") and spec["variant"] != "prm_cot":
            raise SparkHubError("generation.constrained is only defined for the prm_cot variant (the verifier format)",
                                where=where)
        if spec["verdicts"]["reader"] != spec["variant"]:
            raise SparkHubError(
                f"verdicts.reader {spec['verdicts']['reader']!r} does not match variant {spec['variant']!r}",
                where=where,
            )
    else:
        if spec["aggregation"] == "final":
            raise SparkHubError(f"aggregation 'final' needs a generative PRM, not {spec['kind']!r}", where=where)
        if not spec["input"].get("marker"):
            raise SparkHubError("input.marker (the step separator or tag) is required", where=where)
        head = spec["model"].get("head")
        allowed = ("mlp", "token_classification") if spec["kind"] == "step_separator" else ("lm",)
        if head not in allowed:
            raise SparkHubError(f"model.head must be one of {', '.join(allowed)} for kind {spec['kind']!r}",
                                where=where)
    return spec


def read_spec(folder: str | Path) -> dict[str, Any]:
    """Read and validate ``folder/prm_spec.json``."""
    path = Path(folder) / SPEC_NAME
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SparkHubError(f"no {SPEC_NAME} in {folder}", hint="is this a PRM folder written by spark-hub?") from None
    except json.JSONDecodeError as e:
        raise SparkHubError(f"invalid JSON ({e.msg})", where=f"{path}:{e.lineno}") from e
    return validate_spec(spec, where=str(path))


def write_spec(folder: str | Path, spec: Mapping[str, Any]) -> Path:
    """Validate and write ``folder/prm_spec.json`` atomically."""
    spec = validate_spec(dict(spec))
    path = Path(folder) / SPEC_NAME
    atomic_write_json(path, spec)
    return path


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------


def aggregate(values: Sequence[float | None], how: str, *, final: float | None = None) -> float | None:
    """One solution score from per-step values (None when any is missing or there are none)."""
    if how == "final":
        return final
    if how not in AGGREGATIONS:
        raise SparkHubError(f"unknown aggregation {how!r}", hint=f"valid: {', '.join(AGGREGATIONS)}")
    if not values or any(v is None for v in values):
        return None
    if how == "min":
        return min(values)
    if how == "product":
        return math.prod(values)
    if how == "last":
        return values[-1]
    return sum(values) / len(values)


@dataclass
class StepScores:
    """What a PRM says about one solution.

    ``step_verdicts`` and ``step_probs`` always have one entry per input step (None where the model
    said nothing readable about that step); an outcome-only RM (ORM) has empty lists.
    """

    n_steps: int
    step_verdicts: list[bool | None] = field(default_factory=list)
    step_probs: list[float | None] = field(default_factory=list)
    """P(step is correct) where the model gives a probability, else None."""
    final_verdict: bool | None = None
    final_prob: float | None = None
    """P(final verdict is Yes), when read from logprobs."""
    solution_score: float | None = None
    text: str | None = None
    """The model's raw output (generative kinds)."""
    status: str = OK
    outcome_only: bool = False

    @property
    def first_error(self) -> int | None:
        """0-based index of the first step judged incorrect; -1 when every step is judged correct;
        None when that cannot be told (a step without a verdict comes first, or no output).

        An outcome-only RM says -1 for "Yes" and None for "No" (it cannot locate the error).
        """
        if self.outcome_only:
            return -1 if self.final_verdict is True else None
        if len(self.step_verdicts) < self.n_steps or self.n_steps == 0:
            return None
        for index, verdict in enumerate(self.step_verdicts):
            if verdict is None:
                return None
            if verdict is False:
                return index
        return -1

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["first_error"] = self.first_error
        return d


def _finish(scores: StepScores, aggregation: str) -> StepScores:
    values = [
        p if p is not None else (None if v is None else float(v))
        for p, v in zip(scores.step_probs, scores.step_verdicts)
    ]
    final = scores.final_prob
    if final is None and scores.final_verdict is not None:
        final = float(scores.final_verdict)
    scores.solution_score = aggregate(values, aggregation, final=final)
    return scores


def _item(item: Any) -> tuple[str, list[str], str | None]:
    """``(problem, steps, final_answer)`` from a tuple/list or a mapping."""
    if isinstance(item, Mapping):
        problem, steps, answer = item.get("problem"), item.get("steps"), item.get("final_answer")
    elif isinstance(item, (tuple, list)) and len(item) in (2, 3):
        problem, steps = item[0], item[1]
        answer = item[2] if len(item) == 3 else None
    else:
        raise SparkHubError(
            "each item must be (problem, steps), (problem, steps, final_answer) or a dict with those keys"
        )
    if not isinstance(problem, str) or not isinstance(steps, (list, tuple)) or not all(isinstance(s, str) for s in steps):
        raise SparkHubError("an item needs a problem string and a list of step strings")
    return problem, list(steps), answer


# ------------------------------------------------------------------------------------------------
# PRM classes
# ------------------------------------------------------------------------------------------------


class PRM:
    """Base class: `score` one solution or `score_batch` many (what `load_prm` returns).

    Attributes:
        spec: the validated spec.
        source: provenance (``id``, ``revision``, ``folder``, ``spec_sha256``).
        calls: model invocations so far (one per `score_batch`).
    """

    def __init__(self, spec: dict[str, Any], source: dict[str, Any]):
        self.spec = spec
        self.source = source
        self.calls = 0

    @property
    def kind(self) -> str:
        return self.spec["kind"]

    def score(self, problem: str, steps: Sequence[str], final_answer: str | None = None) -> StepScores:
        """Score one solution (a batch of one)."""
        return self.score_batch([(problem, list(steps), final_answer)])[0]

    def score_batch(self, items: Iterable[Any]) -> list[StepScores]:
        """Score many solutions with ONE model call; items are ``(problem, steps[, final_answer])``
        tuples or ``{"problem", "steps", "final_answer"}`` dicts."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Provenance for manifests and results."""
        return {"kind": self.kind, "name": self.spec.get("name"), "variant": self.spec.get("variant"),
                "aggregation": self.spec["aggregation"], **self.source}

    def close(self) -> None:
        pass


class GenerativePRM(PRM):
    """A chat model that writes its verdicts (SPARK ORM / PRM / PRM-CoT), through a backend."""

    def __init__(self, spec: dict[str, Any], source: dict[str, Any], backend: Any):
        super().__init__(spec, source)
        self.backend = backend
        from spark_hub.backends.base import GenerationRequest

        self._request_fields = {f.name for f in dataclasses.fields(GenerationRequest)}

    def messages(self, problem: str, steps: Sequence[str], final_answer: str | None = None) -> list[dict[str, str]]:
        """The chat messages the model is asked (its SFT prompt)."""
        prompt = self.spec["prompt"]
        user = rm_prompts.rm_prompt(
            self.spec["variant"], problem, steps, final_answer, template=prompt["template"],
            step_format=prompt.get("step_format", rm_prompts.STEP_FORMAT),
            answer_format=prompt.get("answer_format", rm_prompts.ANSWER_FORMAT),
        )
        messages = [{"role": "system", "content": prompt["system"]}] if prompt.get("system") else []
        return messages + [{"role": "user", "content": user}]

    def request(self, problem: str, steps: Sequence[str], final_answer: str | None = None):
        from spark_hub.backends.base import GenerationRequest

        gen = {**DEFAULT_GENERATION, **self.spec["generation"]}
        sampling: dict[str, Any] = {"n": 1, "temperature": gen["temperature"], "top_p": gen["top_p"],
                                    "max_tokens": gen["max_tokens"], "seed": gen["seed"]}
        if "logprobs" in self._request_fields:
            sampling["logprobs"] = True
        if gen.get("constrained") and steps:
            if "constraint" not in self._request_fields:
                raise SparkHubError("generation.constrained needs a spark-hub with constrained decoding")
            from spark_hub.constrained import verification_constraint

            sampling["constraint"] = verification_constraint(len(steps))
        return GenerationRequest.from_chat(self.messages(problem, steps, final_answer), **sampling)

    def score_batch(self, items: Iterable[Any]) -> list[StepScores]:
        parsed = [_item(item) for item in items]
        if not parsed:
            return []
        outputs = self.backend.generate([self.request(*item) for item in parsed])
        self.calls += 1
        return [self.read(completions[0] if completions else None, len(item[1]))
                for item, completions in zip(parsed, outputs)]

    def read(self, completion: Any, n_steps: int) -> StepScores:
        """Turn one completion into `StepScores` (never raises on the text)."""
        text = getattr(completion, "text", None) or ""
        variant = self.spec["variant"]
        verdicts = rm_prompts.read_verdicts(self.spec["verdicts"]["reader"], text, n_steps)
        final_prob = _verdict_prob(completion, verdicts.final_position, verdicts.final_verdict)
        if variant == "orm":
            scores = StepScores(n_steps=n_steps, final_verdict=verdicts.final_verdict, final_prob=final_prob,
                                text=text, status=verdicts.status, outcome_only=True)
            return _finish(scores, self.spec["aggregation"])
        step_verdicts = (list(verdicts.step_verdicts) + [None] * n_steps)[:n_steps]
        positions = (list(verdicts.step_positions) + [None] * n_steps)[:n_steps]
        step_probs = [_verdict_prob(completion, pos, v) for pos, v in zip(positions, step_verdicts)]
        scores = StepScores(n_steps=n_steps, step_verdicts=step_verdicts, step_probs=step_probs,
                            final_verdict=verdicts.final_verdict, final_prob=final_prob, text=text,
                            status=verdicts.status)
        return _finish(scores, self.spec["aggregation"])

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()


def _verdict_prob(completion: Any, position: int | None, verdict: bool | None) -> float | None:
    """P(positive verdict) from the logprobs of the tokens that spell the verdict word.

    The span is the word at ``position`` plus the spaces just before it (tokenizers often put the
    space in its own token, and that token is where " correct" and " incorrect" part ways). Its
    probability is the product of the token probabilities; P(correct) is that for a positive
    verdict and its complement otherwise.
    """
    if completion is None or position is None or verdict is None:
        return None
    text = getattr(completion, "text", None) or ""
    logprobs = getattr(completion, "logprobs", None)
    offsets = getattr(completion, "token_offsets", None)
    if not logprobs or not offsets or len(offsets) != len(logprobs) or position >= len(text):
        return None
    start, end = position, position
    while start > 0 and text[start - 1] in " \t":
        start -= 1
    while end < len(text) and text[end].isalpha():
        end += 1
    ends = list(offsets[1:]) + [len(text)]
    tokens = [i for i, (s, e) in enumerate(zip(offsets, ends)) if s < end and e > start]
    if not tokens:
        return None
    p = min(1.0, max(0.0, math.exp(sum(logprobs[i] for i in tokens))))
    return p if verdict else 1.0 - p


class _TorchPRM(PRM):
    """Shared machinery of the discriminative conventions: tokenise, one padded forward, read markers."""

    def __init__(self, spec: dict[str, Any], source: dict[str, Any], folder: Path, *, device: str = "auto",
                 dtype: str = "auto", trust_remote_code: bool = False):
        super().__init__(spec, source)
        import torch
        from transformers import AutoTokenizer

        self.torch = torch
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        dtype = spec["model"].get("dtype", "auto") if dtype == "auto" else dtype
        if dtype == "auto":
            self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            self.dtype = getattr(torch, dtype, None)
            if not isinstance(self.dtype, torch.dtype):
                raise SparkHubError(f"unknown dtype {dtype!r}", hint="use auto, float32, bfloat16 or float16")
        self.trust_remote_code = trust_remote_code
        self.folder = folder
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise SparkHubError(f"cannot load the tokenizer of {folder}: {str(e).splitlines()[0]}") from e
        inp = spec["input"]
        self.marker_id = inp.get("marker_id")
        if self.marker_id is None:
            ids = self.tokenizer.encode(inp["marker"], add_special_tokens=False)
            if not ids:
                raise SparkHubError(f"the tokenizer of {folder} maps the step marker {inp['marker']!r} to no token")
            self.marker_id = ids[-1]
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        self.max_length = inp.get("max_length")
        self._load_model()

    def _from_pretrained(self, cls):
        try:
            model = cls.from_pretrained(str(self.folder), dtype=self.dtype, use_safetensors=True,
                                        trust_remote_code=self.trust_remote_code)
        except (OSError, ValueError) as e:
            raise SparkHubError(f"cannot load PRM weights from {self.folder}: {str(e).splitlines()[0]}") from e
        return model.to(self.device).eval()

    def _load_model(self) -> None:
        raise NotImplementedError

    def text(self, problem: str, steps: Sequence[str], final_answer: str | None = None) -> str:
        """The exact text the model reads (markers included)."""
        inp = self.spec["input"]
        solution = inp.get("joiner", "").join(
            inp.get("step_format", "{step}{marker}").format(k=k, step=step, marker=inp["marker"])
            for k, step in enumerate(steps, start=1)
        )
        if inp.get("format", "plain") == "chat":
            messages = [{"role": "system", "content": inp["system"]}] if inp.get("system") else []
            messages += [{"role": "user", "content": problem}, {"role": "assistant", "content": solution}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        return inp.get("template", "{problem} {solution}").format(problem=problem, solution=solution)

    def _encode(self, problem: str, steps: Sequence[str], final_answer: str | None) -> tuple[list[int], bool]:
        ids = self.tokenizer.encode(self.text(problem, steps, final_answer),
                                    add_special_tokens=self.spec["input"].get("add_special_tokens", True))
        if self.max_length is not None and len(ids) > self.max_length:
            return ids[: self.max_length], True
        return ids, False

    def _positive_probs(self, input_ids, attention_mask):
        """(B, T) P(correct) at every position (only marker positions are read)."""
        raise NotImplementedError

    def score_batch(self, items: Iterable[Any]) -> list[StepScores]:
        torch = self.torch
        parsed = [_item(item) for item in items]
        if not parsed:
            return []
        encoded = [self._encode(*item) for item in parsed]
        width = max(len(ids) for ids, _ in encoded)
        input_ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, (ids, _) in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        with torch.inference_mode():
            probs = self._positive_probs(input_ids.to(self.device), attention_mask.to(self.device)).float().cpu()
        self.calls += 1
        results = []
        for row, ((ids, truncated), (_, steps, _)) in enumerate(zip(encoded, parsed)):
            positions = [i for i, token in enumerate(ids) if token == self.marker_id]
            values = [float(probs[row, i]) for i in positions]
            n = len(steps)
            if n == 0:
                status = NO_STEPS
            elif len(values) == n:
                status = OK
            elif truncated and len(values) < n:
                status = TRUNCATED
            else:
                status = STEP_COUNT_MISMATCH
            step_probs: list[float | None] = (values + [None] * n)[:n]
            threshold = self.spec["threshold"]
            verdicts = [None if p is None else p >= threshold for p in step_probs]
            results.append(_finish(StepScores(n_steps=n, step_verdicts=verdicts, step_probs=step_probs,
                                              status=status), self.spec["aggregation"]))
        return results

    def close(self) -> None:
        self.model = None


class StepSeparatorPRM(_TorchPRM):
    """Qwen2.5-Math-PRM convention: a two-class head read at each step separator."""

    def _load_model(self) -> None:
        model_spec = self.spec["model"]
        self.positive = model_spec.get("positive_label", 1)
        if model_spec["head"] == "token_classification":
            from transformers import AutoModelForTokenClassification

            self.model = self._from_pretrained(AutoModelForTokenClassification)
            self.head = None
            return
        from transformers import AutoModel

        self.model = self._from_pretrained(AutoModel)
        self.head = _load_mlp_head(self.folder, model_spec.get("head_prefix", "score"),
                                   model_spec.get("num_labels", 2)).to(self.device, self.dtype).eval()

    def _positive_probs(self, input_ids, attention_mask):
        if self.head is None:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        else:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            logits = self.head(hidden)
        return logits.float().softmax(dim=-1)[..., self.positive]


class StepTagPRM(_TorchPRM):
    """Math-Shepherd convention: softmax over the ``+``/``-`` token logits at each step tag."""

    def _load_model(self) -> None:
        from transformers import AutoModelForCausalLM

        score = self.spec["score"]
        pos, neg = score.get("positive_token_id"), score.get("negative_token_id")
        if pos is None or neg is None:
            words = score.get("candidates", "+ -").split()
            ids = [self.tokenizer.encode(word, add_special_tokens=False) for word in words]
            if len(words) != 2 or not all(ids):
                raise SparkHubError(
                    f"score.candidates {score.get('candidates')!r} must be two tokens, positive first",
                    where=SPEC_NAME, hint="or set score.positive_token_id and score.negative_token_id",
                )
            # each word tokenised alone, its last id (with SentencePiece: the "▁+" / "▁-" pieces the
            # Math-Shepherd card gets from encode("+ -")[1:])
            pos = ids[0][-1] if pos is None else pos
            neg = ids[1][-1] if neg is None else neg
        self.candidates = [pos, neg]
        self.model = self._from_pretrained(AutoModelForCausalLM)

    def _positive_probs(self, input_ids, attention_mask):
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return logits[..., self.candidates].float().softmax(dim=-1)[..., 0]


def _load_mlp_head(folder: Path, prefix: str, num_labels: int):
    """``Linear -> ReLU -> Linear`` from the checkpoint tensors ``{prefix}.0.*`` and ``{prefix}.2.*``."""
    import torch
    from safetensors import safe_open

    tensors: dict[str, Any] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if key.startswith(prefix + "."):
                    tensors[key[len(prefix) + 1 :]] = f.get_tensor(key)
    needed = {"0.weight", "2.weight"}
    if not needed <= set(tensors):
        raise SparkHubError(
            f"no '{prefix}.0.weight' / '{prefix}.2.weight' head tensors in the safetensors files of {folder}",
            hint="model.head 'mlp' expects the Qwen2.5-Math-PRM layout; use 'token_classification' otherwise",
        )
    hidden, inner = tensors["0.weight"].shape[1], tensors["0.weight"].shape[0]
    labels = tensors["2.weight"].shape[0]
    if labels != num_labels:
        raise SparkHubError(f"the head in {folder} has {labels} outputs, the spec says num_labels={num_labels}")
    head = torch.nn.Sequential(
        torch.nn.Linear(hidden, inner, bias="0.bias" in tensors),
        torch.nn.ReLU(),
        torch.nn.Linear(inner, labels, bias="2.bias" in tensors),
    )
    head.load_state_dict(tensors, strict=True)
    return head


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------


def _check_weights(folder: Path) -> None:
    if any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise SparkHubError(
            f"{folder} has only pickle weights ({', '.join(pickles[:3])}); load_prm reads safetensors only",
            hint="convert once with model.save_pretrained(dir, safe_serialization=True)",
        )
    raise SparkHubError(f"no *.safetensors weights in {folder}")


def _fetch_published(repo_id: str, revision: str | None, endpoint: str | None, token: str | None) -> Path:
    """Fetch a published (non spark-hub) PRM repo: configs, tokenizer and safetensors only."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=SAFE_PATTERNS,
                                      endpoint=endpoint, token=token))
    except Exception as e:  # repo / revision not found, network
        raise SparkHubError(
            f"cannot download model {repo_id}@{revision or 'main'}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
            hint="check the repo id, --revision and HF_ENDPOINT / HF_TOKEN",
        ) from e


def _resolve_spec(spec: Any, folder: Path, repo_id: str | None) -> dict[str, Any]:
    if isinstance(spec, Mapping):
        return validate_spec(copy.deepcopy(dict(spec)), where="spec argument")
    if isinstance(spec, str):
        if spec in BUILTIN_SPECS:
            return builtin_spec(spec)
        path = Path(spec)
        if path.is_file():
            try:
                return validate_spec(json.loads(path.read_text(encoding="utf-8")), where=str(path))
            except json.JSONDecodeError as e:
                raise SparkHubError(f"invalid JSON ({e.msg})", where=f"{path}:{e.lineno}") from e
        raise SparkHubError(f"unknown PRM spec {spec!r}",
                            hint=f"a built-in name ({', '.join(BUILTIN_SPECS)}) or a prm_spec.json path")
    if (folder / SPEC_NAME).is_file():
        return read_spec(folder)
    if repo_id in KNOWN_REPOS:
        return builtin_spec(KNOWN_REPOS[repo_id])
    config_path = folder / "config.json"
    if config_path.is_file():
        try:
            architectures = json.loads(config_path.read_text(encoding="utf-8")).get("architectures") or []
        except (json.JSONDecodeError, AttributeError):
            architectures = []
        for arch in architectures:
            if arch in KNOWN_ARCHITECTURES:
                return builtin_spec(KNOWN_ARCHITECTURES[arch])
    raise SparkHubError(
        f"no {SPEC_NAME} in {folder} and no known convention for it",
        hint=f"pass spec= one of {', '.join(BUILTIN_SPECS)} or a prm_spec.json path",
    )


def load_prm(
    path_or_repo: str | Path,
    revision: str | None = None,
    backend: Any = "transformers",
    *,
    spec: str | Mapping[str, Any] | None = None,
    trust_remote_code: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    endpoint: str | None = None,
    token: str | None = None,
    **backend_options: Any,
) -> PRM:
    """Load a PRM from a local folder or a Hub repo and return an object that scores solutions.

    Args:
        path_or_repo: a folder holding ``prm_spec.json`` and the model, or a Hub model repo id. A
            spark-hub PRM repo is fetched with `spark_hub.hub.download` (its manifest and file hashes
            checked); a published PRM of a known convention (``Qwen/Qwen2.5-Math-PRM-7B``,
            ``peiyi9979/math-shepherd-mistral-7b-prm``) with its configs, tokenizer and safetensors.
        revision: Hub branch, tag or commit (default ``main``).
        backend: for generative PRMs, the backend name (``transformers``, ``vllm``, ``openai``...) or
            a backend object (e.g. a `spark_hub.cache.CachedBackend`, to resume); discriminative
            conventions always run with transformers.
        spec: override the spec: a built-in name (``qwen2.5-math-prm``, ``math-shepherd``), a dict
            or a path to a ``prm_spec.json``. Default: the folder's ``prm_spec.json``, else the
            convention of a known repo id or ``config.json`` architecture.
        trust_remote_code: allow model code from the repo (off by default; the built-in conventions
            never need it).
        device, dtype: where and in which precision to run (``auto``: cuda/bfloat16 if available,
            else cpu/float32).
        endpoint, token: Hub endpoint and token (defaults: ``HF_ENDPOINT`` and the usual sources).
        **backend_options: other `spark_hub.backends.base.BackendConfig` fields for a generative
            PRM (``batch_size``, ``base_url``, ``model`` (the served model name for openai), ``extra``...).

    Raises:
        `SparkHubError`: unknown path or repo, missing or invalid spec, pickle-only weights,
            a spec that asks for remote code without ``trust_remote_code=True``, unknown options.
    """
    name = str(path_or_repo)
    local = Path(name).expanduser()
    repo_id = None
    if local.exists():
        if not local.is_dir():
            raise SparkHubError(f"{name} is a file; load_prm needs a PRM folder or a Hub repo id")
        folder = local.resolve()
        source: dict[str, Any] = {"id": name, "revision": None, "folder": str(folder)}
    elif _HUB_ID_RE.match(name):
        repo_id = name
        if spec is not None or name in KNOWN_REPOS:
            folder = _fetch_published(name, revision, endpoint, token)
        else:
            from spark_hub.hub import download

            folder = Path(download(name, revision=revision, repo_type="model", endpoint=endpoint, token=token))
        commit = folder.name if re.fullmatch(r"[0-9a-f]{40}", folder.name) else None
        source = {"id": name, "revision": revision or "main", "commit": commit, "folder": str(folder)}
    else:
        raise SparkHubError(f"PRM {name!r} is neither an existing folder nor a Hub repo id (owner/name)")

    if (folder / "manifest.json").is_file():
        from spark_hub.manifest import read_manifest

        manifest = read_manifest(folder)
        if manifest.get("kind") != "prm":
            raise SparkHubError(f"{name} is a spark-hub {manifest.get('kind')!r} artifact, not a PRM",
                                hint="pass a folder written by `spark-hub train prm`")
    resolved = _resolve_spec(spec, folder, repo_id)
    source["spec_sha256"] = spec_hash(resolved)
    if resolved.get("model", {}).get("trust_remote_code") and not trust_remote_code:
        raise SparkHubError(f"the spec of {name} asks for remote model code",
                            hint="pass trust_remote_code=True if you trust this repository")

    if resolved["kind"] == "generative":
        if isinstance(backend, str):
            backend = _generative_backend(folder, backend, trust_remote_code, device, dtype, backend_options)
        elif backend_options:
            raise SparkHubError(f"backend options {sorted(backend_options)} need a backend name, not a backend object")
        source["model"] = getattr(backend, "model_id", None)
        return GenerativePRM(resolved, source, backend)

    if backend not in ("transformers", None) or backend_options:
        raise SparkHubError(
            f"{resolved.get('name') or resolved['kind']} PRMs score with transformers only",
            hint="drop the backend argument and backend options",
        )
    _check_weights(folder)
    cls = StepSeparatorPRM if resolved["kind"] == "step_separator" else StepTagPRM
    return cls(resolved, source, folder, device=device, dtype=dtype, trust_remote_code=trust_remote_code)


def _generative_backend(folder: Path, name: str, trust_remote_code: bool, device: str, dtype: str,
                        options: dict[str, Any]):
    from spark_hub.backends.base import BackendConfig, load_backend

    known = {f.name for f in dataclasses.fields(BackendConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SparkHubError(f"unknown backend option(s) {', '.join(unknown)}",
                            hint=f"valid: {', '.join(sorted(known - {'backend'}))}")
    if name in ("transformers", "vllm", "ray") and "model" not in options:
        _check_weights(folder)
    config_kwargs: dict[str, Any] = {"backend": name, "model": str(folder), "trust_remote_code": trust_remote_code,
                                     "device": device, "dtype": dtype, **options}
    if "logprobs" in known:
        config_kwargs.setdefault("logprobs", True)
    return load_backend(BackendConfig(**config_kwargs))


__all__ = [
    "AGGREGATIONS",
    "BUILTIN_SPECS",
    "GenerativePRM",
    "KNOWN_REPOS",
    "PRM",
    "SPEC_NAME",
    "StepScores",
    "StepSeparatorPRM",
    "StepTagPRM",
    "aggregate",
    "builtin_spec",
    "generative_spec",
    "load_prm",
    "read_spec",
    "spec_hash",
    "validate_spec",
    "write_spec",
]
