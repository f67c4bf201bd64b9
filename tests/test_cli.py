"""The command line via click's CliRunner: help, build, validate, info, and bad-input errors."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import read_rows, scripted_recipe
from hub_fixtures import hub_server, unique_repo  # noqa: F401
from spark_hub.cli import cli
from spark_hub.config import load_build_config

def all_commands(group=cli, path=()):
    """Every command path under the group, nested groups included (new commands are covered as added;
    the top-level ones load on demand, through the group's list_commands / get_command)."""
    import click

    yield list(path)
    if isinstance(group, click.Group):
        ctx = click.Context(group)
        for name in group.list_commands(ctx):
            yield from all_commands(group.get_command(ctx, name), (*path, name))


COMMANDS = list(all_commands())


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "spark-hub")
def test_help_of_every_command(command):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_the_expected_commands_are_registered():
    assert {c[0] for c in COMMANDS if c} >= {"build-dataset", "validate", "info", "push", "recipes", "env"}


def test_a_command_imports_only_what_it_needs():
    """`spark-hub build-dataset` does not load the other commands' modules, rich (off a terminal) or
    the grading pool: a finished build re-runs in a fraction of a second."""
    import subprocess
    import sys

    code = ("import sys; from click.testing import CliRunner; from spark_hub.cli import cli; "
            "r = CliRunner().invoke(cli, ['build-dataset', '--help']); assert r.exit_code == 0, r.output; "
            "print(sorted(m for m in ('spark_hub.cli.stage2', 'spark_hub.cli.push', 'spark_hub.cli.inspect_', "
            "'rich', 'spark_hub.grading', 'importlib.metadata', 'torch', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def build(tmp_path, *args):
    recipe = scripted_recipe(tmp_path)
    return CliRunner().invoke(
        cli, ["build-dataset", "--config", str(recipe), "--output-dir", str(tmp_path / "out"), "--no-progress", *args]
    )


def test_build_validate_info(tmp_path):
    result = build(tmp_path, "--limit", "2", "--set", "verifier.n=2")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    records = read_rows(out)
    assert {r["problem_id"] for r in records} == {"gsm8k-test-134", "gsm8k-test-117"}
    assert all(r["n_verifications"] == 2 for r in records if r["status"] != "no_steps")
    resolved = (out / "config.yaml").read_text()
    assert "limit: 2" in resolved and "n: 2" in resolved

    result = CliRunner().invoke(cli, ["validate", str(out)])
    assert result.exit_code == 0, result.output
    assert "valid: 10 record(s)" in result.output  # 4 step records + 6 verifications

    result = CliRunner().invoke(cli, ["info", str(out), "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output)["solutions"] == 4


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "setup, expected",
    [
        (lambda d: ["--problems", str(write(d / "p.jsonl", '{"problem": "1+1?"}\n{"problem": "2+2?"\n'))],
         "p.jsonl:2: invalid JSON"),
        (lambda d: ["--problems", str(write(d / "p.jsonl", '{"problem": "1+1?"}\n{"question": "2+2?"}\n'))],
         "p.jsonl:2: missing field 'problem' (fields present: question)"),
        (lambda d: ["--problems", str(write(d / "p.jsonl", ""))], "no problems in"),
        (lambda d: ["--problems", str(write(d / "p.jsonl", '{"problem": 3.5e9999}\n{"problem": ["a"]}\n'))],
         "p.jsonl:2: field 'problem' must be a string"),
        (lambda d: ["--problems", str(d / "missing.jsonl")], "problems file not found"),
        (lambda d: ["--set", "verifier.backend=quantum"], "unknown backend 'quantum'"),
        (lambda d: ["--set", "verifier.backend=transformers", "--set", f"verifier.model={d / 'no-such-model'}"],
         "no-such-model"),
        (lambda d: ["--set", "verifier.temprature=0.1"], "unknown key verifier.temprature (did you mean temperature? valid keys under verifier:"),
        (lambda d: ["--set", "aggregation.method=vibes"], "aggregation.method must be one of"),
    ],
    ids=["malformed-json", "missing-problem", "empty-file", "wrong-type", "missing-file", "unknown-backend",
         "unreadable-model", "unknown-key", "bad-method"],
)
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, setup, expected):
    args = setup(tmp_path)
    result = build(tmp_path, *args)
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert expected in message
    assert len(message.splitlines()) == 1, message
    assert not (tmp_path / "out").exists()


def test_validate_reports_record_and_path(tmp_path):
    bad = tmp_path / "records.jsonl"
    good = {
        "schema_version": "1", "id": "p/s0", "problem_id": "p", "problem": "1+1?", "reference": None,
        "solution_index": 0, "solution": "Step 1: 2", "steps": ["2"], "final_answer": "2", "solution_status": "ok",
        "generator": "g", "verifier": "v", "method": "step_consistency", "status": "ok", "labels": [True],
        "final_label": True, "first_error_step": -1, "votes_correct": [1], "votes_incorrect": [0],
        "agreement": [1.0], "final_votes_yes": 1, "final_votes_no": 0, "n_verifications": 1, "n_parsed": 1,
        "cot_target": None, "cot_verification_index": None, "cot_verification_id": None, "cot_exact_match": None,
    }
    wrong_label = dict(good, id="p/s1", labels=[True, "yes"])
    old = dict(good, id="p/s2", schema_version="0")
    bad.write_text("\n".join(json.dumps(r) for r in (good, wrong_label, old)) + "\n")
    result = CliRunner().invoke(cli, ["validate", str(bad)])
    assert result.exit_code == 1
    assert f"{bad}:2 (id p/s1): $.labels[1]: 'yes' is not of type 'boolean'" in result.output
    assert f"{bad}:3 (id p/s2): $.schema_version: unsupported schema version '0'" in result.output


def test_info_rejects_a_manifest_of_another_schema_version(tmp_path):
    result = build(tmp_path)
    assert result.exit_code == 0, result.output
    manifest = tmp_path / "out" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["schema_version"] = "2"
    manifest.write_text(json.dumps(data))
    result = CliRunner().invoke(cli, ["info", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"Error: {manifest}: $.schema_version: unsupported schema version '2' (this spark-hub reads version 1)"
    ]


# ----------------------------------------------------------------------------- one-line errors, flags


@pytest.mark.parametrize(
    "args, expected",
    [
        (["build-dataset", "--limit", "abc"], "Error: Invalid value for '--limit': 'abc' is not a valid integer."),
        (["build-dataset", "--output-dir", "{file}"], "Error: Invalid value for '--output-dir': Directory '{file}' is a file."),
        (["build-dataset", "--solutions", "{dir}"], "Error: Invalid value for '--solutions': File '{dir}' is a directory."),
        (["build-dataset", "--no-such-flag"], "Error: No such option '--no-such-flag'."),
        (["push", "{dir}"], "Error: Missing argument 'REPO_ID'."),
        (["no-such-command"], "Error: No such command 'no-such-command'."),
    ],
    ids=["limit-abc", "output-dir-is-file", "solutions-is-dir", "unknown-option", "missing-argument", "unknown-command"],
)
def test_click_usage_errors_are_one_line(tmp_path, args, expected):
    file = tmp_path / "a-file"
    file.write_text("x")
    fill = {"file": str(file), "dir": str(tmp_path)}
    result = CliRunner().invoke(cli, [a.format(**fill) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(expected.format(**fill)), lines[0]
    assert "--help" in lines[0]  # where to look next
    assert not (tmp_path / "out").exists()


def test_config_errors_name_role_and_source(tmp_path):
    result = build(tmp_path, "--set", "verifier.n=0")
    assert result.exit_code == 2
    assert result.output.strip() == "Error: --set verifier.n: n must be >= 1, got 0 (verifier)"
    result = build(tmp_path, "--set", "generator.temperature=-1")
    assert result.output.strip() == "Error: --set generator.temperature: temperature must be >= 0, got -1.0 (generator)"


def test_revision_means_one_thing(tmp_path):
    help_text = CliRunner().invoke(cli, ["build-dataset", "--help"]).output
    assert "--problems-revision" in help_text and "--revision " not in help_text
    assert "--problems-config" in help_text and "--problems-split" in help_text
    result = build(tmp_path, "--revision", "main")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "Error: Invalid value for '--revision': renamed to --problems-revision (the Hub revision of --problems); "
        "--hub-revision is the branch to push to (see `cli build-dataset --help`)"]
    # --hub-revision is the target branch in every command that pushes
    assert "--hub-revision" in CliRunner().invoke(cli, ["push", "--help"]).output


def test_build_dataset_push_takes_the_push_options(tmp_path, monkeypatch):
    help_text = CliRunner().invoke(cli, ["build-dataset", "--help"]).output
    for flag in ("--push", "--hub-repo", "--hub-revision", "--private", "--overwrite", "--hub-endpoint"):
        assert flag in help_text
    calls = []

    class Pushed:
        commit_url = "http://hub/commit/1"

        def summary(self):
            return "Pushed 6 files (50 KiB) to dataset me/data@run-1"

    def fake_push(folder, repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return Pushed()

    monkeypatch.setattr("spark_hub.hub.push", fake_push)
    result = build(tmp_path, "--limit", "1", "--push", "--hub-repo", "me/data", "--hub-revision", "run-1",
                   "--private", "--overwrite", "--hub-endpoint", "http://127.0.0.1:9")
    assert result.exit_code == 0, result.output
    assert calls == [("me/data", {"revision": "run-1", "private": True, "overwrite": True,
                                  "endpoint": "http://127.0.0.1:9"})]
    assert result.output.strip().splitlines()[-1] == "Pushed 6 files (50 KiB) to dataset me/data@run-1: http://hub/commit/1"


def test_ctrl_c_says_the_build_is_resumable_and_how(tmp_path, monkeypatch):
    def interrupted(config, progress=True):
        raise KeyboardInterrupt

    monkeypatch.setattr("spark_hub.stages.build.main", interrupted)
    result = build(tmp_path, "--limit", "1")
    assert result.exit_code == 130
    assert "Aborted!" not in result.output
    recipe = tmp_path / "scripted" / "recipe.yaml"
    assert result.output.strip().splitlines()[-1] == (
        "Interrupted: the build is resumable: model calls made so far are cached. Resume with the same command: "
        f"cli build-dataset --config {recipe} --output-dir {tmp_path / 'out'} --no-progress --limit 1")


def test_dry_run_says_when_the_recipe_limit_applies(tmp_path):
    recipe = scripted_recipe(tmp_path)
    recipe.write_text(recipe.read_text() + "limit: 2\n")
    result = CliRunner().invoke(cli, ["build-dataset", "--config", str(recipe), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"limit:                  first 2 problems, from {recipe} (--set limit=null for all)" in result.output
    result = CliRunner().invoke(cli, ["build-dataset", "--config", str(recipe), "--dry-run", "--set", "limit=null"])
    assert result.exit_code == 0, result.output
    assert "limit:" not in result.output


# ----------------------------------------------------------------------------- recipes, env, info


def test_recipes_lists_the_builtin_recipes_by_kind_with_their_description():
    from spark_hub.cli.tools import builtin_recipes

    result = CliRunner().invoke(cli, ["recipes"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "build-dataset (spark-hub build-dataset --config NAME):"
    demo = next(line for line in lines if line.startswith("  demo-cpu "))
    assert "spark-hub demo on CPU" in demo
    assert any(line.startswith("  spark-paper/step_consistency ") and "step_consistency" in line.split(None, 1)[1]
               for line in lines)
    kinds = {name: kind for name, kind, _ in builtin_recipes()}
    assert sum(kind == "build-dataset" for kind in kinds.values()) >= 8
    assert all(kind == "train prm" for name, kind in kinds.items() if "train-prm/" in name)
    assert all(kind == "accelerate" for name, kind in kinds.items() if name.startswith("accelerate/"))
    listed = [line.split()[0] for line in lines if line.startswith("  ") and not line.startswith("  /")]
    assert sorted(listed) == sorted(name for name, kind in kinds.items() if kind != "accelerate")


def test_every_listed_recipe_loads():
    from spark_hub.cli.tools import builtin_recipes
    from spark_hub.config import parse_config

    for name, kind, _ in builtin_recipes():
        if kind == "build-dataset":
            assert load_build_config(name).verifier.n >= 1, name
        elif kind == "train prm":
            trl = pytest.importorskip("trl")
            from spark_hub.train.prm import PRMTrainArgs

            args, training, model = parse_config((PRMTrainArgs, trl.SFTConfig, trl.ModelConfig), name,
                                                 accelerator=False)
            assert args.dataset and model.model_name_or_path, name
        elif kind == "train grpo":
            trl = pytest.importorskip("trl")
            from spark_hub.train.grpo import GRPOTrainArgs

            args, training, model = parse_config((GRPOTrainArgs, trl.GRPOConfig, trl.ModelConfig), name,
                                                 accelerator=False)
            assert args.problems and model.model_name_or_path, name


def test_env_prints_versions_and_devices():
    result = CliRunner().invoke(cli, ["env"])
    assert result.exit_code == 0, result.output
    import torch
    import trl

    for line in ("python: ", "spark-hub: ", f"torch: {torch.__version__}", f"trl: {trl.__version__}", "transformers: ",
                 "datasets: ", "huggingface_hub: ", "accelerate: ", "device: cpu: "):
        assert line in result.output, line


def test_info_shows_provenance(tmp_path):
    assert build(tmp_path, "--limit", "1").exit_code == 0
    result = CliRunner().invoke(cli, ["info", str(tmp_path / "out")], terminal_width=200)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    for text in ("model: verifier", "verifier.jsonl", "model: generator", "input: problems",
                 manifest["inputs"]["problems"]["sha256"][:16], "spark-hub", "prompt: verifier", "solutions"):
        assert text in result.output, text
    sha = manifest.get("git_sha")
    assert (sha[:12] if sha else "git unknown") in result.output


def test_info_of_a_missing_folder_is_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["info", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert result.output.strip() == f"Error: no such folder: {tmp_path / 'nothing'} (pass a spark-hub output folder or a Hub repo id ORG/NAME)"


def test_info_accepts_a_hub_repo_id(tmp_path, hub_server):  # noqa: F811
    import os
    from pathlib import Path

    from huggingface_hub import HfApi

    from spark_hub import hub

    assert build(tmp_path, "--limit", "1").exit_code == 0
    repo = unique_repo("info")
    hub.push(tmp_path / "out", repo, revision="run-1", endpoint=hub_server.endpoint)
    result = CliRunner().invoke(cli, ["info", repo, "--revision", "run-1", "--hub-endpoint", hub_server.endpoint],
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    sha = HfApi(endpoint=hub_server.endpoint).dataset_info(repo, revision="run-1").sha
    assert f"{repo}@run-1 (commit {sha[:8]})" in result.output
    assert "model: verifier" in result.output and "input: problems" in result.output
    cached = Path(os.environ["HF_HOME"]) / "hub" / f"datasets--{repo.replace('/', '--')}"
    assert not list(cached.rglob("*.parquet"))  # only the manifest was fetched
    result = CliRunner().invoke(cli, ["info", repo, "--json", "--revision", "run-1"])
    assert json.loads(result.stdout)["solutions"] == 2

    result = CliRunner().invoke(cli, ["info", "spark-tester/not-there", "--hub-endpoint", hub_server.endpoint])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.strip().endswith("there is no local folder spark-tester/not-there either)"), result.output

    # sft-data reads the pushed records through the same download, and records which commit it read
    sft = tmp_path / "sft"
    result = CliRunner().invoke(cli, ["sft-data", repo, "--revision", "run-1", "--variant", "orm", "--output-dir",
                                      str(sft), "--hub-endpoint", hub_server.endpoint])
    assert result.exit_code == 0, result.output
    source = json.loads((sft / "manifest.json").read_text())["inputs"]["step_records"]
    assert source["source"] == f"hf://datasets/{repo}" and source["revision"] == "run-1"
    assert source["commit"] == HfApi(endpoint=hub_server.endpoint).dataset_info(repo, revision="run-1").sha


def test_spark_hub_alone_prints_the_help():
    result = CliRunner().invoke(cli, [])
    assert "Usage:" in result.output and "Commands:" in result.output and "Error" not in result.output


def test_sigint_mid_build_says_how_to_resume_and_the_resume_finishes(tmp_path):
    """A real Ctrl-C (SIGINT) in the middle of a build, then the printed command finishes it."""
    import shlex
    import signal
    import subprocess
    import sys
    import time

    from helpers import env_with_tests_on_path
    from spark_hub.cache import CallCache

    recipe, out = scripted_recipe(tmp_path), tmp_path / "out"
    args = ["build-dataset", "--config", str(recipe), "--output-dir", str(out), "--no-progress", "-q",
            "--set", "generator.backend=slow_backend:SlowScriptedBackend",
            "--set", "verifier.backend=slow_backend:SlowScriptedBackend", "--set", "verifier.batch_size=1"]
    env = env_with_tests_on_path()
    env["SPARK_TEST_DELAY"] = "0.3"
    proc = subprocess.Popen([sys.executable, "-m", "spark_hub.cli", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cache = out / ".spark" / "cache.sqlite"
    deadline = time.time() + 60
    while not (cache.exists() and len(CallCache(cache)) >= 2) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and "Aborted!" not in err
    prefix = "Interrupted: the build is resumable: model calls made so far are cached. Resume with the same command: "
    assert last.startswith(prefix), last
    command = shlex.split(last[len(prefix):])
    assert command == ["spark-hub", *args]
    assert not (out / "manifest.json").exists()

    env["SPARK_TEST_DELAY"] = "0"
    done = subprocess.run([sys.executable, "-m", "spark_hub.cli", *command[1:]], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (out / "manifest.json").exists() and len(CallCache(cache)) == 8  # every request cached once: none made twice


def test_ctrl_c_in_a_dry_run_does_not_talk_about_resuming(tmp_path, monkeypatch):
    def interrupted(config, throughput=None):
        raise KeyboardInterrupt

    monkeypatch.setattr("spark_hub.stages.plan.dry_run", interrupted)
    result = build(tmp_path, "--dry-run")
    assert result.exit_code == 130
    assert result.output.strip().splitlines()[-1] == "Interrupted."


# ----------------------------------------------------------------------------- Stage II commands


def test_sft_data_from_a_build(tmp_path):
    import hashlib

    assert build(tmp_path).exit_code == 0
    out, sft = tmp_path / "out", tmp_path / "sft"
    result = CliRunner().invoke(cli, ["sft-data", str(out), "--output-dir", str(sft), "--variant", "prm",
                                      "--eval-fraction", "0.3"])
    assert result.exit_code == 0, result.output
    labelled = [r for r in read_rows(out) if r["status"] == "ok" and r["labels"] is not None]
    lines = [json.loads(line) for split in ("train", "eval") for line in (sft / "data" / f"{split}.jsonl").read_text().splitlines()]
    assert len(lines) == len(labelled) and {row["id"] for row in lines} == {r["id"] for r in labelled}
    assert all(row["completion"][0]["content"].startswith("Step 1:") for row in lines)
    assert result.output.strip().endswith(f"examples from {len(read_rows(out))} records -> {sft}")
    manifest = json.loads((sft / "manifest.json").read_text())
    source = manifest["inputs"]["step_records"]
    assert source["sha256"] == hashlib.sha256((out / "manifest.json").read_bytes()).hexdigest()
    assert source["build_key"] == json.loads((out / "manifest.json").read_text())["build_key"]

    result = CliRunner().invoke(cli, ["sft-data", str(tmp_path / "nowhere"), "--output-dir", str(tmp_path / "x")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "x").exists()


def processbench_data(folder):
    folder.mkdir()
    cases = [
        {"id": "gsm8k-0", "problem": "1+1?", "steps": ["1+1=2", "So 2."], "label": -1},
        {"id": "gsm8k-1", "problem": "2+2?", "steps": ["2+2=5", "So 5."], "label": 0},
        {"id": "gsm8k-2", "problem": "3+3?", "steps": ["3+3=6", "6*1=7", "So 7."], "label": 1},
        {"id": "gsm8k-3", "problem": "4+4?", "steps": ["4+4=8", "So 8."], "label": -1},
    ]
    (folder / "gsm8k.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cases))
    return folder


def test_eval_processbench_with_predictions_and_with_a_critic(tmp_path):
    data = processbench_data(tmp_path / "pb")
    predictions = tmp_path / "preds.jsonl"
    # error cases: 1 of 2 right (50%); correct cases: 2 of 2 right (100%) -> F1 = 2*50*100/150 = 66.7
    rows = [("gsm8k-0", -1), ("gsm8k-1", 0), ("gsm8k-2", 2), ("gsm8k-3", -1)]
    predictions.write_text("".join(json.dumps({"id": i, "prediction": p}) + "\n" for i, p in rows))
    output = tmp_path / "results.json"
    result = CliRunner().invoke(cli, ["eval", "processbench", "--data", str(data), "--predictions", str(predictions),
                                      "--output", str(output)])
    assert result.exit_code == 0, result.output
    results = json.loads(output.read_text())
    assert round(results["splits"]["gsm8k"]["f1"], 1) == 66.7, results
    assert "66.7" in result.stdout and result.output.count("average") == 1, result.output  # the table once

    # a scripted critic answers \boxed{0} for "2+2?" and \boxed{-1} otherwise; its calls are cached for a resume
    critic = tmp_path / "critic.jsonl"
    critic.write_text(json.dumps({"contains": ["2+2?"], "completions": ["The first step is wrong. \\boxed{0}"]}) + "\n"
                      + json.dumps({"completions": ["All fine. \\boxed{-1}"]}) + "\n")
    args = ["eval", "processbench", "--data", str(data), "--critic", str(critic), "--critic-backend", "scripted",
            "--output", str(tmp_path / "critic.json"), "--no-progress"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "critic.json").read_text())["splits"]["gsm8k"]
    assert round(metrics["f1"], 1) == 66.7, metrics  # gsm8k-2's error at step 1 missed
    assert (tmp_path / "critic.cache.sqlite").exists()

    result = CliRunner().invoke(cli, ["eval", "processbench", "--data", str(data)])
    assert result.exit_code == 2
    assert result.output.strip() == "Error: give exactly one of --prm, --critic or --predictions"


TRAIN_RECIPE = """\
dataset: {dataset}
variant: orm
model_name_or_path: {model}
learning_rate: 1e-4
max_steps: 2
output_dir: {out}
"""


def test_train_prm_reads_one_recipe_for_spark_hub_and_trl(tmp_path, monkeypatch):
    pytest.importorskip("trl")
    seen = {}

    def fake_train(args, training, model_args, **kwargs):
        seen.update(args=args, training=training, model=model_args, **kwargs)
        return Path(training.output_dir)

    monkeypatch.setattr("spark_hub.train.prm.train_from_config", fake_train)
    recipe = tmp_path / "train.yaml"
    recipe.write_text(TRAIN_RECIPE.format(dataset=tmp_path / "records", model="my-org/base", out=tmp_path / "from-recipe"))
    result = CliRunner().invoke(cli, ["train", "prm", "--config", str(recipe), "--set", "max_steps=5",
                                      "--set", "eval_fraction=0.2", "--output-dir", str(tmp_path / "prm")])
    assert result.exit_code == 0, result.output
    args, training, model = seen["args"], seen["training"], seen["model"]
    assert (args.dataset, args.variant, args.eval_fraction) == (str(tmp_path / "records"), "orm", 0.2)
    assert (training.learning_rate, training.max_steps, training.output_dir) == (1e-4, 5, str(tmp_path / "prm"))
    assert model.model_name_or_path == "my-org/base"
    assert seen["push_checkpoints_to"] is None
    import torch

    if not torch.cuda.is_available():
        assert training.use_cpu is True and training.bf16 is False

    recipe.write_text(recipe.read_text() + "learnig_rate: 0.1\n")
    result = CliRunner().invoke(cli, ["train", "prm", "--config", str(recipe)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {recipe}:7: unknown key learnig_rate (did you mean learning_rate?")

    result = CliRunner().invoke(cli, ["train", "prm", "--config", str(recipe), "--push"])
    assert result.output.strip() == "Error: --push needs --hub-repo ORG/NAME"

    # --push: checkpoints go to step branches while training, then the final folder to the target branch
    recipe.write_text(recipe.read_text().replace("learnig_rate: 0.1\n", ""))
    pushed = []

    class Pushed:
        commit_url = None

        def summary(self):
            return "Pushed 5 files (1 MiB) to model me/prm@main"

    monkeypatch.setattr("spark_hub.hub.push", lambda folder, repo, **kw: pushed.append((folder, repo, kw)) or Pushed())
    result = CliRunner().invoke(cli, ["train", "prm", "--config", str(recipe), "--push", "--hub-repo", "me/prm",
                                      "--private", "--hub-endpoint", "http://127.0.0.1:9"])
    assert result.exit_code == 0, result.output
    assert (seen["push_checkpoints_to"], seen["hub_endpoint"]) == ("me/prm", "http://127.0.0.1:9")
    assert pushed == [(tmp_path / "from-recipe", "me/prm", {"revision": "main", "private": True, "overwrite": False,
                                                             "endpoint": "http://127.0.0.1:9"})]
    assert result.output.strip().splitlines()[-1] == "Pushed 5 files (1 MiB) to model me/prm@main"


def test_ctrl_c_in_training_says_how_to_resume(tmp_path, monkeypatch):
    pytest.importorskip("trl")

    def interrupted(args, training, model_args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("spark_hub.train.prm.train_from_config", interrupted)
    recipe = tmp_path / "train.yaml"
    recipe.write_text(TRAIN_RECIPE.format(dataset=tmp_path, model="m/b", out=tmp_path / "prm"))
    result = CliRunner().invoke(cli, ["train", "prm", "--config", str(recipe)])
    assert result.exit_code == 130
    assert result.output.strip().splitlines()[-1] == (
        "Interrupted: training is resumable: it continues from the last saved checkpoint. "
        f"Resume with the same command: cli train prm --config {recipe}")


def test_summary_shows_votes_behind_agreement_and_ends_with_the_warnings(tmp_path, capsys):
    from types import SimpleNamespace

    from spark_hub.cli import print_summary

    statistics = {"problems": 8, "solutions": 8, "verifications": 32, "parse_failure_rate": 0.97,
                  "records_labelled": 1, "mean_step_agreement": 1.0, "mean_votes_per_step": 1.0,
                  "single_vote_steps": 3,
                  "warnings": ["only 1 of 8 solution(s) labelled; 31 of 32 verification(s) did not parse"]}
    print_summary(SimpleNamespace(statistics=statistics, output_dir=tmp_path, reused=False, seconds=1.0,
                                  model_requests={"generator": 8, "verifier": 8}))
    err = capsys.readouterr().err
    assert "100.0% (1.0 votes/step)" in err and "steps with a single vote" in err
    assert err.strip().splitlines()[-1] == ("Warning: only 1 of 8 solution(s) labelled; 31 of 32 verification(s) "
                                            "did not parse")


def test_train_grpo_reads_one_recipe_and_the_push_flags(tmp_path, monkeypatch):
    import os

    pytest.importorskip("trl")
    seen = {}

    def fake_train(args, training, model_args):
        seen.update(args=args, training=training, model=model_args, endpoint=os.environ.get("HF_ENDPOINT"))
        return Path(training.output_dir)

    monkeypatch.setattr("spark_hub.train.grpo.train_grpo", fake_train)
    monkeypatch.setenv("HF_ENDPOINT", "http://before")
    recipe = tmp_path / "grpo.yaml"
    recipe.write_text(f"problems: {tmp_path / 'p.jsonl'}\nreward: prm_outcome\nprm: {tmp_path / 'prm'}\n"
                      "model_name_or_path: my-org/policy\nnum_generations: 4\nper_device_train_batch_size: 4\n"
                      f"learning_rate: 1e-6\noutput_dir: {tmp_path / 'policy'}\nhub_revision: run-1\n")
    result = CliRunner().invoke(cli, ["train", "grpo", "--config", str(recipe), "--set", "num_generations=2",
                                      "--push", "--hub-repo", "me/policy", "--private",
                                      "--hub-endpoint", "http://127.0.0.1:9"])
    assert result.exit_code == 0, result.output
    args, training, model = seen["args"], seen["training"], seen["model"]
    assert (args.reward, args.push, args.hub_repo, args.hub_revision, args.hub_private, args.hub_overwrite) == (
        "prm_outcome", True, "me/policy", "run-1", True, False)
    assert (training.num_generations, training.learning_rate, model.model_name_or_path) == (2, 1e-6, "my-org/policy")
    assert seen["endpoint"] == "http://127.0.0.1:9" and os.environ["HF_ENDPOINT"] == "http://before"

    result = CliRunner().invoke(cli, ["train", "grpo", "--config", str(recipe), "--set", "reward=vibes"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("Error: --set reward: unknown reward design 'vibes' (valid: ")


def test_eval_math_with_a_scripted_policy_resumes_from_its_cache(tmp_path):
    data = tmp_path / "math"
    data.mkdir()
    (data / "math500.jsonl").write_text(json.dumps({"id": "m-0", "problem": "What is 1+1?", "answer": "2"}) + "\n"
                                        + json.dumps({"id": "m-1", "problem": "What is 2+3?", "answer": "5"}) + "\n")
    policy = tmp_path / "policy.jsonl"  # answers 2 to everything: right on m-0, wrong on m-1
    policy.write_text(json.dumps({"completions": ["<step>Add.</step><answer>The answer is \\\\boxed{2}.</answer>"]}) + "\n")
    out = tmp_path / "eval"
    args = ["eval", "math", "--model", str(policy), "--backend", "scripted", "--data", str(data), "--output-dir",
            str(out), "--no-progress"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "math_results.json").read_text())
    assert results["benchmarks"]["math500"]["accuracy"] == 50.0, results["benchmarks"]
    assert "MATH500" in result.stdout and (out / "math_results.png").is_file()
    assert result.output.count("average") == 1, result.output  # the table once, on stdout
    from spark_hub.cache import CallCache

    assert len(CallCache(out / ".spark" / "cache.sqlite")) == 2

    result = CliRunner().invoke(cli, ["eval", "math", "--model", str(policy), "--backend", "scripted", "--data",
                                      str(data), "--benchmarks", "aime99", "--output-dir", str(tmp_path / "x")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "x").exists()
