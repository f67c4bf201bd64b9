"""Stage I with real transformers models: a tiny random model built here, and the embedded SmolLM2."""

import json

import pytest
from click.testing import CliRunner

from helpers import DATA, read_rows
from spark_hub.cli import cli
from spark_hub.config import load_build_config
from spark_hub.stages import build
from spark_hub.validate import validate_path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tiny_models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_tiny_random_model_end_to_end(tmp_path, tiny_model):
    overrides = [
        f"generator.model={tiny_model}", "generator.backend=transformers", "generator.n=2",
        "generator.max_tokens=24", f"verifier.model={tiny_model}", "verifier.backend=transformers",
        "verifier.n=3", "verifier.max_tokens=24", "generator.batch_size=4", "verifier.batch_size=4",
    ]
    config = load_build_config(None, overrides, problems=str(DATA / "problems_small.jsonl"), limit=2,
                               output_dir=str(tmp_path / "out"))
    result = build.main(config, progress=False)
    stats = result.statistics
    records = read_rows(tmp_path / "out")
    verifications = read_rows(tmp_path / "out", "verifications")
    assert stats["problems"] == 2 and len(records) == 4
    with_steps = [r for r in records if r["steps"]]
    assert len(verifications) == 3 * len(with_steps) == stats["verifications"]
    # random weights write gibberish: every failure is a counted status, never a crash
    assert sum(stats["verification_status"].values()) == len(verifications)
    assert all(v["raw_text"] is not None for v in verifications)
    assert result.manifest["models"]["verifier"]["fingerprint"].startswith("folder-sha256:")
    assert validate_path(tmp_path / "out") == ([], len(records) + len(verifications))
    assert result.model_requests == {"generator": 2, "verifier": len(with_steps)}

    again = build.main(config, progress=False)
    assert again.reused and again.model_requests == {"generator": 0, "verifier": 0}


@pytest.mark.slow
def test_demo_recipe_on_embedded_model(tmp_path):
    """The README demo recipe, cut to one problem and short completions (slow: ~2 min of SmolLM2 on
    2 shared cores; `make demo` runs the full recipe)."""
    pytest.importorskip("gguf")
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, [
        "build-dataset", "--config", "demo-cpu", "--limit", "1", "--output-dir", str(out), "--no-progress",
        "--set", "generator.max_tokens=48", "--set", "verifier.max_tokens=64",
    ])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["verifier"]["constrained"] is True and manifest["config"]["verifier"]["logprobs"] is True
    assert manifest["models"]["generator"]["fingerprint"].startswith("gguf-sha256:")
    assert manifest["statistics"]["solutions"] == 4
    assert (out / "README.md").read_text().startswith("---")
    assert validate_path(out)[0] == []


@pytest.mark.parametrize("method", ["single", "outcome_consistency", "step_consistency", "meta_critique",
                                    "hybrid_outcome", "hybrid_step", "reference_guided"])
def test_every_method_with_a_tiny_real_verifier(tmp_path, tiny_model, method, monkeypatch):
    """Scripted solutions, a real (random) verifier decoding in the verifier format
    (``verifier.constrained``, greedy so the N votes agree): every verification parses and every
    solution is labelled (no balancing, which would drop these all-"correct" problems), so each
    method's own path runs."""
    import spark_hub.stages.verify as verify

    references = []
    real_messages = verify.verifier_messages

    def spy(problem, steps, final_answer, reference=None):
        references.append(reference)
        return real_messages(problem, steps, final_answer, reference)

    monkeypatch.setattr(verify, "verifier_messages", spy)
    scripted = DATA / "scripted"
    overrides = [
        "generator.backend=scripted", f"generator.model={scripted / 'generator.jsonl'}", "generator.n=2",
        "verifier.backend=transformers", f"verifier.model={tiny_model}", "verifier.n=2", "verifier.max_tokens=120",
        "verifier.batch_size=8", "verifier.constrained=true", "verifier.logprobs=true", "verifier.temperature=0",
        f"aggregation.method={method}", "aggregation.critique_max_tokens=120",
    ]
    config = load_build_config(None, overrides, problems=str(DATA / "problems_small.jsonl"),
                               output_dir=str(tmp_path / "out"))
    result = build.main(config, progress=False)
    stats = result.statistics
    assert stats["verifications"] == 2 * 5  # 5 solutions with steps, N=2
    errors, checked = validate_path(tmp_path / "out")
    assert errors == [] and checked >= 10
    verifications = read_rows(tmp_path / "out", "verifications")
    samples = [v for v in verifications if v["kind"] == "sample"]
    assert len(samples) == 10 and all(v["parse_status"] == "ok" for v in samples)
    assert all(len(v["step_verdicts"]) == v["expected_steps"] for v in samples)
    assert all(v["step_probs"] and all(0 <= p <= 1 for p in v["step_probs"]) and v["final_prob"] is not None
               for v in samples)
    records = read_rows(tmp_path / "out")
    assert any(r["labels"] and None not in r["labels"] for r in records)  # labels present

    meta = method in ("meta_critique", "hybrid_outcome", "hybrid_step")
    critiques = [v for v in verifications if v["kind"] == "critique"]
    merged = [v for v in verifications if v["kind"] == "merged"]
    if meta:  # one critique and one merge call per labelled solution; merges parse like verifications
        assert len(critiques) == len(merged) == 5
        assert all(v["raw_text"].startswith("**Critique of the original verification**") for v in critiques)
        assert all(v["parse_status"] == "ok" for v in merged)
        assert result.model_requests["verifier"] == 5 + 5 + 5
    else:
        assert critiques == merged == [] and result.model_requests["verifier"] == 5
    assert result.manifest["uses_references"] is (method == "reference_guided")
    if method == "reference_guided":
        assert references and all(r is not None for r in references)  # every prompt carried the reference
    else:
        assert references and all(r is None for r in references)
