"""Stage I end to end on the scripted backend: golden outputs, resume, cache key, re-runs."""

import hashlib
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import DATA, env_with_tests_on_path, read_rows, scripted_recipe
from spark_hub.cache import CallCache
from spark_hub.config import load_build_config
from spark_hub.errors import SparkHubError
from spark_hub.stages import build

GOLDEN_RECORDS = [json.loads(l) for l in open(DATA / "golden" / "scripted_step_records.jsonl")]
GOLDEN_VERIFICATIONS = [json.loads(l) for l in open(DATA / "golden" / "scripted_verifications.jsonl")]


def run(recipe, out, *overrides):
    config = load_build_config(recipe, list(overrides), output_dir=str(out))
    return build.main(config, progress=False)


def project(rows, golden):
    return [{k: row[k] for k in golden[0]} for row in rows]


def test_scripted_pipeline_matches_golden(tmp_path):
    out = tmp_path / "out"
    result = run(scripted_recipe(tmp_path), out)
    assert project(read_rows(out), GOLDEN_RECORDS) == GOLDEN_RECORDS
    assert project(read_rows(out, "verifications"), GOLDEN_VERIFICATIONS) == GOLDEN_VERIFICATIONS
    stats = result.statistics
    assert stats["problems"] == 3 and stats["solutions"] == 6 and stats["verifications"] == 15
    assert stats["verification_status"] == {"no_final_verdict": 1, "no_steps": 1, "ok": 12, "step_count_mismatch": 1}
    assert stats["parse_failure_rate"] == pytest.approx(3 / 15, abs=1e-4)
    assert stats["record_status"] == {"no_steps": 1, "ok": 5}
    assert stats["steps_correct"] == 7 and stats["steps_incorrect"] == 3
    assert result.model_requests == {"generator": 3, "verifier": 5}
    # raw text is kept beside what was parsed, think blocks stripped only from `text`
    verifications = read_rows(out, "verifications")
    assert verifications[0]["raw_text"].startswith("<think>") and not verifications[0]["text"].startswith("<think>")
    # the CoT target is the text of the selected verification
    records = read_rows(out)
    first = records[0]
    assert first["cot_target"] == verifications[first["cot_verification_index"]]["text"]


def test_output_layout_and_manifest(tmp_path):
    out = tmp_path / "out"
    run(scripted_recipe(tmp_path), out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "dataset" and manifest["schema_version"] == "1"
    assert set(manifest["models"]) == {"generator", "verifier"}
    assert manifest["models"]["verifier"]["file_hash"]
    assert set(manifest["prompts"]) == {"generator", "verifier"}
    assert manifest["inputs"]["problems"]["sha256"] and manifest["inputs"]["problems"]["rows"] == 3
    assert manifest["seeds"] == {"sampling": 42, "balance": None}
    assert "torch" in manifest["packages"] and "datasets" in manifest["packages"]
    assert (out / "config.yaml").is_file() and (out / "README.md").is_file()
    assert set(manifest["files"]) >= {"config.yaml", "data/train-00000-of-00001.parquet",
                                      "verifications/train-00000-of-00001.parquet"}
    assert not any(name.startswith(".spark") for name in manifest["files"])


def test_load_dataset_reads_both_configs(tmp_path):
    import datasets

    out = tmp_path / "out"
    run(scripted_recipe(tmp_path), out)
    records = datasets.load_dataset(str(out), split="train")
    verifications = datasets.load_dataset(str(out), "verifications", split="train")
    assert records.num_rows == 6 and verifications.num_rows == 15
    assert records[0]["labels"] == [True, True]
    assert verifications.features["step_verdicts"].feature.dtype == "bool"


def test_finished_build_reruns_with_zero_model_calls(tmp_path):
    recipe, out = scripted_recipe(tmp_path), tmp_path / "out"
    first = run(recipe, out)
    before = (out / "data" / "train-00000-of-00001.parquet").read_bytes()
    again = run(recipe, out, "verifier.batch_size=2", "generator.batch_size=7", "chunk_size=1")
    assert again.reused and again.model_requests == {"generator": 0, "verifier": 0}
    assert (out / "data" / "train-00000-of-00001.parquet").read_bytes() == before
    assert again.manifest["build_key"] == first.manifest["build_key"]


def test_changed_sampling_is_a_new_key(tmp_path):
    recipe, out = scripted_recipe(tmp_path), tmp_path / "out"
    run(recipe, out)
    changed = run(recipe, out, "verifier.temperature=0.5")
    assert not changed.reused
    assert changed.model_requests == {"generator": 0, "verifier": 5}


def test_changed_aggregation_relabels_from_cache(tmp_path):
    recipe, out = scripted_recipe(tmp_path), tmp_path / "out"
    run(recipe, out)
    relabelled = run(recipe, out, "aggregation.method=outcome_consistency")
    assert relabelled.model_requests == {"generator": 0, "verifier": 0}
    assert {r["method"] for r in read_rows(out)} == {"outcome_consistency"}


def test_changed_input_never_returns_stale_rows(tmp_path):
    recipe, out = scripted_recipe(tmp_path), tmp_path / "out"
    run(recipe, out)
    problems = tmp_path / "problems_small.jsonl"
    lines = problems.read_text().splitlines()
    row = json.loads(lines[0])
    row["problem"] = row["problem"].replace("$15", "$16")
    lines[0] = json.dumps(row)
    problems.write_text("\n".join(lines[:2]) + "\n")  # change one problem, drop another
    result = run(recipe, out)
    records = read_rows(out)
    assert {r["problem_id"] for r in records} == {"gsm8k-test-134", "gsm8k-test-117"}
    assert all("$16" in r["problem"] for r in records if r["problem_id"] == "gsm8k-test-134")
    # only the changed problem is regenerated and re-verified
    assert result.model_requests == {"generator": 1, "verifier": 2}


def test_interrupted_finalize_is_rebuilt_from_cache(tmp_path):
    recipe, out = scripted_recipe(tmp_path), tmp_path / "out"
    run(recipe, out)
    (out / "manifest.json").unlink()  # as if killed between moving shards and writing the manifest
    result = run(recipe, out)
    assert not result.reused and result.model_requests == {"generator": 0, "verifier": 0}
    assert project(read_rows(out), GOLDEN_RECORDS) == GOLDEN_RECORDS


def test_refuses_foreign_output_folder(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(SparkHubError, match="not a spark-hub build"):
        run(scripted_recipe(tmp_path), out)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_solutions_file_skips_generation(tmp_path):
    solutions = tmp_path / "solutions.jsonl"
    rows = [
        {"id": "pb-1", "problem": "Tom gets 4 car washes a month. If each costs $15, how much per year?",
         "steps": ["He pays 4 x 15 = 60 dollars a month.", "In a year he pays 60 x 10 = 600 dollars."],
         "label": 1},
    ]
    solutions.write_text("".join(json.dumps(r) + "\n" for r in rows * 2))  # the row twice, verbatim
    recipe = scripted_recipe(tmp_path)
    out = tmp_path / "out"
    config = load_build_config(recipe, [], solutions=str(solutions), output_dir=str(out))
    result = build.main(config, progress=False)
    assert result.model_requests == {"generator": 0, "verifier": 1}
    records = read_rows(out)
    assert len(records) == 1
    assert records[0]["labels"] == [True, False] and records[0]["generator"] == "given"
    assert "generator" not in result.manifest["models"]
    assert result.statistics["inputs"] == {"duplicate_solution_rows_dropped": 1}


def _spawn(recipe, out, delay):
    env = env_with_tests_on_path()
    env["SPARK_TEST_DELAY"] = str(delay)
    cmd = [sys.executable, "-m", "spark_hub.cli", "build-dataset", "--config", str(recipe),
           "--output-dir", str(out), "--no-progress", "-q",
           "--set", "generator.backend=slow_backend:SlowScriptedBackend",
           "--set", "verifier.backend=slow_backend:SlowScriptedBackend",
           "--set", "generator.batch_size=1", "--set", "verifier.batch_size=1"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _cached(out):
    path = out / ".spark" / "cache.sqlite"
    if not path.exists():
        return 0
    try:
        return len(CallCache(path))
    except Exception:
        return 0


def test_sigkill_at_any_point_then_resume(tmp_path):
    """Kill the build (SIGKILL) after 1, 4 and 7 of its 8 model calls, then finish it."""
    recipe, out = scripted_recipe(tmp_path), tmp_path / "out"
    for calls_before_kill in (1, 4, 7):
        proc = _spawn(recipe, out, delay=0.4)
        deadline = time.time() + 60
        while _cached(out) < calls_before_kill and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (out / "manifest.json").exists()
        assert _cached(out) >= calls_before_kill
    done_before = _cached(out)
    proc = _spawn(recipe, out, delay=0.0)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["statistics"]["model_requests"]["generator"] + manifest["statistics"]["model_requests"]["verifier"] == 8 - done_before
    assert _cached(out) == 8  # nothing duplicated
    assert project(read_rows(out), GOLDEN_RECORDS) == GOLDEN_RECORDS
    # no temp or partial files are left in the artifact
    assert not [p for p in out.rglob("*.tmp")]


# ----------------------------------------------------------------------------- label quality warnings


def test_build_that_labels_nothing_warns_with_what_to_try(tmp_path, caplog):
    recipe = scripted_recipe(tmp_path)
    chatty = tmp_path / "chatty.jsonl"
    chatty.write_text(json.dumps({"completions": ["The solution looks fine to me."]}) + "\n")
    with caplog.at_level(logging.WARNING, logger="spark_hub"):
        result = run(recipe, tmp_path / "out", f"verifier.model={chatty}")
    stats = result.statistics
    assert stats["records_labelled"] == 0 and stats["verification_status"] == {"no_steps": 15}
    warning = stats["warnings"][0]
    assert "only 0 of 6 solution(s) labelled; 15 of 15 verification(s) did not parse (no_steps 15)" in warning
    assert "--set verifier.constrained=true" in warning and "another verifier" in warning
    assert warning in caplog.text
    assert result.manifest["statistics"]["warnings"] == [warning]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="spark_hub"):
        again = run(recipe, tmp_path / "out", f"verifier.model={chatty}")
    assert again.reused and warning in caplog.text  # a finished build says it again


def test_constrained_build_does_not_suggest_constraining(tmp_path):
    from spark_hub.stages.stats import labelling_warning

    stats = {"records": 8, "records_labelled": 1, "verifications": 32, "verification_status": {"ok": 1, "no_steps": 31}}
    assert "constrained" not in labelling_warning(stats, constrained=True)
    assert "--set verifier.constrained=true" in labelling_warning(stats)
    assert labelling_warning({**stats, "records_labelled": 8, "verification_status": {"ok": 32}}) is None


def test_agreement_comes_with_its_vote_counts(tmp_path):
    result = run(scripted_recipe(tmp_path), tmp_path / "out")
    steps = [(c + i, a) for r in read_rows(tmp_path / "out") if r["labels"] is not None
             for c, i, a in zip(r["votes_correct"], r["votes_incorrect"], r["agreement"]) if a is not None]
    stats = result.statistics
    assert stats["mean_votes_per_step"] == round(sum(v for v, _ in steps) / len(steps), 4)
    assert stats["single_vote_steps"] == sum(v == 1 for v, _ in steps)
    assert stats["warnings"] == []
    # one vote per step: agreement 1.0 says nothing, and the statistics show why
    single = run(scripted_recipe(tmp_path), tmp_path / "single", "verifier.n=1").statistics
    assert single["mean_step_agreement"] == 1.0
    assert single["mean_votes_per_step"] == 1.0 and single["single_vote_steps"] == single["steps_labelled"]


def test_backend_errors_name_the_role(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text("not json\n")
    with pytest.raises(SparkHubError, match=r"broken.jsonl:1: verifier: invalid JSON"):
        run(scripted_recipe(tmp_path), tmp_path / "out", f"verifier.model={broken}")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- dry run


def test_dry_run_reads_the_tokenizer_of_the_converted_folder(tmp_path, monkeypatch):
    """A GGUF already converted is not parsed again: the plan counts with the converted tokenizer."""
    from tiny_models import make_tiny_tokenizer

    from spark_hub.stages.plan import dry_run

    monkeypatch.setenv("SPARK_HUB_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model-Q4_1.gguf"
    gguf.write_bytes(b"GGUF but not really: parsing this file fails")
    sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
    folder = tmp_path / "cache" / "models" / f"model-Q4_1-{sha[:12]}"
    make_tiny_tokenizer().save_pretrained(folder)
    (folder / "spark_hub_source.json").write_text(json.dumps({"gguf_file": gguf.name, "gguf_sha256": sha}))
    config = load_build_config(scripted_recipe(tmp_path), ["verifier.backend=transformers", f"verifier.model={gguf}"],
                               output_dir=str(tmp_path / "out"), limit=2)
    plan = dry_run(config)
    assert plan["estimates"]["prompt_tokens"] == "tokenizer"
    assert plan["limit"] == 2 and plan["problems"] == 2
    assert not (tmp_path / "out").exists()


def test_pilot_report_shows_votes_per_step_and_warnings(tmp_path):
    from spark_hub.stages.plan import format_pilot, pilot

    chatty = tmp_path / "chatty.jsonl"
    chatty.write_text(json.dumps({"completions": ["Fine."]}) + "\n")
    config = load_build_config(scripted_recipe(tmp_path), [f"verifier.model={chatty}"], output_dir=str(tmp_path / "out"))
    report = pilot(config, 2, progress=False)
    assert report["records_labelled"] == 0 and "--set verifier.constrained=true" in report["warnings"][0]
    assert "warning: only 0 of 4 solution(s) labelled" in format_pilot(report)
    config = load_build_config(scripted_recipe(tmp_path), ["verifier.n=1"], output_dir=str(tmp_path / "one"))
    report = pilot(config, 2, progress=False)
    assert report["mean_step_agreement"] == 1.0 and report["mean_votes_per_step"] == 1.0
    assert "100.0%  (1 vote(s) per step)" in format_pilot(report)


def test_folder_tokenizer_counts_like_transformers(tmp_path):
    from tiny_models import make_tiny_tokenizer
    from transformers import AutoTokenizer

    from spark_hub.prompts import critique_messages, verifier_messages
    from spark_hub.stages.plan import FolderTokenizer, converted_folder

    folders = [tmp_path / "tiny"]
    make_tiny_tokenizer().save_pretrained(folders[0])
    try:
        from spark_hub.backends.models import find_embedded_gguf

        embedded = converted_folder(Path(find_embedded_gguf()))
    except SparkHubError:
        embedded = None
    if embedded is not None:  # the demo model, when this machine has converted it
        folders.append(embedded)
    chats = [verifier_messages("What is 2 + 2? Émile's $15 car wash — 👍", ["2 + 2 = 4.", "So 4."], "4"),
             critique_messages("A robe takes 2 bolts.", ["2 / 2 = 1", "2 + 1 = 3"], "3", "## Step 1: fine")]
    for folder in folders:
        fast, full = FolderTokenizer(folder), AutoTokenizer.from_pretrained(str(folder))
        for chat in chats:
            ids = full.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids
            assert fast.apply_chat_template(chat) == list(ids), folder
            text = chat[0]["content"]
            assert fast(text)["input_ids"] == full(text, add_special_tokens=False)["input_ids"]


def test_dry_run_on_a_model_folder_does_not_import_transformers(tmp_path):
    from tiny_models import make_tiny_tokenizer

    folder = tmp_path / "model"
    make_tiny_tokenizer().save_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    recipe = scripted_recipe(tmp_path)
    code = ("import sys\n"
            "from spark_hub.config import load_build_config\n"
            "from spark_hub.stages.plan import dry_run\n"
            f"config = load_build_config({str(recipe)!r}, ['generator.backend=transformers', "
            f"'generator.model={folder}', 'verifier.backend=transformers', 'verifier.model={folder}'])\n"
            "plan = dry_run(config)\n"
            "print(plan['estimates']['prompt_tokens'], 'transformers' in sys.modules, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=env_with_tests_on_path())
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["tokenizer", "False", "False"]
