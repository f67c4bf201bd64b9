"""The ray backend on a local Ray instance (2 CPUs), with the transformers backend on a tiny model.

Ray starts once for the module: the `ray_run` fixture's backend starts it (``address: local``) on its
first `generate` and shuts it down when closed; the builds in between reuse that instance. Replica
processes import torch and transformers, about 10 s on a 2-core machine, so the tests keep the
number of replica starts small.
"""

import importlib.util
import json
import logging
import shutil

import pytest

ray = pytest.importorskip("ray")
# Ray Data copies its DataContext attribute by attribute, tripping its own deprecation warnings
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")

from helpers import DATA, read_rows  # noqa: E402
from spark_hub.backends.base import Backend, BackendConfig, GenerationRequest, load_backend  # noqa: E402
from spark_hub.config import load_build_config  # noqa: E402
from spark_hub.errors import MissingExtraError, SparkHubError  # noqa: E402
from spark_hub.stages import build  # noqa: E402
from spark_hub.validate import validate_path  # noqa: E402

LOCAL_RAY = {"address": "local", "num_cpus": 2, "object_store_memory": 256 * 1024**2}


def chat(text, **sampling):
    return GenerationRequest.from_chat([{"role": "user", "content": text}], **sampling)


# Prompt lengths all differ, so prompt_tokens shows whether results come back in request order.
REQUESTS = [
    chat("What is 1 + 1?", n=3, temperature=1.0, max_tokens=8, seed=1),
    chat("Step 1: add the numbers " * 2, n=2, temperature=0.0, max_tokens=8),
    chat("How many eggs are left " * 3, n=1, temperature=0.7, max_tokens=6, seed=2),
    chat("Then multiply by two " * 4, n=3, temperature=0.0, max_tokens=8),
    chat("Answer", n=1, temperature=0.0, max_tokens=5),
    chat("the total cost in dollars " * 5, n=2, temperature=1.0, top_p=0.9, max_tokens=7, seed=3),
    chat("first second third " * 6, n=1, temperature=0.0, max_tokens=6),
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tiny_models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def local_backend(tiny_model):
    from spark_hub.backends.transformers_ import TransformersBackend

    return TransformersBackend(BackendConfig(model=tiny_model, batch_size=4))


@pytest.fixture(scope="module")
def ray_run(tiny_model):
    """A Ray Data backend on 2 replicas that starts local Ray, and its results for `REQUESTS`."""
    assert not ray.is_initialized()
    backend = load_backend(BackendConfig(
        backend="ray", model=tiny_model, batch_size=4, extra={**LOCAL_RAY, "num_replicas": 2},
    ))
    results = backend.generate(REQUESTS)
    yield backend, results
    backend.close()
    assert not ray.is_initialized(), "close() must shut down the Ray instance the backend started"


# ---------------------------------------------------------------------------------------------
# without a cluster
# ---------------------------------------------------------------------------------------------


def test_missing_ray_names_the_extra(monkeypatch, tiny_model):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] == "ray" else real_find_spec(name, *a))
    with pytest.raises(MissingExtraError, match=r"pip install 'spark-hub\[ray\]'"):
        load_backend(BackendConfig(backend="ray", model=tiny_model))


def test_fingerprint_and_describe_need_no_cluster(tiny_model, local_backend):
    was_running = ray.is_initialized()
    backend = load_backend(BackendConfig(backend="ray", model=tiny_model, extra={"num_replicas": 3}))
    assert isinstance(backend, Backend)
    # the same key as the local backend: a build started locally resumes on Ray with the same cache
    assert backend.fingerprint() == local_backend.fingerprint()
    info = backend.describe()
    assert info["backend"] == "ray" and info["inner_backend"] == "transformers" and info["id"] == tiny_model
    assert info["fingerprint"] == local_backend.fingerprint() == f"folder-sha256:{info['file_hash']}"
    assert info["num_replicas"] == 3
    assert backend.count_tokens(REQUESTS[0]) is None  # the tokenizer lives on the replicas
    backend.close()
    assert ray.is_initialized() == was_running


@pytest.mark.parametrize("extra, message", [
    ({"inner_backend": "ray"}, "cannot run itself"),
    ({"inner_backend": "nope"}, "unknown inner_backend 'nope'"),
    ({"num_replicas": 0}, "num_replicas must be a positive number"),
    ({"num_gpus_per_replica": -1}, "num_gpus_per_replica must be a non-negative number"),
])
def test_invalid_options(tiny_model, extra, message):
    with pytest.raises(SparkHubError, match=message):
        load_backend(BackendConfig(backend="ray", model=tiny_model, extra=extra))


def test_missing_model_path_fails_on_the_driver(tmp_path):
    backend = load_backend(BackendConfig(backend="ray", model=str(tmp_path / "absent")))
    with pytest.raises(SparkHubError, match="does not exist on the driver"):
        backend.fingerprint()


def test_replica_round_trip_without_ray(tiny_model, local_backend):
    from spark_hub.backends.ray_ import Replica, request_from_json, request_to_json

    assert all(request_from_json(request_to_json(r)) == r for r in REQUESTS)
    replica = Replica(BackendConfig(model=tiny_model, batch_size=4), local_backend.fingerprint())
    out = replica({"index": [5, 1], "request": [request_to_json(REQUESTS[4]), request_to_json(REQUESTS[1])]})
    assert out["index"] == [5, 1]
    local = local_backend.generate([REQUESTS[4], REQUESTS[1]])
    assert [json.loads(c) for c in out["completions"]] == [[c.to_dict() for c in o] for o in local]

    stale = Replica(BackendConfig(model=tiny_model), "folder-sha256:other")
    with pytest.raises(SparkHubError, match="the model files differ between machines"):
        stale.run({"index": [0], "request": [request_to_json(REQUESTS[0])]})


# ---------------------------------------------------------------------------------------------
# generation on local Ray
# ---------------------------------------------------------------------------------------------


def test_results_in_request_order_with_n_each(ray_run, local_backend):
    _, results = ray_run
    assert len(results) == len(REQUESTS)
    for request, completions in zip(REQUESTS, results):
        assert len(completions) == request.n
        for completion in completions:
            assert completion.prompt_tokens == local_backend.count_tokens(request)
            assert 1 <= completion.completion_tokens <= request.max_tokens
            assert completion.finish_reason in ("stop", "length")


def test_greedy_results_match_the_local_backend(ray_run, local_backend):
    _, results = ray_run
    greedy = [i for i, r in enumerate(REQUESTS) if r.temperature == 0]
    local = local_backend.generate([REQUESTS[i] for i in greedy])
    assert [[c.to_dict() for c in results[i]] for i in greedy] == [[c.to_dict() for c in o] for o in local]


def test_kept_replicas_serve_later_calls(ray_run, tiny_model):
    _, first = ray_run
    backend = load_backend(BackendConfig(
        backend="ray", model=tiny_model, batch_size=4, extra={"num_replicas": 2, "keep_replicas": True},
    ))
    try:
        again = backend.generate(REQUESTS)
        greedy = [i for i, r in enumerate(REQUESTS) if r.temperature == 0]
        assert [[c.to_dict() for c in again[i]] for i in greedy] == [[c.to_dict() for c in first[i]] for i in greedy]
        assert [len(c) for c in again] == [r.n for r in REQUESTS]
        # later calls reuse the same replicas (no weights reloaded): order still holds for any split
        reversed_results = backend.generate(REQUESTS[::-1])
        assert [c[0].prompt_tokens for c in reversed_results] == [c[0].prompt_tokens for c in again][::-1]
        assert backend.generate([]) == []
    finally:
        backend.close()
    assert ray.is_initialized(), "close() must leave a Ray instance it did not start running"


# ---------------------------------------------------------------------------------------------
# Stage I with a Ray verifier
# ---------------------------------------------------------------------------------------------


def _build(tiny_model, output_dir, limit):
    overrides = [
        f"generator.model={tiny_model}", "generator.backend=transformers", "generator.n=2",
        "generator.max_tokens=24", "generator.batch_size=4",
        f"verifier.model={tiny_model}", "verifier.backend=ray", "verifier.n=3", "verifier.max_tokens=24",
        "verifier.batch_size=4", "verifier.extra={inner_backend: transformers, num_replicas: 2}",
    ]
    config = load_build_config(None, overrides, problems=str(DATA / "problems_small.jsonl"), limit=limit,
                               output_dir=str(output_dir))
    return build.main(config, progress=False)


def test_build_with_ray_verifier_resumes_from_the_cache(ray_run, tiny_model, tmp_path, caplog):
    out = tmp_path / "out"
    first = _build(tiny_model, out, limit=1)
    records = read_rows(out)
    first_problem = records[0]["problem_id"]
    with_steps = [r for r in records if r["steps"]]
    assert first.statistics["problems"] == 1 and len(records) == 2
    assert first.model_requests == {"generator": 1, "verifier": len(with_steps)}
    verifier = first.manifest["models"]["verifier"]
    assert verifier["backend"] == "ray" and verifier["inner_backend"] == "transformers"
    assert verifier["fingerprint"] == first.manifest["models"]["generator"]["fingerprint"]
    assert validate_path(out)[0] == []

    # a bigger build in the same folder: problem 1 comes from the cache, only problem 2 goes to Ray
    with caplog.at_level(logging.INFO, logger="spark_hub"):
        second = _build(tiny_model, out, limit=2)
    records = read_rows(out)
    verifications = read_rows(out, "verifications")
    new_with_steps = [r for r in records if r["steps"] and r["problem_id"] != first_problem]
    assert second.statistics["problems"] == 2 and len(records) == 4
    assert second.model_requests == {"generator": 1, "verifier": len(new_with_steps)}
    assert len(verifications) == 3 * (len(with_steps) + len(new_with_steps)) == second.statistics["verifications"]
    assert validate_path(out) == ([], len(records) + len(verifications))
    assert "resuming" in caplog.text

    again = _build(tiny_model, out, limit=2)
    assert again.reused and again.model_requests == {"generator": 0, "verifier": 0}


@pytest.mark.slow
@pytest.mark.parametrize("keep_replicas", [False, True])
def test_replica_errors_reach_the_caller(ray_run, tiny_model, tmp_path, keep_replicas):
    """A node whose model files differ from the driver's fails with the replica's SparkHubError."""
    model = shutil.copytree(tiny_model, tmp_path / "model")
    backend = load_backend(BackendConfig(
        backend="ray", model=str(model), extra={"num_replicas": 1, "keep_replicas": keep_replicas},
    ))
    backend.fingerprint()  # the driver hashes the files, then they change under the replicas
    (model / "generation_config.json").write_text('{"do_sample": false}')
    try:
        with pytest.raises(SparkHubError, match="the model files differ between machines"):
            backend.generate(REQUESTS[:1])
    finally:
        backend.close()
