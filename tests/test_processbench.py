"""ProcessBench: the official metric, data loading, predictions files, the critic prompt, PRM scoring."""

import hashlib
import json
import math
from pathlib import Path

import pytest

from spark_hub.backends.base import BackendConfig, load_backend
from spark_hub.errors import SparkHubError
from spark_hub.evaluate import processbench as pb
from spark_hub.prm import StepScores, generative_spec, load_prm, write_spec

SHARED_PB = Path(__file__).resolve().parents[2] / "shared" / "data" / "processbench"
needs_shared = pytest.mark.skipif(not SHARED_PB.is_dir(), reason="../shared/data/processbench not present")


def case(cid, label, n_steps=4, split="s"):
    return pb.Case(id=cid, split=split, problem=f"problem {cid}", steps=tuple(f"step {i}" for i in range(n_steps)),
                   label=label)


# ------------------------------------------------------------------------------------------------
# Metric
# ------------------------------------------------------------------------------------------------

SPLITS = {
    "a": [case("a0", 0), case("a1", 2), case("a2", 1), case("a3", -1), case("a4", -1)],
    "b": [case("b0", 1), case("b1", -1), case("b2", -1), case("b3", -1), case("b4", -1)],
}


def test_all_minus_one_gives_zero_f1():
    predictions = {c.id: -1 for cases in SPLITS.values() for c in cases}
    metrics = pb.compute_metrics(SPLITS, predictions)
    for m in metrics["splits"].values():
        assert m["acc_correct"] == 100.0 and m["acc_error"] == 0.0 and m["f1"] == 0.0
    assert metrics["average_f1"] == 0.0


def test_perfect_predictions_give_100():
    predictions = {c.id: c.label for cases in SPLITS.values() for c in cases}
    metrics = pb.compute_metrics(SPLITS, predictions)
    assert all(m["f1"] == pytest.approx(100.0) for m in metrics["splits"].values())
    assert metrics["average_f1"] == pytest.approx(100.0)


def test_mixed_case_computed_by_hand():
    predictions = {
        # split a: errors 0, 2, 1 -> hit, miss (1), no prediction; correct -> hit, miss (3)
        "a0": 0, "a1": 1, "a2": None, "a3": -1, "a4": 3,
        # split b: error 1 -> hit; correct -> 3 of 4 (out-of-range 9 never matches)
        "b0": 1, "b1": -1, "b2": -1, "b3": 9, "b4": -1,
    }
    metrics = pb.compute_metrics(SPLITS, predictions)
    a, b = metrics["splits"]["a"], metrics["splits"]["b"]
    assert (a["n_error"], a["n_correct"], a["no_prediction"]) == (3, 2, 1)
    assert a["acc_error"] == pytest.approx(100 / 3) and a["acc_correct"] == pytest.approx(50.0)
    # F1 from the UNROUNDED accuracies is exactly 40; from 33.3 and 50.0 it would be 39.98.
    assert a["f1"] == pytest.approx(40.0, abs=1e-9)
    assert b["acc_error"] == 100.0 and b["acc_correct"] == 75.0
    assert b["f1"] == pytest.approx(2 * 100 * 75 / 175)
    assert metrics["average_f1"] == pytest.approx((40.0 + 2 * 100 * 75 / 175) / 2)
    assert pb.format_table(metrics).splitlines()[-1].split()[-1] == "62.9"


def test_missing_and_non_int_predictions_never_match():
    cases = {"s": [case("x", 1), case("y", -1)]}
    metrics = pb.compute_metrics(cases, {"x": True})  # True is not step 1; y is missing
    m = metrics["splits"]["s"]
    assert m["acc_error"] == 0.0 and m["acc_correct"] == 0.0 and m["f1"] == 0.0
    assert m["missing"] == 1 and m["no_prediction"] == 2


def test_split_without_correct_cases_has_no_f1_and_is_left_out_of_the_average():
    cases = {"only_errors": [case("e", 0)], "full": [case("f0", 0), case("f1", -1)]}
    metrics = pb.compute_metrics(cases, {"e": 0, "f0": 0, "f1": -1})
    assert metrics["splits"]["only_errors"]["acc_correct"] is None
    assert metrics["splits"]["only_errors"]["f1"] is None
    assert metrics["average_f1"] == pytest.approx(100.0)


# ------------------------------------------------------------------------------------------------
# Predictions files
# ------------------------------------------------------------------------------------------------


def test_read_and_write_predictions(tmp_path):
    path = tmp_path / "pred.jsonl"
    pb.write_predictions(path, {"a": 2, "b": None, "c": -1})
    assert pb.read_predictions(path) == {"a": 2, "b": None, "c": -1}


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "invalid JSON"),
        ('{"id": "a"}', "field 'prediction' is missing"),
        ('{"id": "a", "prediction": "2"}', "must be an integer"),
        ('{"id": "a", "prediction": true}', "must be an integer"),
        ('{"prediction": 1}', "field 'id'"),
        ('{"id": "x", "prediction": 1}', "duplicate id"),
    ],
)
def test_read_predictions_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "pred.jsonl"
    path.write_text('{"id": "x", "prediction": 0}\n' + line + "\n")
    with pytest.raises(SparkHubError, match=message) as info:
        pb.read_predictions(path)
    assert f"{path}:2" in str(info.value)


def test_a_non_utf8_byte_in_evaluation_files_is_a_one_line_error(tmp_path):
    """Predictions and split files are read like every other input: file:line and the byte offset."""
    bad = '{"id": "x", "prediction": 0}\n'.encode() + b'{"id": "caf\xe9", "prediction": 1}\n'
    (tmp_path / "pred.jsonl").write_bytes(bad)
    with pytest.raises(SparkHubError, match="not valid UTF-8: byte 0xe9 at byte offset 40") as info:
        pb.read_predictions(tmp_path / "pred.jsonl")
    assert f"{tmp_path / 'pred.jsonl'}:2" in str(info.value)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "gsm8k.jsonl").write_bytes(b'{"id": "a\xe9", "problem": "p", "steps": ["s"], "label": -1}\n')
    with pytest.raises(SparkHubError, match="not valid UTF-8"):
        pb.load_processbench(tmp_path / "data")


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------


@needs_shared
def test_load_shared_splits_checks_the_manifest():
    data = pb.load_processbench(SHARED_PB)
    assert list(data.splits) == ["gsm8k", "math"]
    gsm8k = data.splits["gsm8k"]
    assert len(gsm8k) == 400 and len(data.splits["math"]) == 1000
    assert sum(c.label == -1 for c in gsm8k) == 193
    assert all(f["manifest_checked"] for f in data.files.values())
    # every error case comes first in the files: a limit takes the first of each kind, so F1 is defined
    limited = pb.load_processbench(SHARED_PB, ["math"], limit=5)
    errors = [c for c in data.splits["math"] if c.label != -1]
    correct = [c for c in data.splits["math"] if c.label == -1]
    assert [c.id for c in limited.splits["math"]] == [c.id for c in errors[:3] + correct[:2]]
    assert limited.files["math"]["rows"] == 1000 and limited.files["math"]["used"] == 5
    perfect = {c.id: c.label for c in limited.splits["math"]}
    assert pb.compute_metrics(limited, perfect)["splits"]["math"]["f1"] == 100.0


def _write_split(folder: Path, name: str, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_rejects_tampered_file_and_bad_rows(tmp_path):
    folder = tmp_path / "processbench"
    row = {"id": "t-0", "problem": "p", "steps": ["a", "b"], "label": 1}
    path = _write_split(folder, "toy", [row])
    (tmp_path / "MANIFEST.json").write_text(json.dumps({"processbench/toy.jsonl": {"sha256": "0" * 64, "rows": 1}}))
    with pytest.raises(SparkHubError, match="does not match the sha256"):
        pb.load_processbench(folder)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    (tmp_path / "MANIFEST.json").write_text(json.dumps({"processbench/toy.jsonl": {"sha256": digest, "rows": 1}}))
    assert pb.load_processbench(folder).files["toy"]["manifest_checked"]

    _write_split(folder, "bad", [row, {**row, "id": "t-1", "label": 2}])
    with pytest.raises(SparkHubError, match=r"bad.jsonl:2: field 'label'"):
        pb.load_processbench(folder, ["bad"])
    with pytest.raises(SparkHubError, match="not found"):
        pb.load_processbench(folder, ["omnimath"])


# ------------------------------------------------------------------------------------------------
# Critic prompt and extraction
# ------------------------------------------------------------------------------------------------


def test_critic_prompt_is_the_official_one():
    [message] = pb.critic_messages("What is 1+1?", ["1+1 = 2.", "The answer is 2."])
    assert message["role"] == "user"
    assert message["content"] == (
        "The following is a math problem and a solution (split into paragraphs, enclosed with tags and "
        "indexed from 0):\n\n[Math Problem]\n\nWhat is 1+1?\n\n[Solution]\n\n"
        "<paragraph_0>\n1+1 = 2.\n</paragraph_0>\n\n<paragraph_1>\nThe answer is 2.\n</paragraph_1>\n\n"
        "Your task is to review and critique the solution paragraph by paragraph. Once you identify an error "
        "in a paragraph, return the index of the paragraph where the earliest error occurs. Otherwise, return "
        'the index of -1 (which typically denotes "not found").\n\n'
        "Please put your final answer (i.e., the index) in \\boxed{}."
    )


@pytest.mark.parametrize(
    "texts, expected",
    [
        (["so \\boxed{3} ... wait, \\boxed{ 2 }"], 2),
        (["\\boxed{-1}"], -1),
        (["no box here"], None),
        (["\\boxed{paragraph 2}"], None),
        (["\\boxed{1}", "\\boxed{2}", "\\boxed{2}", "nothing"], 2),
        (["\\boxed{3}", "\\boxed{1}"], 3),  # a tie goes to the first seen
        (["\\boxed{x}", "\\boxed{x}", "\\boxed{1}"], None),  # the majority string is not an int
        (["none", "none"], None),
    ],
)
def test_critic_prediction(texts, expected):
    assert pb.critic_prediction(texts) == expected


def test_score_with_critic_greedy_and_voting(tmp_path):
    cases = [case("c0", 1), case("c1", -1)]
    script = tmp_path / "critic.jsonl"
    script.write_text(
        json.dumps({"contains": ["problem c0"], "completions": ["\\boxed{1}", "\\boxed{0}", "\\boxed{1}"]}) + "\n"
        + json.dumps({"contains": ["problem c1"], "completions": ["\\boxed{2}", "\\boxed{-1}", "\\boxed{-1}"]}) + "\n"
    )
    backend = load_backend(BackendConfig(backend="scripted", model=str(script)))
    greedy, texts = pb.score_with_critic(backend, cases)
    assert greedy == {"c0": 1, "c1": 2} and texts["c1"] == ["\\boxed{2}"]
    voted, texts = pb.score_with_critic(backend, cases, voting=3)
    assert voted == {"c0": 1, "c1": -1} and len(texts["c0"]) == 3
    requests = pb.critic_requests(cases, voting=8)
    assert (requests[0].n, requests[0].temperature, requests[0].top_p) == (8, 1.0, 0.9)
    assert pb.critic_requests(cases)[0].temperature == 0.0


# ------------------------------------------------------------------------------------------------
# PRM scoring on the shared splits
# ------------------------------------------------------------------------------------------------


def _right_half(c: pb.Case) -> bool:
    """Deterministic by content, so identical cases are treated alike."""
    return hashlib.sha256((c.problem + "".join(c.steps)).encode()).digest()[0] % 2 == 0


class HalfRightPRM:
    """Predicts the label on half of the cases and "no error" on the rest."""

    def __init__(self, data):
        self.by_key = {(c.problem, c.steps): c for c in data.cases()}
        self.calls = 0

    def score_batch(self, items):
        self.calls += 1
        out = []
        for problem, steps, *_ in items:
            c = self.by_key[(problem, tuple(steps))]
            error = c.label if _right_half(c) else -1
            verdicts = [error == -1 or i < error for i in range(len(steps))]
            out.append(StepScores(n_steps=len(steps), step_verdicts=verdicts, step_probs=[None] * len(steps)))
        return out


@needs_shared
def test_score_shared_splits_with_a_scripted_prm(tmp_path):
    data = pb.load_processbench(SHARED_PB)
    prm = HalfRightPRM(data)
    predictions, scores = pb.score_with_prm(prm, data.cases(), batch_size=64)
    assert prm.calls == math.ceil(1400 / 64)
    results = pb.build_results(data, predictions, scorer={"kind": "prm", "model": "half-right"}, per_case=True)
    for split, cases in data.splits.items():
        errors = [c for c in cases if c.label != -1]
        expected_err = 100 * sum(_right_half(c) for c in errors) / len(errors)
        m = results["splits"][split]
        assert m["acc_correct"] == 100.0
        assert m["acc_error"] == pytest.approx(expected_err)
        assert m["f1"] == pytest.approx(2 * expected_err * 100 / (expected_err + 100))
        assert 30 < expected_err < 70
    assert results["average_f1"] == pytest.approx(sum(m["f1"] for m in results["splits"].values()) / 2)
    json.dumps(results)  # JSON-able
    assert len(results["cases"]) == 1400

    png = pb.plot_results(results, tmp_path / "processbench.png", title="half-right")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pb.plot_results(results, tmp_path / "again.png", title="half-right").read_bytes() == png.read_bytes()
    undefined = {**results, "splits": {**results["splits"], "math": {**results["splits"]["math"], "f1": None}}}
    assert pb.plot_results(undefined, tmp_path / "undefined.png").read_bytes() != png.read_bytes()  # F1 n/a
    [entry] = pb.model_index(results, "half-right")
    assert [r["dataset"]["split"] for r in entry["results"]] == ["gsm8k", "math"]
    assert entry["results"][0]["metrics"][0]["value"] == round(results["splits"]["gsm8k"]["f1"], 1)


def _prm_output(c: pb.Case, error: int) -> str:
    lines = [f"Step {k}: {'Correct' if error == -1 or k - 1 < error else 'Incorrect'}" for k in range(1, len(c.steps) + 1)]
    lines.append(f"Verification: Is the answer correct (Yes/No)? {'Yes' if error == -1 else 'No'}")
    return "\n".join(lines)


@needs_shared
def test_generative_prm_through_the_scripted_backend_on_shared_splits(tmp_path):
    """load_prm on a generative spec + the scripted backend: the real prompt, reader and metric."""
    full = pb.load_processbench(SHARED_PB)
    # Both kinds of cases from each split (the files list the error cases first).
    data = pb.ProcessBenchData(
        splits={name: [c for c in cases if c.label != -1][:15] + [c for c in cases if c.label == -1][:15]
                for name, cases in full.splits.items()},
        files=full.files,
    )
    rules = []
    for c in data.cases():
        error = c.label if _right_half(c) else -1
        rules.append({"contains": [c.problem.strip(), *[s.strip() for s in c.steps]], "completions": [_prm_output(c, error)]})
    script = tmp_path / "prm_script.jsonl"
    script.write_text("".join(json.dumps(r) + "\n" for r in rules))
    folder = tmp_path / "prm"
    folder.mkdir()
    write_spec(folder, generative_spec("prm"))

    prm = load_prm(folder, backend="scripted", model=str(script))
    predictions, scores = pb.score_with_prm(prm, data.cases(), batch_size=16)
    assert prm.calls == math.ceil(60 / 16) and prm.backend.calls == prm.calls
    for c in data.cases():
        assert predictions[c.id] == (c.label if _right_half(c) else -1), c.id
        assert scores[c.id].status == "ok"
    metrics = pb.compute_metrics(data, predictions)
    for m in metrics["splits"].values():
        assert m["n_correct"] == 15 and m["acc_correct"] == 100.0 and 0 < m["acc_error"] < 100


@needs_shared
def test_run_with_a_predictions_file_writes_results_plot_and_manifest(tmp_path):
    data = pb.load_processbench(SHARED_PB)
    preds = tmp_path / "preds.jsonl"
    pb.write_predictions(preds, {c.id: (c.label if _right_half(c) else -1) for c in data.cases()})
    out = tmp_path / "eval" / "processbench.json"
    results = pb.run(SHARED_PB, predictions=preds, splits=["gsm8k"], output=out)
    assert json.loads(out.read_text())["splits"]["gsm8k"]["f1"] == pytest.approx(results["splits"]["gsm8k"]["f1"])
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert results["scorer"]["kind"] == "predictions" and list(results["splits"]) == ["gsm8k"]
    with pytest.raises(SparkHubError, match="exactly one"):
        pb.run(SHARED_PB, predictions=preds, critic=object())

    from spark_hub.manifest import new_manifest, read_manifest, write_manifest

    folder = tmp_path / "prm"
    folder.mkdir()
    write_manifest(folder, new_manifest("prm", config={}))
    pb.record_results(folder, results)
    section = read_manifest(folder)["results"]["processbench"]
    assert section["gsm8k"]["f1"] == round(results["splits"]["gsm8k"]["f1"], 1)
    assert section["average"] == round(results["average_f1"], 1)


# ------------------------------------------------------------------------------------------------
# The PRM is asked with its SFT prompt (the final answer of the last step included)
# ------------------------------------------------------------------------------------------------


class RecordingBackend:
    """Answers every request with "all steps correct" and keeps the requests."""

    def __init__(self):
        self.requests = []

    def generate(self, requests):
        from spark_hub.backends.base import Completion

        self.requests.extend(requests)
        out = []
        for r in requests:
            n = r.chat()[-1]["content"].count("\nStep ")
            lines = [f"Step {k}: Correct" for k in range(1, n + 1)]
            out.append([Completion(text="\n".join(lines + ["Verification: Is the answer correct (Yes/No)? Yes"]))])
        return out


PB_PROBLEM = "Ann pays for 3 pens at $2 each with a $10 bill. How much change does she get?"


def _prompt_seen_by_prm(c: pb.Case) -> list[dict[str, str]]:
    from spark_hub.prm import GenerativePRM

    backend = RecordingBackend()
    prm = GenerativePRM(generative_spec("prm"), {}, backend=backend)
    predictions, scores = pb.score_with_prm(prm, [c])
    assert predictions == {c.id: -1} and scores[c.id].status == "ok"
    [request] = backend.requests
    return request.chat()


def _sft_prompt(c: pb.Case, answer):
    from test_sft_data import row

    from spark_hub.train import sft_data

    record = row(steps=c.steps, labels=(True,) * len(c.steps), final_label=True, answer=answer)
    record["problem"] = c.problem
    data = sft_data.make_sft_data([record], "prm", eval_fraction=0.0)  # include_answer=True (default)
    [example] = data.train
    return example["prompt"]


@pytest.mark.parametrize("last, answer", [
    ("The change is $10 - 6 = 4$, so the answer is $\\boxed{42}$.", "42"),
    ("So she gets \\boxed{4} back, i.e. \\boxed{\\frac{8}{2}} dollars.", "\\frac{8}{2}"),  # last box, nested braces
])
def test_processbench_prm_prompt_equals_the_sft_prompt_with_the_boxed_answer(last, answer):
    c = pb.Case(id="math-7", split="math", problem=PB_PROBLEM,
                steps=("3 pens at \\boxed{2} dollars each cost $3 \\times 2 = 6$ dollars.", last), label=-1)
    assert pb.case_final_answer(c.steps) == answer
    seen = _prompt_seen_by_prm(c)
    assert seen == _sft_prompt(c, answer)
    assert seen[-1]["content"].count(f"\nAnswer: {answer}\n") == 1


def test_processbench_prm_prompt_has_no_answer_line_without_a_boxed_last_step():
    c = pb.Case(id="gsm8k-3", split="gsm8k", problem=PB_PROBLEM,
                steps=("The answer to the first part is \\boxed{6}.", "The change is 10 - 6 = 4 dollars."), label=-1)
    assert pb.case_final_answer(c.steps) is None
    assert pb.case_final_answer(("\\boxed{}",)) is None
    seen = _prompt_seen_by_prm(c)
    assert "Answer:" not in seen[-1]["content"]
    assert seen[-1]["content"].endswith("Step 2: The change is 10 - 6 = 4 dollars.\n\nLet's verify step by step.")
    from spark_hub import rm_prompts

    assert seen == [{"role": "user", "content": rm_prompts.rm_prompt("prm", c.problem, c.steps, None)}]
    # the SFT prompt of a record without a final answer is the same text
    assert seen == _sft_prompt(c, None)
