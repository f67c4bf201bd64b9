"""SFT data for the ORM / PRM / PRM-CoT variants: golden formatting, filtering, leakage-free splits."""

import json

import pytest

from spark_hub.errors import SparkHubError
from spark_hub.prm import GenerativePRM, generative_spec
from spark_hub.train import sft_data

COT = (
    "## Step 1: Cost of the pens\n3 pens at $2 each cost 6 dollars. Right.\n**This step is correct.**\n\n"
    "## Step 2: Change\n10 - 6 = 5 is wrong; it is 4.\n**This step is incorrect.**\n\n"
    "Verification: Is the answer correct (Yes/No)? No"
)


def row(problem_id="p1", index=0, labels=(True, False), final_label=False, *, status="ok", cot=COT,
        cot_exact_match=True, steps=("3 pens cost 3 x 2 = 6 dollars.", "The change is 10 - 6 = 5 dollars."),
        answer="5"):
    """A step record row as Stage I writes it (schema v1; v2 readers migrate it)."""
    steps = list(steps)
    labels = None if labels is None else list(labels)
    n = len(steps)
    return {
        "schema_version": "1",
        "id": f"{problem_id}/s{index}",
        "problem_id": problem_id,
        "problem": "Ann pays for 3 pens at $2 each with a $10 bill. How much change does she get?",
        "reference": None,
        "solution_index": index,
        "solution": "\n".join(f"Step {k}: {s}" for k, s in enumerate(steps, 1)) + f"\nAnswer: {answer}",
        "steps": steps,
        "final_answer": answer,
        "solution_status": "ok",
        "generator": "gen",
        "verifier": "ver",
        "method": "step_consistency",
        "status": status,
        "labels": labels,
        "final_label": None if labels is None else final_label,
        "first_error_step": None if labels is None else next((i for i, ok in enumerate(labels) if not ok), -1),
        "votes_correct": [3] * n,
        "votes_incorrect": [1] * n,
        "agreement": [0.75] * n,
        "final_votes_yes": 1,
        "final_votes_no": 3,
        "n_verifications": 4,
        "n_parsed": 4,
        "cot_target": cot,
        "cot_verification_index": 0 if cot else None,
        "cot_verification_id": f"{problem_id}/s{index}/s0" if cot else None,
        "cot_exact_match": cot_exact_match if cot else None,
    }


PROMPT_PRM = (
    "Problem: Ann pays for 3 pens at $2 each with a $10 bill. How much change does she get?\n\n"
    "Student Solution:\nStep 1: 3 pens cost 3 x 2 = 6 dollars.\nStep 2: The change is 10 - 6 = 5 dollars.\n"
    "Answer: 5\n\nLet's verify step by step."
)


def test_golden_orm():
    ex = sft_data.make_example(row(), "orm")
    assert ex["prompt"] == [{"role": "user", "content": (
        "Problem: Ann pays for 3 pens at $2 each with a $10 bill. How much change does she get?\n\n"
        "Solution:\nStep 1: 3 pens cost 3 x 2 = 6 dollars.\nStep 2: The change is 10 - 6 = 5 dollars.\n"
        "Answer: 5\n\nIs the answer correct (Yes/No)?")}]
    assert ex["completion"] == [{"role": "assistant", "content": "No"}]
    assert sft_data.make_example(row(labels=(True, True), final_label=True), "orm")["completion"][0]["content"] == "Yes"


def test_golden_prm():
    ex = sft_data.make_example(row(), "prm")
    assert ex["prompt"] == [{"role": "user", "content": PROMPT_PRM}]
    assert ex["completion"] == [{"role": "assistant", "content": (
        "Step 1: Correct\nStep 2: Incorrect\nVerification: Is the answer correct (Yes/No)? No")}]
    assert (ex["id"], ex["problem_id"], ex["first_error_step"], ex["labels"]) == ("p1/s0", "p1", 1, [True, False])


def test_golden_prm_cot_and_system_prompt():
    ex = sft_data.make_example(row(), "prm_cot", system="You are a careful grader.")
    assert ex["prompt"] == [{"role": "system", "content": "You are a careful grader."},
                            {"role": "user", "content": PROMPT_PRM}]
    assert ex["completion"] == [{"role": "assistant", "content": COT}]


def test_sft_prompt_is_what_the_trained_prm_is_asked():
    ex = sft_data.make_example(row(), "prm")
    prm = GenerativePRM(generative_spec("prm"), {}, backend=None)
    r = row()
    assert prm.messages(r["problem"], r["steps"], r["final_answer"]) == ex["prompt"]


def test_filtering_and_counts():
    records = [
        row("a", 0),
        row("a", 1, labels=None, status="tie"),
        row("b", 0, cot=None),
        row("c", 0, cot_exact_match=False),
    ]
    prm, skipped = sft_data.build_examples(records, "prm")
    assert [e["id"] for e in prm] == ["a/s0", "b/s0", "c/s0"] and skipped == {"unlabelled": 1}
    cot, skipped = sft_data.build_examples(records, "prm_cot")
    assert [e["id"] for e in cot] == ["a/s0", "c/s0"] and skipped == {"unlabelled": 1, "no_cot_target": 1}
    exact, skipped = sft_data.build_examples(records, "prm_cot", keep_inexact_cot=False)
    assert [e["id"] for e in exact] == ["a/s0"] and skipped["cot_inexact"] == 1
    no_answer = sft_data.make_example(row(), "prm", include_answer=False)
    assert "Answer: 5" not in no_answer["prompt"][0]["content"]
    with pytest.raises(SparkHubError, match="unknown SFT variant"):
        sft_data.build_examples(records, "dpo")
    with pytest.raises(SparkHubError, match="no usable prm examples in 1 records"):
        sft_data.make_sft_data([row(labels=None, status="tie")], "prm")


def test_invalid_record_names_its_index():
    bad = row()
    bad["labels"] = "yes"
    with pytest.raises(SparkHubError, match="record 1"):
        sft_data.build_examples([row(), bad], "prm")


def _many(n_problems=40, per_problem=3):
    out = []
    for p in range(n_problems):
        for s in range(per_problem):
            wrong = (p + s) % 3 == 0
            out.append(row(f"q{p:03d}", s, labels=(True, not wrong), final_label=not wrong))
    return out


def test_split_by_problem_has_no_leakage_and_is_seeded():
    data = sft_data.make_sft_data(_many(), "prm", eval_fraction=0.2, seed=7)
    train_ids = {e["problem_id"] for e in data.train}
    eval_ids = {e["problem_id"] for e in data.eval}
    assert not train_ids & eval_ids
    assert len(eval_ids) == 8 and len(train_ids) == 32
    assert len(data.train) + len(data.eval) == 120
    again = sft_data.make_sft_data(list(reversed(_many())), "prm", eval_fraction=0.2, seed=7)
    assert {e["problem_id"] for e in again.eval} == eval_ids  # order of records does not matter
    other = sft_data.make_sft_data(_many(), "prm", eval_fraction=0.2, seed=8)
    assert {e["problem_id"] for e in other.eval} != eval_ids
    stats = data.statistics
    assert stats["train"]["examples"] == len(data.train) and stats["eval"]["problems"] == 8
    assert stats["train"]["final_yes"] + stats["train"]["final_no"] == len(data.train)
    assert stats["lengths"]["completion"]["p100"] == max(len(e["completion"][0]["content"]) for e in data.train + data.eval)
    json.dumps(stats)


def test_split_edge_cases():
    examples = [{"problem_id": "x"}, {"problem_id": "x"}]
    assert sft_data.split_by_problem(examples, eval_fraction=0.5) == (examples, [])  # one problem: all train
    two = [{"problem_id": "x"}, {"problem_id": "y"}]
    train, evaluation = sft_data.split_by_problem(two, eval_fraction=0.01)
    assert len(train) == 1 and len(evaluation) == 1
    assert sft_data.split_by_problem(two, eval_fraction=0.0) == (two, [])
    with pytest.raises(SparkHubError, match="eval_fraction"):
        sft_data.split_by_problem(two, eval_fraction=1.0)


def test_write_jsonl_is_trl_conversational(tmp_path):
    data = sft_data.make_sft_data(_many(5, 2), "orm", eval_fraction=0.2, seed=0)
    paths = sft_data.write_jsonl(tmp_path, data)
    rows = [json.loads(line) for line in paths["train"].read_text().splitlines()]
    assert len(rows) == len(data.train)
    assert rows[0]["prompt"][0]["role"] == "user" and rows[0]["completion"][0]["role"] == "assistant"


def test_write_sft_dataset_has_a_valid_manifest(tmp_path):
    from spark_hub.manifest import read_manifest

    data = sft_data.make_sft_data(_many(10, 2), "prm", eval_fraction=0.2, seed=3)
    sft_data.write_sft_dataset(tmp_path / "sft", data, source={"source": "org/steps", "revision": "a" * 40})
    manifest = read_manifest(tmp_path / "sft")
    assert manifest["kind"] == "dataset" and manifest["config"]["variant"] == "prm"
    assert manifest["inputs"]["step_records"]["revision"] == "a" * 40
    assert manifest["statistics"]["train"]["examples"] == len(data.train)
    assert set(manifest["files"]) == {"data/train.jsonl", "data/eval.jsonl"}


def test_sft_dataset_card_describes_the_variant_split_balance_and_source(tmp_path):
    from huggingface_hub import DatasetCard

    from spark_hub.cards import render_card
    from spark_hub.manifest import read_manifest

    data = sft_data.make_sft_data(_many(10, 2), "prm", eval_fraction=0.2, seed=3)
    stage1 = tmp_path / "stage1"
    stage1.mkdir()
    (stage1 / "manifest.json").write_text(json.dumps({"uses_references": True}))
    sft_data.write_sft_dataset(tmp_path / "sft", data, source={"source": str(stage1), "sha256": "b" * 64})
    text = (tmp_path / "sft" / "README.md").read_text()
    card = DatasetCard(text)
    assert card.data.configs == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/train.jsonl"}, {"split": "eval", "path": "data/eval.jsonl"}]}]
    assert "sft" in card.data.tags and "prm" in card.data.tags
    assert "# SPARK reward-model SFT data" in text and "Step k: Correct|Incorrect" in text
    train, evaluation = data.statistics["train"], data.statistics["eval"]
    assert f"| train | {train['examples']} | {train['problems']} | {train['final_yes']} | {train['final_no']} |" in text
    assert f"| eval | {evaluation['examples']} | {evaluation['problems']} |" in text
    assert f"{len(data.train)} train / {len(data.eval)} eval" in text
    assert "**Labels used references**" in text  # read from the source dataset's manifest
    assert "| completion |" in text and "## Lengths (characters)" in text
    # the pushed card is rendered from the manifest for the target repo: same kind of card
    pushed = render_card(read_manifest(tmp_path / "sft"), repo_id="org/prm-sft")
    assert "# prm-sft" in pushed and 'load_dataset("org/prm-sft")' in pushed and "**Labels used references**" in pushed
