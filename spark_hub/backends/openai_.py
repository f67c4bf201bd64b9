"""Backend for any OpenAI-compatible chat server (``vllm serve MODEL``, TGI, SGLang, hosted APIs).

Every request is one ``POST {base_url}/chat/completions`` with ``model``, ``messages``, ``n``,
``temperature``, ``top_p``, ``max_tokens`` and ``seed``. Requests run concurrently on an asyncio loop
(``config.max_concurrency`` in flight), and failures that are worth retrying (HTTP 429, 5xx, connection
errors, timeouts) are retried ``config.max_retries`` times with exponential backoff and jitter.

The API key is read from the environment variable named by ``config.api_key_env`` (it may be unset
for local servers) and sent as ``Authorization: Bearer ...``; it is never logged or put in errors.

Servers do not expose a hash of their weights, so `fingerprint` is the model id plus the configured
``revision``: pin ``revision`` (e.g. the commit you passed to ``vllm serve --revision``) to keep cache
keys honest when the served model changes under the same name.

Requests with ``logprobs`` send ``"logprobs": true`` and get ``logprobs`` and ``token_offsets`` from
the choice's ``logprobs.content`` (token ids only from servers that name tokens ``token_id:N``, as
vLLM does with ``return_tokens_as_token_ids``). A constrained request (``request.constraint``) sends
the regex of `spark_hub.constrained.verification_regex` in vLLM's structured-output extension,
``"structured_outputs": {"regex": ...}`` (vLLM >= 0.12); ``extra.constraint_field: guided_regex``
sends ``"guided_regex": ...`` for older vLLM servers. A server that rejects it (HTTP 400) fails with
an error that says so; servers that ignore unknown fields decode unconstrained.

Engine knobs in ``config.extra``: ``retry_delay`` (first backoff in seconds, default 1.0),
``max_retry_delay`` (cap, default 30.0), ``constraint_field`` (``structured_outputs`` or
``guided_regex``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import random
import threading
import time
from typing import Any

import httpx

from spark_hub.backends.base import BackendConfig, Completion, GenerationRequest, GenerationStats, token_offsets
from spark_hub.errors import SparkHubError

logger = logging.getLogger(__name__)

_RETRY_STATUS = {408, 429}
_FINISH_REASONS = {"stop", "length"}




class OpenAIBackend:
    """Generate through an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        config: the `BackendConfig`; used fields: ``model`` (the name the server serves),
            ``revision`` (only recorded), ``base_url`` (required, e.g. ``http://localhost:8000/v1``),
            ``api_key_env``, ``max_concurrency``, ``max_retries``, ``timeout`` and ``extra``
            (``retry_delay``, ``max_retry_delay``).

    Attributes:
        model_id: ``config.model``.
        stats: a `GenerationStats` with the completion tokens received and wall-clock seconds.

    Raises:
        SparkHubError: no ``base_url``, the server stays unreachable after retries, or it rejects a
            request (4xx).
    """

    def __init__(self, config: BackendConfig):
        if not config.base_url:
            raise SparkHubError(
                "the openai backend needs the server URL",
                hint="--set generator.base_url=http://localhost:8000/v1 (after `vllm serve MODEL`)",
            )
        if config.max_concurrency < 1 or config.max_retries < 0:
            raise SparkHubError(
                f"max_concurrency must be >= 1 and max_retries >= 0, got {config.max_concurrency} "
                f"and {config.max_retries}"
            )
        if config.model == "embedded":
            raise SparkHubError(
                "the openai backend needs the model name the server serves, not `embedded`",
                hint="--set generator.model=HuggingFaceTB/SmolLM2-135M-Instruct (as passed to `vllm serve`)",
            )
        self.config = config
        self.model_id = config.model
        self.base_url = config.base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.retry_delay = float(config.extra.get("retry_delay", 1.0))
        self.max_retry_delay = float(config.extra.get("max_retry_delay", 30.0))
        self.constraint_field = config.extra.get("constraint_field", "structured_outputs")
        if self.constraint_field not in CONSTRAINT_FIELDS:
            raise SparkHubError(
                f"extra.constraint_field must be one of {', '.join(CONSTRAINT_FIELDS)}, got {self.constraint_field!r}"
            )
        self.stats = GenerationStats()
        self._lock = threading.Lock()

    # -- provenance ---------------------------------------------------------------------------

    def fingerprint(self) -> str:
        """``openai:<model>@<revision>`` (revision ``unpinned`` when not configured): servers expose
        no weights hash, so this only changes when you change the id or the configured revision."""
        return f"openai:{self.model_id}@{self.config.revision or 'unpinned'}"

    def describe(self) -> dict[str, Any]:
        """Provenance for the manifest (the server URL is recorded, the API key never)."""
        return {
            "id": self.model_id,
            "backend": "openai",
            "revision": self.config.revision,
            "file_hash": None,
            "fingerprint": self.fingerprint(),
            "dtype": None,
            "base_url": self.base_url,
        }

    def count_tokens(self, request: GenerationRequest) -> int | None:
        """Unknown without the server's tokenizer: None."""
        return None

    def close(self) -> None:
        pass

    # -- generation ---------------------------------------------------------------------------

    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        """Sample ``request.n`` completions per request; same order as ``requests``.

        Callable from plain sync code; when an event loop is already running in this thread
        (e.g. in a notebook), the requests run on a fresh loop in a helper thread.
        """
        if not requests:
            return []
        start = time.perf_counter()
        try:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return asyncio.run(self._generate_all(requests))
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
                return pool.submit(asyncio.run, self._generate_all(requests)).result()
        finally:
            self.stats.seconds += time.perf_counter() - start

    async def _generate_all(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        headers = {"Content-Type": "application/json"}
        api_key = os.environ.get(self.config.api_key_env)
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        limits = httpx.Limits(max_connections=self.config.max_concurrency)
        timeout = httpx.Timeout(self.config.timeout, connect=min(10.0, self.config.timeout))
        semaphore = asyncio.Semaphore(self.config.max_concurrency)
        async with httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout) as client:
            tasks = [asyncio.create_task(self._generate_one(client, semaphore, r)) for r in requests]
            try:
                return list(await asyncio.gather(*tasks))
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise

    async def _generate_one(
        self, client: httpx.AsyncClient, semaphore: asyncio.Semaphore, request: GenerationRequest
    ) -> list[Completion]:
        """All ``n`` completions of one request; tops up when the server returns fewer choices."""
        completions: list[Completion] = []
        round_ = 0
        while len(completions) < request.n:
            missing = request.n - len(completions)
            # A server that ignores `n` but honours `seed` would repeat itself: shift the seed per top-up.
            seed = None if request.seed is None else request.seed + round_
            payload = request_payload(self.model_id, request, n=missing, seed=seed,
                                      constraint_field=self.constraint_field)
            body = await self._post(client, semaphore, payload)
            new = _parse_choices(body, with_logprobs=request.logprobs)[:missing]
            if not new:
                raise SparkHubError(f"the server at {self.base_url} returned no choices for model {self.model_id!r}")
            completions.extend(new)
            with self._lock:
                self.stats.sequences += len(new)
                self.stats.generated_tokens += sum(c.completion_tokens for c in new)
            if len(new) < missing:
                logger.debug("server returned %d of %d choices; asking for the rest", len(new), missing)
            round_ += 1
        with self._lock:
            self.stats.requests += 1
        return completions

    async def _post(
        self, client: httpx.AsyncClient, semaphore: asyncio.Semaphore, payload: dict[str, Any]
    ) -> dict[str, Any]:
        """POST with retries on 429 / 5xx / connection errors; returns the decoded JSON body."""
        last_error, connection_failed = "", False
        for attempt in range(self.config.max_retries + 1):
            retry_after = None
            try:
                async with semaphore:
                    response = await client.post(self.url, json=payload)
            except httpx.TransportError as e:  # refused, reset, DNS, timeouts
                last_error = f"{type(e).__name__}: {e}"
                connection_failed = isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout))
            else:
                connection_failed = False
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError:
                        last_error = "HTTP 200 with a body that is not JSON"
                elif response.status_code in _RETRY_STATUS or response.status_code >= 500:
                    last_error = f"HTTP {response.status_code}: {_error_text(response)}"
                    retry_after = _retry_after_seconds(response)
                elif response.status_code == 400 and _constrained(payload):
                    raise SparkHubError(
                        f"the server at {self.base_url} rejected the constrained (structured-output) request for "
                        f"model {self.model_id!r}: HTTP 400: {_error_text(response)}",
                        hint="serve with vLLM >= 0.12 (`structured_outputs`), set extra.constraint_field=guided_regex "
                        "for older vLLM servers, or turn constrained decoding off (--set verifier.constrained=false)",
                    )
                else:
                    raise SparkHubError(
                        f"the server at {self.base_url} rejected the request for model {self.model_id!r}: "
                        f"HTTP {response.status_code}: {_error_text(response)}",
                        hint="check --set generator.model (the name the server serves) and the sampling settings",
                    )
            if attempt == self.config.max_retries:
                break
            delay = min(self.max_retry_delay, self.retry_delay * 2**attempt) * (0.5 + random.random())
            if retry_after is not None:
                delay = min(self.max_retry_delay, max(delay, retry_after))
            logger.warning(
                "request to %s failed (%s); retry %d/%d in %.2f s",
                self.url, last_error, attempt + 1, self.config.max_retries, delay,
            )
            await asyncio.sleep(delay)
        if connection_failed:
            raise SparkHubError(
                f"cannot reach OpenAI-compatible server at {self.base_url}: {last_error} "
                f"(after {self.config.max_retries} retries)",
                hint="start it with `vllm serve MODEL` or fix --set generator.base_url",
            )
        raise SparkHubError(
            f"the server at {self.base_url} kept failing for model {self.model_id!r}: {last_error} "
            f"(after {self.config.max_retries} retries)",
            hint="check the server's logs; lower --set generator.max_concurrency if it is overloaded",
        )


CONSTRAINT_FIELDS = ("structured_outputs", "guided_regex")


def request_payload(model: str, request: GenerationRequest, *, n: int | None = None, seed: int | None = None,
                    constraint_field: str = "structured_outputs") -> dict[str, Any]:
    """The JSON body of one ``/chat/completions`` call for ``request`` (``n``/``seed`` override)."""
    payload: dict[str, Any] = {
        "model": model,
        "messages": request.chat(),
        "n": request.n if n is None else n,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_tokens": request.max_tokens,
    }
    seed = request.seed if seed is None else seed
    if seed is not None:
        payload["seed"] = seed
    if request.logprobs:
        payload["logprobs"] = True
    if request.constraint is not None:
        from spark_hub.constrained import verification_regex

        regex = verification_regex(request.constraint)
        if constraint_field == "guided_regex":
            payload["guided_regex"] = regex
        else:
            payload["structured_outputs"] = {"regex": regex}
    return payload


def _constrained(payload: dict[str, Any]) -> bool:
    return "structured_outputs" in payload or "guided_regex" in payload


def _token_fields(choice: dict[str, Any], text: str) -> dict[str, Any]:
    """token_ids / logprobs / token_offsets from a choice's ``logprobs.content`` (empty if absent)."""
    content = (choice.get("logprobs") or {}).get("content")
    if not content:
        return {}
    logprobs = [round(float(entry.get("logprob", 0.0)), 5) for entry in content]
    tokens = [entry.get("token", "") for entry in content]
    ids = None
    if tokens and all(t.startswith("token_id:") for t in tokens):  # vLLM return_tokens_as_token_ids
        ids = [int(t.split(":", 1)[1]) for t in tokens]
        pieces = [bytes(entry["bytes"]).decode("utf-8", "replace") if entry.get("bytes") is not None else None
                  for entry in content]
    else:
        pieces = tokens
    return {"token_ids": ids, "logprobs": logprobs,
            "token_offsets": None if None in pieces else token_offsets(pieces, text)}


def _parse_choices(body: dict[str, Any], with_logprobs: bool = False) -> list[Completion]:
    """Completions from a chat.completion body. Servers report usage per response, not per choice:
    with several choices, completion tokens are split in proportion to each choice's text length."""
    choices = sorted(body.get("choices") or [], key=lambda c: c.get("index", 0))
    usage = body.get("usage") or {}
    prompt_tokens = int(usage.get("prompt_tokens") or 0)
    total = int(usage.get("completion_tokens") or 0)
    texts = [((choice.get("message") or {}).get("content") or "") for choice in choices]
    chars = sum(len(text) for text in texts)
    completions = []
    for choice, text in zip(choices, texts):
        if len(choices) == 1:
            tokens = total
        else:
            tokens = round(total * len(text) / chars) if chars else total // len(choices)
        reason = choice.get("finish_reason")
        completions.append(
            Completion(
                text=text,
                finish_reason=reason if reason in _FINISH_REASONS else None,
                prompt_tokens=prompt_tokens,
                completion_tokens=tokens,
                **(_token_fields(choice, text) if with_logprobs else {}),
            )
        )
    return completions


def _error_text(response: httpx.Response) -> str:
    """The server's error message, on one line and short."""
    try:
        body = response.json()
        error = body.get("error", body) if isinstance(body, dict) else body
        message = error.get("message", error) if isinstance(error, dict) else error
        text = str(message)
    except ValueError:
        text = response.text
    text = " ".join(text.split())
    return text[:300] or response.reason_phrase


def _retry_after_seconds(response: httpx.Response) -> float | None:
    try:
        return float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None
