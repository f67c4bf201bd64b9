"""The command line via click's CliRunner: help, build, validate, info, and bad-input errors."""

import json

import pytest
from click.testing import CliRunner

from helpers import read_rows, scripted_recipe
from spark_hub.cli import cli

def all_commands(group=cli, path=()):
    """Every command path under the group, nested groups included (new commands are covered as added)."""
    yield list(path)
    for name, command in getattr(group, "commands", {}).items():
        yield from all_commands(command, (*path, name))


COMMANDS = list(all_commands())


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "spark-hub")
def test_help_of_every_command(command):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_the_expected_commands_are_registered():
    assert {c[0] for c in COMMANDS if c} >= {"build-dataset", "validate", "info", "push", "recipes", "env"}


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
