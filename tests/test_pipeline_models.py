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


def test_demo_recipe_on_embedded_model(tmp_path):
    """The README demo recipe, cut to one problem and short completions to keep the suite fast."""
    pytest.importorskip("gguf")
    out = tmp_path / "demo"
    result = CliRunner().invoke(cli, [
        "build-dataset", "--config", "demo-cpu", "--limit", "1", "--output-dir", str(out), "--no-progress",
        "--set", "generator.max_tokens=48", "--set", "verifier.max_tokens=48",
    ])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["generator"]["fingerprint"].startswith("gguf-sha256:")
    assert manifest["statistics"]["solutions"] == 4
    assert (out / "README.md").read_text().startswith("---")
    assert validate_path(out)[0] == []


@pytest.mark.parametrize("method", ["single", "outcome_consistency", "step_consistency", "meta_critique",
                                    "hybrid_outcome", "hybrid_step", "reference_guided"])
def test_every_method_with_a_tiny_real_verifier(tmp_path, tiny_model, method):
    """Scripted solutions, a real (random) verifier: every method yields a schema-valid dataset."""
    scripted = DATA / "scripted"
    overrides = [
        "generator.backend=scripted", f"generator.model={scripted / 'generator.jsonl'}", "generator.n=2",
        "verifier.backend=transformers", f"verifier.model={tiny_model}", "verifier.n=2", "verifier.max_tokens=12",
        "verifier.batch_size=8", f"aggregation.method={method}", "aggregation.critique_max_tokens=12",
        "balance.enabled=true",
    ]
    config = load_build_config(None, overrides, problems=str(DATA / "problems_small.jsonl"),
                               output_dir=str(tmp_path / "out"))
    result = build.main(config, progress=False)
    assert result.statistics["verifications"] == 2 * 5  # 5 solutions with steps, N=2
    errors, checked = validate_path(tmp_path / "out")
    assert errors == [] and checked >= 10
    assert result.manifest["uses_references"] is (method == "reference_guided")
