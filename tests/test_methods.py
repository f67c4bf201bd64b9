"""Every Stage I method on the scripted backend: meta-critique, hybrids, reference-guided, balancing."""

import json

import pytest

from helpers import read_rows, scripted_recipe
from slow_backend import RecordingScriptedBackend
from spark_hub.config import load_build_config
from spark_hub.errors import SparkHubError
from spark_hub.stages import build

# The merged verifications in tests/data/scripted/verifier_meta.jsonl, per solution.
MERGED_LABELS = {
    "gsm8k-test-134/s0": ("ok", [True, True], True),
    "gsm8k-test-134/s1": ("ok", [True, False], False),
    "gsm8k-test-117/s0": ("merge_failed", None, None),  # the merge output does not parse
    "gsm8k-test-117/s1": ("no_steps", None, None),
    "gsm8k-test-1/s0": ("ok", [True, True], True),  # the merge fixed the tied verdict
    "gsm8k-test-1/s1": ("ok", [False, False], False),
}
# Which of the N sampled verifications each method critiques (selected by its vote method).
SELECTED = {
    "meta_critique": {"gsm8k-test-134/s0": 0, "gsm8k-test-134/s1": 0, "gsm8k-test-1/s0": 0, "gsm8k-test-1/s1": 0},
    "hybrid_outcome": {"gsm8k-test-134/s0": 0, "gsm8k-test-134/s1": 0, "gsm8k-test-1/s0": 1, "gsm8k-test-1/s1": 0},
    "hybrid_step": {"gsm8k-test-134/s0": 0, "gsm8k-test-134/s1": 0, "gsm8k-test-1/s0": 0, "gsm8k-test-1/s1": 0},
}


def run(tmp_path, *overrides, verifier="verifier.jsonl"):
    recipe = scripted_recipe(tmp_path)
    config = load_build_config(recipe, [f"verifier.model={recipe.parent / verifier}", *overrides],
                               output_dir=str(tmp_path / "out"))
    return build.main(config, progress=False)


@pytest.mark.parametrize("method", ["meta_critique", "hybrid_outcome", "hybrid_step"])
def test_meta_critique_methods(tmp_path, method):
    result = run(tmp_path, f"aggregation.method={method}", verifier="verifier_meta.jsonl")
    records = {r["id"]: r for r in read_rows(tmp_path / "out")}
    for rid, (status, labels, final) in MERGED_LABELS.items():
        assert (records[rid]["status"], records[rid]["labels"], records[rid]["final_label"]) == (status, labels, final), rid
    for rid, index in SELECTED[method].items():
        assert records[rid]["cot_verification_index"] == index, rid
        assert records[rid]["cot_verification_id"] == f"{rid}/m0"
    verifications = {v["id"]: v for v in read_rows(tmp_path / "out", "verifications")}
    merged = verifications["gsm8k-test-1/s0/m0"]
    assert merged["kind"] == "merged" and merged["step_verdicts"] == [True, True]
    assert records["gsm8k-test-1/s0"]["cot_target"] == merged["text"]
    critique = verifications["gsm8k-test-1/s0/c0"]
    assert critique["kind"] == "critique" and critique["parse_status"] == "not_parsed"
    # two calls (critique, merge) per labelled solution with a selection: 4 + 1 merge-failed
    assert result.model_requests["verifier"] == 5 + 2 * 5
    assert result.statistics["meta_critique"]["calls"] == {"critique": 5, "merged": 5}
    assert set(result.manifest["prompts"]) == {"generator", "verifier", "critique", "merge"}
    assert result.statistics["verifications"] == 15  # sampled verifications only


REFERENCES = {"Tom gets 4 car washes": "720", "John buys 2 pairs of shoes": "360", "A robe takes 2 bolts": "3"}
USES_REFERENCES = "**labels used references.**"  # the card section shown only when uses_references is true


def _verifier_prompts(*overrides, tmp_path):
    RecordingScriptedBackend.received.clear()
    result = run(tmp_path, "verifier.backend=slow_backend:RecordingScriptedBackend", *overrides)
    prompts = [request.chat()[-1]["content"] for request in RecordingScriptedBackend.received]
    return result, prompts


def test_reference_guided(tmp_path):
    result, prompts = _verifier_prompts("aggregation.method=reference_guided", tmp_path=tmp_path)
    assert result.manifest["uses_references"] is True
    assert "reference_verifier" in result.manifest["prompts"]
    card = (tmp_path / "out" / "README.md").read_text().lower()
    assert USES_REFERENCES in card
    # every verifier prompt carried its own problem's reference answer
    assert len(prompts) == 5
    for prompt in prompts:
        problem = next(p for p in REFERENCES if p in prompt)
        assert f"Reference Answer: {REFERENCES[problem]}" in prompt, prompt


def test_reference_free_prompts_hide_the_reference(tmp_path):
    result, prompts = _verifier_prompts(tmp_path=tmp_path)
    assert result.manifest["uses_references"] is False
    assert len(prompts) == 5 and not any("Reference Answer" in prompt for prompt in prompts)
    assert USES_REFERENCES not in (tmp_path / "out" / "README.md").read_text().lower()


def test_reference_guided_needs_references(tmp_path):
    problems = tmp_path / "noref.jsonl"
    problems.write_text(json.dumps({"id": "x", "problem": "Tom gets 4 car washes a month."}) + "\n")
    with pytest.raises(SparkHubError, match="needs a reference answer for every problem; problem 'x' has none"):
        run(tmp_path, "aggregation.method=reference_guided", f"problems={problems}")


def test_balance_by_majority_verdict(tmp_path):
    result = run(tmp_path, "balance.enabled=true")
    records = read_rows(tmp_path / "out")
    # Tom: one Yes + one No are kept; the shoes (one unlabelled) and the robe (two No) are dropped
    assert sorted(r["id"] for r in records) == ["gsm8k-test-134/s0", "gsm8k-test-134/s1"]
    assert result.statistics["problems_dropped_unbalanced"] == 2
    assert result.manifest["uses_references"] is False
    assert len(read_rows(tmp_path / "out", "verifications")) == 15  # raw verdicts are all kept


def test_balance_by_ground_truth(tmp_path):
    result = run(tmp_path, "balance.enabled=true", "balance.by=ground_truth")
    records = read_rows(tmp_path / "out")
    # math-verify: 720 and 3 are right, 600 and 6 are wrong; the shoes have no wrong solution
    assert sorted(r["id"] for r in records) == ["gsm8k-test-1/s0", "gsm8k-test-1/s1",
                                                "gsm8k-test-134/s0", "gsm8k-test-134/s1"]
    assert result.manifest["uses_references"] is True
    assert USES_REFERENCES in (tmp_path / "out" / "README.md").read_text().lower()


def test_balance_caps_per_class(tmp_path):
    from spark_hub.stages.balance import BalanceConfig, balance_problem

    rows = [{"problem_id": "p", "status": "ok", "final_label": i % 3 != 0, "solution_index": i} for i in range(8)]
    kept = balance_problem(rows, BalanceConfig(enabled=True, per_class=3), seed=42)
    assert [r["final_label"] for r in kept].count(True) == 3 and [r["final_label"] for r in kept].count(False) == 3
    assert kept == balance_problem(rows, BalanceConfig(enabled=True, per_class=3), seed=42)  # seeded


def test_contamination_report_and_decontaminate(tmp_path):
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"id": "b1", "problem": "Tom gets 4 car washes a month.  If each car wash costs $15 "
                                 "how much does he pay in a year?"}) + "\n")
    result = run(tmp_path, f"contamination.benchmarks=[{bench}]")
    report = result.manifest["contamination"]
    assert report["matched"] == 1 and report["matches"][0]["problem_id"] == "gsm8k-test-134"
    card = (tmp_path / "out" / "README.md").read_text().lower()
    assert "## contamination report" in card  # the section appears only with a report
    assert "gsm8k-test-134" in card[card.index("## contamination report"):]
    assert result.statistics["problems"] == 3

    result = run(tmp_path, f"contamination.benchmarks=[{bench}]", "contamination.decontaminate=true")
    assert result.statistics["problems"] == 2
    assert "gsm8k-test-134" not in {r["problem_id"] for r in read_rows(tmp_path / "out")}


def test_constrained_verifier_constrains_verifications_and_merges(tmp_path):
    """verifier.constrained: verification and merge requests carry the step-count format; the
    critique must open with its heading; a changed setting is a new build."""
    from spark_hub.constrained import critique_constraint, verification_constraint

    RecordingScriptedBackend.received.clear()
    run(tmp_path, "aggregation.method=meta_critique", "verifier.backend=slow_backend:RecordingScriptedBackend",
        verifier="verifier_meta.jsonl")
    assert all(r.constraint is None for r in RecordingScriptedBackend.received)
    RecordingScriptedBackend.received.clear()
    result = run(tmp_path, "aggregation.method=meta_critique", "verifier.constrained=true",
                 "verifier.backend=slow_backend:RecordingScriptedBackend", verifier="verifier_meta.jsonl")
    assert not result.reused
    received = RecordingScriptedBackend.received
    kinds = {"verify": [], "critique": [], "merge": []}
    for r in received:
        prompt = r.chat()[-1]["content"]
        kind = ("merge" if "Improved Teacher Verification" in prompt
                else "critique" if "Critique of the original verification" in prompt else "verify")
        kinds[kind].append(r)
    assert len(kinds["verify"]) == 5 and len(kinds["critique"]) == 5 and len(kinds["merge"]) == 5
    assert all(r.constraint == verification_constraint(2) for r in kinds["verify"] + kinds["merge"])  # 2 steps each
    assert all(r.constraint == critique_constraint() for r in kinds["critique"])
