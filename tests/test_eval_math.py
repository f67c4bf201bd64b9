"""spark_hub.evaluate.math: benchmark files, pass@1 over k samples, resume from the call cache, results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from spark_hub.backends.base import BackendConfig
from spark_hub.backends.scripted import ScriptedBackend
from spark_hub.errors import SparkHubError
from spark_hub.evaluate.math import (
    BENCHMARKS,
    compute_metrics,
    format_table,
    grade,
    load_math_benchmarks,
    manifest_results,
    model_index,
    plot_results,
    record_results,
    run,
)
from spark_hub.io import sha256_file

MATH = Path(SHARED_DATA) / "math-benchmarks"


def ans(value: str) -> str:
    return f"<step>Work it out.</step>\n<answer>The answer is \\boxed{{{value}}}.</answer>"


PROBLEMS = {
    "math500": [("m-0", "Compute 1/2 + 0.", "\\frac{1}{2}"), ("m-1", "Compute 6*7.", "42"), ("m-2", "Solve x+1=3.", "2")],
    "aime24": [("a-0", "Find 100+4.", "104"), ("a-1", "Find 2^10.", "1024")],
}
# what the scripted policy writes for each problem: k=2 samples alternate between these
SCRIPT = {
    "Compute 1/2 + 0.": [ans("0.5"), ans("0.5")],                     # equivalent form: 2/2
    "Compute 6*7.": [ans("42"), ans("41")],                           # 1/2
    "Solve x+1=3.": ["I think it is 2.", ans("2") + " extra text"],   # no boxed: wrong; bad format, right: 1/2
    "Find 100+4.": [ans("104"), ans("104")],                          # 2/2
    "Find 2^10.": [ans("1000"), ans("1000")],                         # 0/2
}


def write_benchmarks(folder: Path, manifest: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    table = {}
    for name, rows in PROBLEMS.items():
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"id": i, "problem": p, "answer": a}) + "\n" for i, p, a in rows))
        table[path.name] = {"sha256": sha256_file(path), "rows": len(rows)}
    if manifest:
        (folder / "MANIFEST.json").write_text(json.dumps(table))
    return folder


def scripted(tmp_path: Path) -> ScriptedBackend:
    script = tmp_path / "policy.jsonl"
    script.write_text("".join(json.dumps({"contains": [p], "completions": c}) + "\n" for p, c in SCRIPT.items()))
    return ScriptedBackend(BackendConfig(backend="scripted", model=str(script)))


def test_six_benchmarks_in_the_shared_data_load_and_match_their_manifest():
    if not MATH.is_dir():
        pytest.skip("shared math benchmarks not present")
    data = load_math_benchmarks(MATH, limit=2)
    assert list(data.benchmarks) == list(BENCHMARKS)
    assert {name: f["rows"] for name, f in data.files.items()} == {
        "math500": 500, "aime24": 30, "aime25": 30, "amc23": 40, "olympiadbench": 674, "minerva_math": 272}
    assert all(f["manifest_checked"] and f["used"] == 2 for f in data.files.values())
    assert all(p.answer for p in data.problems())


def test_pass_at_1_over_k_samples_per_benchmark_and_mean(tmp_path):
    folder = write_benchmarks(tmp_path / "bench")
    backend = scripted(tmp_path)
    out = tmp_path / "out" / "math.json"
    results = run(folder, backend=backend, k=2, output=out, max_tokens=64)
    m = results["benchmarks"]
    assert m["math500"]["accuracy"] == pytest.approx(100 * (1 + 0.5 + 0.5) / 3)
    assert m["aime24"]["accuracy"] == pytest.approx(50.0)
    assert results["average"] == pytest.approx((200 / 3 + 50.0) / 2)
    assert m["math500"]["no_answer"] == pytest.approx(100 / 6) and m["math500"]["format_valid"] == pytest.approx(400 / 6)
    assert results["sampling"]["temperature"] == 0.6 and results["sampling"]["k"] == 2
    saved = json.loads(out.read_text())
    assert saved["average"] == results["average"] and len(saved["cases"]) == 5
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = {**results, "benchmarks": {**m, "aime24": {**m["aime24"], "accuracy": None}}}
    assert plot_results(missing, tmp_path / "missing.png", title="policy").read_bytes()[:4] == b"\x89PNG"
    table = format_table(results)
    assert "MATH500" in table and "AIME24" in table and "average" in table
    assert saved["cases"][2]["answers"] == [None, "2"] and saved["cases"][2]["correct"] == [False, True]


def test_greedy_and_resume_from_the_call_cache(tmp_path):
    from spark_hub.cache import CachedBackend, CallCache

    folder = write_benchmarks(tmp_path / "bench")
    engine = scripted(tmp_path)
    first = run(folder, backend=CachedBackend(engine, CallCache(tmp_path / "cache.sqlite")), per_case=False)
    assert first["sampling"]["temperature"] == 0.0 and first["benchmarks"]["aime24"]["k"] == 1
    calls = engine.calls
    again = CachedBackend(engine, CallCache(tmp_path / "cache.sqlite"))
    second = run(folder, backend=again, per_case=False)
    assert engine.calls == calls and again.hits == 5 and again.model_requests == 0
    assert second["benchmarks"] == first["benchmarks"]


def test_data_errors_name_the_file(tmp_path):
    folder = write_benchmarks(tmp_path / "bench")
    with pytest.raises(SparkHubError, match="benchmark\\(s\\) aime25 not found.*available: aime24, math500"):
        load_math_benchmarks(folder, ["aime25"])
    (folder / "aime24.jsonl").write_text('{"id": "a-0", "problem": "p", "answer": "1"}\n')
    with pytest.raises(SparkHubError, match="aime24.jsonl does not match the sha256"):
        load_math_benchmarks(folder)
    assert load_math_benchmarks(folder, verify=False).files["aime24"]["rows"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "problem": "p"}\n')
    with pytest.raises(SparkHubError, match=r"bad.jsonl:1: field 'answer'"):
        load_math_benchmarks(None, files={"custom": bad})
    # a configurable path replaces one benchmark's file
    other = tmp_path / "elsewhere.jsonl"
    other.write_text('{"id": "e-0", "problem": "Find 100+4.", "answer": "104"}\n')
    data = load_math_benchmarks(folder, ["aime24"], files={"aime24": other}, verify=False)
    assert [p.id for p in data.problems()] == ["e-0"]


def test_a_timeout_counts_as_wrong_and_is_reported():
    from spark_hub.evaluate.math import MathProblem

    problem = MathProblem("t-0", "math500", "p", "14")
    [result] = grade([(problem, [ans("14"), ans("15")], ["stop", "length"])])
    assert result.correct == [True, False] and result.truncated == [False, True] and result.pass_at_1 == 0.5
    result.correct = [None, True]  # as a timed-out comparison reads
    metrics = compute_metrics([result])
    assert metrics["benchmarks"]["math500"]["accuracy"] == 50.0 and metrics["benchmarks"]["math500"]["cannot_tell"] == 1


def test_record_results_into_a_policy_manifest_and_card(tmp_path):
    from spark_hub.cards import render_model_card
    from spark_hub.manifest import new_manifest, read_manifest, write_manifest

    folder = write_benchmarks(tmp_path / "bench")
    results = run(folder, backend=scripted(tmp_path), k=2, per_case=False)
    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "config.json").write_text("{}")
    write_manifest(policy, new_manifest("policy", config={"base_model": "org/base"}))
    record_results(policy, results)
    manifest = read_manifest(policy)
    assert manifest["results"]["math"] == manifest_results(results)
    assert manifest["results"]["math"]["aime24"] == {"accuracy": 50.0, "n": 2, "k": 2}
    card = render_model_card(manifest)
    assert "model-index" in card and "aime24" in card and "50.0" in card
    assert model_index(results, "m")[0]["results"][0]["dataset"]["name"] == "MATH500"
    prm = tmp_path / "prm"
    prm.mkdir()
    write_manifest(prm, new_manifest("prm", config={}))
    with pytest.raises(SparkHubError, match="not a policy"):
        record_results(prm, results)


def test_a_tiny_random_model_through_the_transformers_backend(tmp_path):
    from tiny_models import make_tiny_model

    model = make_tiny_model(tmp_path / "tiny")
    folder = write_benchmarks(tmp_path / "bench")
    results = run(folder, backend=model, cache=tmp_path / "cache.sqlite", limit=1, max_tokens=8,
                  output=tmp_path / "r.json")
    assert results["benchmarks"]["math500"]["n"] == 1 and results["benchmarks"]["aime24"]["n"] == 1
    assert results["average"] == 0.0  # random weights answer nothing
    assert results["model"]["id"] and (tmp_path / "r.png").is_file()
