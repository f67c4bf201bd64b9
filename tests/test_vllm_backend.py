"""The vllm backend.

Two groups:

- default suite (no vLLM needed): the missing-extra error, and fingerprint / describe / option
  checks, which never start the engine;
- ``@pytest.mark.vllm`` (opt-in, ``make test-vllm``; skipped where vLLM is not importable): a tiny
  random Llama built here (head_dim 64, as vLLM's CPU attention needs) served by a real engine:
  n samples per request, order, finish reasons, token counts, seeds, and a Stage I build whose
  verifier runs on vLLM.

The engine spawns worker processes and takes ~30 s to start on 2 CPU cores (``enforce_eager``), so
the engine tests share one engine per class.
"""

import json
import os

import pytest

from helpers import read_rows, scripted_recipe
from spark_hub.backends.base import BackendConfig, GenerationRequest, load_backend
from spark_hub.backends.transformers_ import folder_hash
from spark_hub.backends.vllm_ import VLLMBackend, is_vllm_available, split_extra
from spark_hub.errors import MissingExtraError, SparkHubError

ENGINE_OPTIONS = {"kv_cache_space": 1, "enforce_eager": True, "max_model_len": 1024}
"""Small and quick on CPU: 1 GiB KV cache, no torch.compile warm-up."""

requires_vllm = pytest.mark.skipif(not is_vllm_available(), reason="needs vllm (make test-vllm)")


def chat(text, **sampling):
    return GenerationRequest.from_chat([{"role": "user", "content": text}], **sampling)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tiny_models import make_tiny_model

    path = make_tiny_model(
        tmp_path_factory.mktemp("tiny-vllm"), hidden_size=128, num_attention_heads=2, num_key_value_heads=1
    )
    # Verifier prompts run past 1024 tokens with the tiny tokenizer: allow 4096 positions (RoPE).
    config_path = os.path.join(path, "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["max_position_embeddings"] = 4096
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2)
    return path


# ---------------------------------------------------------------------------------------------
# Default suite: no engine, no vLLM needed
# ---------------------------------------------------------------------------------------------


def test_missing_vllm_names_the_extra(monkeypatch, tiny_dir):
    import spark_hub.backends.vllm_ as vllm_module

    monkeypatch.setattr(vllm_module, "is_vllm_available", lambda: False)
    with pytest.raises(MissingExtraError) as info:
        load_backend(BackendConfig(backend="vllm", model=tiny_dir))
    message = str(info.value)
    assert "pip install 'spark-hub[vllm]'" in message and "\n" not in message
    assert isinstance(info.value, ImportError) and isinstance(info.value, SparkHubError)


def test_fingerprint_and_describe_do_not_need_the_engine(tiny_dir):
    backend = VLLMBackend(BackendConfig(backend="vllm", model=tiny_dir), check_installed=False)
    assert backend.fingerprint() == f"folder-sha256:{folder_hash(tiny_dir)}"
    described = backend.describe()
    assert described["backend"] == "vllm" and described["fingerprint"] == backend.fingerprint()
    assert described["file_hash"] == folder_hash(tiny_dir) and described["source"] == tiny_dir
    assert json.dumps(described)  # the manifest stores it as JSON
    assert backend.llm is None  # nothing was started


def test_engine_options_are_not_in_the_fingerprint(tiny_dir):
    plain = VLLMBackend(BackendConfig(backend="vllm", model=tiny_dir), check_installed=False)
    tuned = VLLMBackend(
        BackendConfig(backend="vllm", model=tiny_dir, batch_size=3,
                      extra={"tensor_parallel_size": 2, "gpu_memory_utilization": 0.5, "kv_cache_space": 2}),
        check_installed=False,
    )
    assert plain.fingerprint() == tuned.fingerprint()
    assert tuned.describe()["engine_options"]["kv_cache_memory_bytes"] == 2 << 30


def test_same_fingerprint_as_the_transformers_backend_for_a_gguf(tmp_path):
    from spark_hub.backends.transformers_ import sha256_file

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF not really")  # hashed only: nothing is converted or loaded here
    backend = VLLMBackend(BackendConfig(backend="vllm", model=str(gguf)), check_installed=False)
    assert backend.fingerprint() == f"gguf-sha256:{sha256_file(gguf)}"


def test_split_extra():
    options, engine = split_extra({"enable_thinking": False, "kv_cache_space": 1.5, "max_model_len": 2048})
    assert options == {"enable_thinking": False, "kv_cache_space": 1.5}
    assert engine == {"max_model_len": 2048, "kv_cache_memory_bytes": int(1.5 * (1 << 30))}
    with pytest.raises(SparkHubError, match=r"verifier\.dtype"):
        split_extra({"dtype": "bfloat16"})
    with pytest.raises(SparkHubError, match="kv_cache_space"):
        split_extra({"kv_cache_space": "lots"})
    with pytest.raises(SparkHubError, match="enable_thinking"):
        split_extra({"enable_thinking": "no"})


def test_bad_model_paths_are_one_line_errors(tmp_path):
    for model, expected in [(str(tmp_path / "missing"), "does not exist"), (str(tmp_path), "no config.json")]:
        with pytest.raises(SparkHubError, match=expected) as info:
            VLLMBackend(BackendConfig(backend="vllm", model=model), check_installed=False)
        assert "\n" not in str(info.value)


@pytest.mark.skipif(is_vllm_available(), reason="checks the error raised without vLLM")
def test_generate_without_vllm_names_the_extra(tiny_dir):
    backend = VLLMBackend(BackendConfig(backend="vllm", model=tiny_dir), check_installed=False)
    with pytest.raises(MissingExtraError, match=r"spark-hub\[vllm\]"):
        backend.generate([chat("hi", max_tokens=4)])


# ---------------------------------------------------------------------------------------------
# With a real engine (opt-in: make test-vllm)
# ---------------------------------------------------------------------------------------------


@pytest.mark.vllm
@requires_vllm
class TestEngine:
    @pytest.fixture(scope="class")
    def backend(self, tiny_dir):
        backend = load_backend(BackendConfig(backend="vllm", model=tiny_dir, dtype="float32", extra=ENGINE_OPTIONS))
        assert backend.llm is None  # lazily started by the first generate
        yield backend
        backend.close()

    def test_n_completions_in_request_order(self, backend):
        requests = [
            chat("Step 1: add 2 and 3 to get the total number of apples.", n=3, temperature=0.8, max_tokens=12, seed=1),
            chat("hi", n=2, temperature=0.0, max_tokens=6),
            chat("What is 4 times 5?", n=1, temperature=1.0, top_p=0.9, max_tokens=1, seed=2),
        ]
        results = backend.generate(requests)
        assert backend.llm is not None and backend.load_seconds > 0
        assert [len(r) for r in results] == [3, 2, 1]
        for request, completions in zip(requests, results):
            prompt_tokens = backend.count_tokens(request)
            for c in completions:
                assert c.prompt_tokens == prompt_tokens  # order kept; engine and tokenizer agree
                assert c.finish_reason in ("stop", "length")
                assert 1 <= c.completion_tokens <= request.max_tokens
                if c.finish_reason == "length":
                    assert c.completion_tokens == request.max_tokens
        assert results[0][0].prompt_tokens > results[1][0].prompt_tokens
        assert len({c.text for c in results[0]}) > 1  # n=3 sampled sequences differ
        assert results[1][0].to_dict() == results[1][1].to_dict()  # greedy: one sequence, repeated
        assert results[2][0].completion_tokens == 1 and results[2][0].finish_reason == "length"
        assert backend.stats.generated_tokens > 0 and backend.stats.sequences == 3 + 1 + 1

    def test_seed_makes_sampling_reproducible(self, backend):
        request = chat("Verify: 3 + 4 = 7.", n=3, temperature=1.0, max_tokens=10, seed=7)
        first = backend.generate([request])[0]
        again = backend.generate([request])[0]
        batched = backend.generate([chat("another prompt", n=2, temperature=1.0, max_tokens=10, seed=1), request])[1]
        assert [c.text for c in first] == [c.text for c in again] == [c.text for c in batched]
        other = backend.generate([chat("Verify: 3 + 4 = 7.", n=3, temperature=1.0, max_tokens=10, seed=8)])[0]
        assert [c.text for c in other] != [c.text for c in first]

    def test_prompt_over_max_model_len_is_a_one_line_error(self, backend):
        with pytest.raises(SparkHubError, match="max_model_len") as info:
            backend.generate([chat("step answer " * 1000, max_tokens=4)])
        assert "\n" not in str(info.value)

    def test_fingerprint_unchanged_by_the_engine(self, backend, tiny_dir):
        assert backend.fingerprint() == f"folder-sha256:{folder_hash(tiny_dir)}"


@pytest.mark.vllm
@requires_vllm
def test_build_with_the_vllm_verifier(tmp_path, tiny_dir, monkeypatch):
    """Stage I end to end: scripted generator (a random tiny model writes no steps), vLLM verifier."""
    from spark_hub.config import load_build_config
    from spark_hub.schema import fast_check
    from spark_hub.stages import build

    overrides = [
        "verifier.backend=vllm", f"verifier.model={tiny_dir}", "verifier.n=3", "verifier.max_tokens=16",
        "verifier.dtype=float32",
        "verifier.extra={kv_cache_space: 1, enforce_eager: true, max_model_len: 4096}",
    ]
    out = tmp_path / "out"
    config = load_build_config(scripted_recipe(tmp_path), overrides, output_dir=str(out), limit=1)
    result = build.main(config, progress=False)

    assert not result.reused and result.model_requests["verifier"] == 2  # one request per solution, n=3
    records, verifications = read_rows(out), read_rows(out, "verifications")
    assert len(records) == 2 and len(verifications) == 6
    is_record, is_verification = fast_check("step_record"), fast_check("verification")
    assert all(is_record(r) for r in records) and all(is_verification(v) for v in verifications)
    assert all(v["finish_reason"] in ("stop", "length") and v["completion_tokens"] >= 1 for v in verifications)
    assert {v["verifier"] for v in verifications} == {tiny_dir}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["verifier"]["backend"] == "vllm"
    assert manifest["models"]["verifier"]["fingerprint"] == f"folder-sha256:{folder_hash(tiny_dir)}"

    # A finished build re-runs without starting vLLM.
    def no_engine(self):
        raise AssertionError("the engine must not start for a finished build")

    monkeypatch.setattr(VLLMBackend, "_engine", no_engine)
    again = build.main(load_build_config(scripted_recipe(tmp_path), overrides, output_dir=str(out), limit=1),
                       progress=False)
    assert again.reused and again.model_requests == {"generator": 0, "verifier": 0}
