"""spark_hub.inputs: bad input files, duplicate solutions, Hub problem sets (configs, splits,
retries), and what a missing path means. Hub tests use the loopback server (tests/hub_server.py)."""

from __future__ import annotations

import io
import json
import logging
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from helpers import scripted_recipe
from hub_fixtures import hub_server, unique_repo  # noqa: F401 - `hub_server` is a fixture
from spark_hub import inputs
from spark_hub.errors import SparkHubError
from spark_hub.inputs import (
    check_input_path,
    hub_dataset_id,
    load_hub_problems,
    load_inputs,
    load_problems,
    looks_like_local_path,
    read_solutions,
)

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def solution(pid, problem, steps, final="1", **extra):
    return json.dumps({"id": pid, "problem": problem, "steps": steps, "final_answer": final, **extra}) + "\n"


def build_config(**kw):
    """The fields of a BuildConfig that `load_inputs` reads."""
    base = dict(problems=None, solutions=None, problem_field="problem", answer_field="answer", id_field=None,
                limit=None, problems_revision=None, problems_split="train")
    return SimpleNamespace(**{**base, **kw})


# ------------------------------------------------------------------------------------------------
# Encoding and file kinds (issue 9 #5, #7)
# ------------------------------------------------------------------------------------------------
def test_latin1_byte_names_line_and_byte_offset(tmp_path):
    data = b'{"problem": "1+1?"}\n{"problem": "caf\xe9 prices?"}\n'
    path = write(tmp_path / "p.jsonl", data)
    with pytest.raises(SparkHubError) as info:
        load_problems(path)
    assert data.index(b"\xe9") == 36
    assert str(info.value) == (f"{path}:2: not valid UTF-8: byte 0xe9 at byte offset 36 (column 17) "
                               "(save the file as UTF-8, e.g. iconv -f latin1 -t utf-8)")


def test_latin1_in_json_and_solutions(tmp_path):
    path = write(tmp_path / "p.json", b'[\n {"problem": "a"},\n {"problem": "\xff"}\n]\n')
    with pytest.raises(SparkHubError, match=rf"^{path}:3: not valid UTF-8: byte 0xff at byte offset 35 \(column 15\)"):
        load_problems(path)
    sols = write(tmp_path / "s.jsonl", solution("a", "x", ["s"]).encode() + b'{"id": "b", "problem": "\x80"}\n')
    with pytest.raises(SparkHubError, match=rf"^{sols}:2: not valid UTF-8: byte 0x80"):
        read_solutions(sols)


def test_byte_order_mark_is_accepted(tmp_path):
    path = write(tmp_path / "p.jsonl", "\ufeff" + '{"problem": "1+1?"}\n')
    assert [p.problem for p in load_problems(path)] == ["1+1?"]


def _fifo(tmp_path, name="p.jsonl"):
    path = tmp_path / name
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("field", ["problems", "solutions"])
def test_fifo_is_refused_at_once(tmp_path, field):
    fifo = _fifo(tmp_path)
    result = {}

    def run():
        try:
            load_inputs(build_config(**{field: str(fifo)}))
        except SparkHubError as e:
            result["error"] = str(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():  # unblock the reader so the test process can exit
        with open(fifo, "w"):
            pass
        pytest.fail("reading a FIFO blocked")
    assert result["error"] == (f"{field} {fifo} is a FIFO (named pipe), not a file "
                               "(pass a .jsonl, .json or .parquet file (or a folder of them))")


def test_devices_and_fifos_inside_folders_are_refused(tmp_path):
    with pytest.raises(SparkHubError, match="is a character device"):
        check_input_path("/dev/null", "problems")
    folder = tmp_path / "in"
    folder.mkdir()
    write(folder / "a.jsonl", '{"problem": "x"}\n')
    _fifo(folder, "b.jsonl")
    with pytest.raises(SparkHubError, match=r"b\.jsonl is a FIFO"):
        load_inputs(build_config(problems=str(folder)))


# ------------------------------------------------------------------------------------------------
# Duplicate solution rows (issue 9 #4)
# ------------------------------------------------------------------------------------------------
def test_same_id_different_problem_names_both_lines(tmp_path):
    path = write(tmp_path / "s.jsonl", solution("p1", "What is 2+2?", ["2+2=4"], "4")
                 + solution("p2", "What is 3+3?", ["6"], "6")
                 + solution("p1", "What is 5+5?", ["5+5=10"], "10"))
    with pytest.raises(SparkHubError) as info:
        read_solutions(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: problem id 'p1' is used for two different problems: "
                              f"field 'problem' differs from the row at {path}:1")
    assert "\n" not in message


def test_same_id_different_reference_is_an_error(tmp_path):
    path = write(tmp_path / "s.jsonl", solution("p1", "Q", ["a"], answer="4") + solution("p1", "Q", ["b"], answer="5"))
    with pytest.raises(SparkHubError, match=rf"{path}:2: .*field 'answer' differs from the row at {path}:1"):
        read_solutions(path)


def test_identical_rows_are_dropped_and_counted(tmp_path, caplog):
    path = write(tmp_path / "s.jsonl", solution("p1", "Q", ["a", "b"]) + solution("p1", "Q", ["a", "c"])
                 + solution("p1", "Q", ["a", "b"]) + solution("p2", "R", ["a", "b"]) + solution("p2", "R", [" a", "b "]))
    result = read_solutions(path)
    assert result.duplicates_dropped == 2
    assert [(p.id, [r["steps"] for r in rows]) for p, rows in result.groups] == [
        ("p1", [["a", "b"], ["a", "c"]]), ("p2", [["a", "b"]])]
    assert "2 solution row(s) repeated an earlier row" in caplog.text
    built = load_inputs(build_config(solutions=str(path)))
    assert built.duplicates_dropped == 2 and built.provenance["solutions"]["rows"] == 3


def test_rows_of_one_problem_with_different_solutions_are_kept(tmp_path):
    """The normal ProcessBench/PRM800K shape: several solutions of one problem."""
    path = write(tmp_path / "s.jsonl", "".join(solution("p", "Q", [f"step {i}"]) for i in range(3)))
    result = read_solutions(path)
    assert result.duplicates_dropped == 0 and len(result.groups[0][1]) == 3


# ------------------------------------------------------------------------------------------------
# Local path or Hub id (issue 8 §6.3)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, local", [
    ("openai/gsm8k", False), ("HuggingFaceH4/MATH-500", False), ("AI-MO/NuminaMath-1.5", False),
    ("hf://datasets/openai/gsm8k", False), ("data/gsm8k-demo.jsonl", True), ("./gsm8k", True),
    ("../org/name", True), ("/abs/org", True), ("a/b/c", True), ("problems", True), ("org/x.parquet", True),
    ("~/x", True), ("org\\name", True), ("org/na me", True),
])
def test_what_looks_like_a_local_path(text, local):
    assert looks_like_local_path(text) is local


def test_missing_file_shaped_path_is_file_not_found_never_a_download(tmp_path, monkeypatch):
    def no_download(*a, **k):  # pragma: no cover - the point is that it is never called
        raise AssertionError("tried the Hub")

    monkeypatch.setattr(inputs, "load_hub_problems", no_download)
    monkeypatch.chdir(tmp_path)
    for text in ("data/gsm8k-demo.jsonl", "./org/name", "nested/dir/file"):
        with pytest.raises(SparkHubError) as info:
            load_inputs(build_config(problems=text))
        assert str(info.value) == f"problems file not found: {Path(text)}"
    # an existing local folder named like a Hub id is local
    (tmp_path / "org").mkdir()
    write(tmp_path / "org" / "name", "")
    assert hub_dataset_id("org/name") is None and hub_dataset_id("org/other") == "org/other"


def test_cli_missing_demo_data_is_file_not_found(tmp_path):
    from spark_hub.cli import cli

    recipe = scripted_recipe(tmp_path)
    result = CliRunner().invoke(cli, ["build-dataset", "--config", str(recipe), "--output-dir", str(tmp_path / "out"),
                                      "--no-progress", "--problems", "data/no-such-demo.jsonl"])
    assert result.exit_code == 2, result.output
    assert "problems file not found: data/no-such-demo.jsonl" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------
# Hub problem sets (issue 8 §6.1, issue 9 #12)
# ------------------------------------------------------------------------------------------------
GSM8K_CARD = """---
configs:
- config_name: main
  data_files:
  - split: train
    path: main/train-*
  - split: test
    path: main/test-*
- config_name: socratic
  data_files:
  - split: train
    path: socratic/train-*
  - split: test
    path: socratic/test-*
---
# gsm8k-shaped test repo
"""
SIZES = {"train": 20, "test": 10}


def _parquet_bytes(rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


@pytest.fixture
def gsm8k_repo(hub_server):  # noqa: F811
    """A dataset repo shaped like openai/gsm8k: configs main + socratic, splits train/test, 60 rows."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=hub_server.endpoint, token=hub_server.token)
    repo_id = unique_repo("gsm8k")
    api.create_repo(repo_id, repo_type="dataset")
    ops = [CommitOperationAdd("README.md", GSM8K_CARD.encode())]
    for config in ("main", "socratic"):
        for split, size in SIZES.items():
            rows = [{"question": f"{config}/{split} question {i}: what is {i}+1?",
                     "answer": f"{i}+1={i + 1}\n#### {i + 1}"} for i in range(size)]
            ops.append(CommitOperationAdd(f"{config}/{split}-00000-of-00001.parquet", _parquet_bytes(rows)))
    api.create_commit(repo_id, ops, commit_message="gsm8k-shaped", repo_type="dataset")
    sha = api.dataset_info(repo_id).sha
    return repo_id, sha


FIELDS = dict(problem_field="question", answer_field="answer")


def test_hub_problems_read_one_config_and_one_split(gsm8k_repo, tmp_path, monkeypatch):
    repo_id, sha = gsm8k_repo
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    config = build_config(problems=repo_id, problems_split="test", problems_config="main", **FIELDS)
    got = load_inputs(config)
    assert len(got.problems) == SIZES["test"]
    assert {p.problem.split(" ")[0] for p in got.problems} == {"main/test"}
    assert got.problems[3].reference == "4"
    prov = got.provenance["problems"]
    assert prov["revision"] == sha and len(sha) == 40
    assert (prov["source"], prov["config"], prov["split"], prov["rows"]) == (f"hf://datasets/{repo_id}", "main", "test", 10)
    # another split or config is other content, so another build key
    other = load_inputs(build_config(problems=repo_id, problems_split="test", problems_config="socratic", **FIELDS))
    assert {p.problem.split(" ")[0] for p in other.problems} == {"socratic/test"}
    assert other.provenance["problems"]["sha256"] != prov["sha256"]


def test_hub_problems_need_a_config_when_there_are_several(gsm8k_repo):
    repo_id, sha = gsm8k_repo
    with pytest.raises(SparkHubError) as info:
        load_inputs(build_config(problems=repo_id, problems_split="test", **FIELDS))
    assert str(info.value) == (f"{repo_id}@{sha[:8]}: {repo_id} has 2 configs (main, socratic); choose one "
                               "(--set problems_config=main)")
    with pytest.raises(SparkHubError, match=r"no config 'Main' in .* \(configs: main, socratic\)"):
        load_hub_problems(repo_id, config_name="Main", split="test", **FIELDS)
    with pytest.raises(SparkHubError, match=r"no split 'validation' in .* config 'main' \(splits: train, test\) "
                                            r"\(--set problems_split=train\)"):
        load_hub_problems(repo_id, config_name="main", split="validation", **FIELDS)


def test_hub_problems_pin_the_revision(gsm8k_repo, hub_server):  # noqa: F811
    from huggingface_hub import CommitOperationAdd, HfApi

    repo_id, first = gsm8k_repo
    api = HfApi(endpoint=hub_server.endpoint, token=hub_server.token)
    rows = [{"question": "new question", "answer": "#### 1"}]
    api.create_commit(repo_id, [CommitOperationAdd("main/test-00000-of-00001.parquet", _parquet_bytes(rows))],
                      commit_message="replace", repo_type="dataset")
    latest, prov = load_hub_problems(repo_id, config_name="main", split="test", **FIELDS)
    assert [p.problem for p in latest] == ["new question"] and prov["revision"] != first
    pinned, prov = load_hub_problems(repo_id, revision=first, config_name="main", split="test", **FIELDS)
    assert len(pinned) == SIZES["test"] and prov["revision"] == first
    with pytest.raises(SparkHubError, match=rf"revision 'nope' not found in dataset {repo_id}"):
        load_hub_problems(repo_id, revision="nope", config_name="main", split="test", **FIELDS)


def test_unknown_hub_dataset_is_one_line(hub_server):  # noqa: F811
    with pytest.raises(SparkHubError, match=r"^no dataset spark-tester/nothing-here on the Hub .*no local file"):
        load_inputs(build_config(problems="spark-tester/nothing-here"))


def test_hub_download_retries_transient_errors(gsm8k_repo, hub_server, monkeypatch, caplog):  # noqa: F811
    from spark_hub import hub

    monkeypatch.setattr(hub, "DEFAULT_RETRY", hub.RetryPolicy(attempts=4, base_delay=0.001, max_delay=0.01))
    repo_id, sha = gsm8k_repo
    hub_server.fail_next(2, status=503, path_contains=f"/api/datasets/{repo_id}")
    with caplog.at_level(logging.WARNING):
        problems, prov = load_hub_problems(repo_id, config_name="main", split="test", **FIELDS)
    assert len(problems) == 10 and prov["revision"] == sha
    assert "retrying" in caplog.text and f"download of dataset {repo_id}" in caplog.text


def test_hub_download_that_keeps_failing_says_download(gsm8k_repo, hub_server, monkeypatch):  # noqa: F811
    from spark_hub import hub

    monkeypatch.setattr(hub, "DEFAULT_RETRY", hub.RetryPolicy(attempts=3, base_delay=0.001, max_delay=0.01))
    repo_id, _ = gsm8k_repo
    hub_server.fail_next(100, status=503, path_contains=f"/api/datasets/{repo_id}")
    with pytest.raises(SparkHubError) as info:
        load_hub_problems(repo_id, config_name="main", split="test", **FIELDS)
    message = str(info.value)
    assert message.startswith(f"download of dataset {repo_id}@main failed after 3 attempt(s): ")
    assert "committed" not in message and "\n" not in message
    assert len(hub_server.requests_to(f"/api/datasets/{repo_id}")) >= 3


# ------------------------------------------------------------------------------------------------
# The bad-input corpus through the CLI: one line naming file/line/field, exit 2, nothing written
# ------------------------------------------------------------------------------------------------
def _lines(d: Path, name: str, text: str | bytes) -> str:
    return str(write(d / name, text))


CORPUS = {
    "latin1-problems": (lambda d: ["--problems", _lines(d, "p.jsonl", b'{"problem": "caf\xe9"}\n')],
                        "p.jsonl:1: not valid UTF-8: byte 0xe9 at byte offset 16"),
    "latin1-json": (lambda d: ["--problems", _lines(d, "p.json", b'[{"problem": "\xe9"}]')],
                    "p.json:1: not valid UTF-8: byte 0xe9 at byte offset 14"),
    "latin1-solutions": (lambda d: ["--solutions", _lines(d, "s.jsonl", b'{"problem": "x", "steps": ["\xe9"]}\n')],
                         "s.jsonl:1: not valid UTF-8: byte 0xe9 at byte offset 28"),
    "fifo-problems": (lambda d: ["--problems", str(_fifo(d))], "p.jsonl is a FIFO (named pipe), not a file"),
    "fifo-solutions": (lambda d: ["--solutions", str(_fifo(d, "s.jsonl"))], "s.jsonl is a FIFO (named pipe), not a file"),
    "device-problems": (lambda d: ["--problems", "/dev/null"], "problems /dev/null is a character device"),
    "duplicate-id-other-problem": (
        lambda d: ["--solutions", _lines(d, "s.jsonl", solution("p1", "Q1", ["a"]) + solution("p1", "Q2", ["b"]))],
        "s.jsonl:2: problem id 'p1' is used for two different problems: field 'problem' differs from the row at"),
    "duplicate-problem-id": (
        lambda d: ["--problems", _lines(d, "p.jsonl", '{"id": 1, "problem": "a"}\n{"id": 1, "problem": "b"}\n')],
        "p.jsonl:2: duplicate problem id '1'"),
    "steps-not-a-list": (lambda d: ["--solutions", _lines(d, "s.jsonl", '{"problem": "x", "steps": "one"}\n')],
                         "s.jsonl:1: field 'steps' must be a non-empty list of strings"),
    "json-not-an-object": (lambda d: ["--problems", _lines(d, "p.jsonl", '["a"]\n')],
                           "p.jsonl:1: expected a JSON object, got list"),
    "unsupported-suffix": (lambda d: ["--problems", _lines(d, "p.csv", "problem\nx\n")], "unsupported input format '.csv'"),
    "missing-file-shaped": (lambda d: ["--problems", "data/no-such.jsonl"], "problems file not found: data/no-such.jsonl"),
    "missing-solutions": (lambda d: ["--solutions", str(d / "nope.jsonl")], "solutions file not found"),
    "empty-folder": (lambda d: ["--problems", _mkdir(d / "in")], "no .jsonl or .parquet files in folder"),
    "corrupt-parquet": (lambda d: ["--problems", _lines(d, "p.parquet", b"PAR1 this is not parquet")],
                        "p.parquet: not a readable Parquet file"),
    "json-not-a-list": (lambda d: ["--problems", _lines(d, "p.json", '{"problem": "x"}')],
                        "p.json: a .json input must hold a list of objects"),
    "json-truncated": (lambda d: ["--problems", _lines(d, "p.json", '[\n{"problem": "x"},\n{"problem": ')],
                       "p.json:3: invalid JSON"),
}


def _mkdir(path: Path) -> str:
    path.mkdir()
    return str(path)


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_bad_input_corpus_one_line_exit_2_nothing_written(tmp_path, case):
    from spark_hub.cli import cli

    setup, expected = CORPUS[case]
    recipe = scripted_recipe(tmp_path)
    args = setup(tmp_path)
    out = tmp_path / "out"
    result = {}

    def run():
        result["r"] = CliRunner().invoke(cli, ["build-dataset", "--config", str(recipe), "--output-dir", str(out),
                                               "--no-progress", *args])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    if thread.is_alive():
        for fifo in tmp_path.glob("*.jsonl"):
            if fifo.is_fifo():
                with open(fifo, "w"):
                    pass
        thread.join(10)
        pytest.fail("the build blocked on its input")
    r = result["r"]
    message = r.output.strip()
    assert r.exit_code == 2, message
    assert expected in message
    assert len(message.splitlines()) == 1, message
    assert not out.exists()


def _scripted_recipe(tmp_path: Path) -> Path:
    """Catch-all scripted generator and verifier: one step, answer 1, verified correct."""
    gen = write(tmp_path / "gen.jsonl", json.dumps({"completions": ["Step 1: Add one.\nAnswer: 1"]}) + "\n")
    ver = write(tmp_path / "ver.jsonl", json.dumps({"completions": [
        "## Step 1: Add\nFine.\n**This step is correct.**\n\nVerification: Is the answer correct (Yes/No)? Yes"]}) + "\n")
    return write(tmp_path / "recipe.yaml", f"generator:\n  backend: scripted\n  model: {gen}\n  n: 1\n"
                                           f"verifier:\n  backend: scripted\n  model: {ver}\n  n: 2\n"
                                           "problem_field: question\n")


def test_cli_builds_from_one_config_and_one_split_of_a_hub_dataset(gsm8k_repo, tmp_path):
    """issue 8 §6.1: `--problems ORG/NAME --set problems_split=test` on a gsm8k-shaped repo used to
    read all 60 rows of both configs and both splits."""
    from helpers import read_rows
    from spark_hub.cli import cli

    repo_id, sha = gsm8k_repo
    out = tmp_path / "out"
    base = ["build-dataset", "--config", str(_scripted_recipe(tmp_path)), "--problems", repo_id,
            "--set", "problems_split=test", "--output-dir", str(out), "--no-progress"]
    result = CliRunner().invoke(cli, base)
    assert result.exit_code == 2, result.output
    assert result.output.strip().endswith("has 2 configs (main, socratic); choose one (--set problems_config=main)")
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()

    result = CliRunner().invoke(cli, [*base, "--problems-config", "socratic", "--problems-split", "test"])
    assert result.exit_code == 0, result.output
    rows = read_rows(out)
    assert len({r["problem_id"] for r in rows}) == SIZES["test"]
    assert {r["problem"].split(" ")[0] for r in rows} == {"socratic/test"}
    manifest = json.loads((out / "manifest.json").read_text())
    source = manifest["inputs"]["problems"]
    assert (source["revision"], source["config"], source["split"]) == (sha, "socratic", "test")


def test_contamination_benchmarks_are_checked_like_inputs(tmp_path):
    from spark_hub.records import Problem
    from spark_hub.stages.contamination import ContaminationConfig, check

    problems = [Problem(id="a", problem="one two three four five six seven eight nine", reference=None, source="t")]
    with pytest.raises(SparkHubError, match=r"contamination benchmark .*bench\.jsonl is a FIFO"):
        check(problems, ContaminationConfig(benchmarks=[str(_fifo(tmp_path, "bench.jsonl"))]))
    folder = tmp_path / "bench"
    folder.mkdir()
    write(folder / "b.jsonl", '{"problem": "one two three four five six seven eight nine"}\n')
    report = check(problems, ContaminationConfig(benchmarks=[str(folder)]))
    [entry] = report["benchmarks"].values()
    assert report["matched"] == 1 and len(entry["sha256"]) == 64


def test_build_reports_dropped_duplicate_solutions(tmp_path):
    from spark_hub.cli import cli

    sols = write(tmp_path / "s.jsonl", solution("p1", "Q", ["a"]) + solution("p1", "Q", ["a"]) + solution("p2", "R", ["b"]))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["build-dataset", "--config", str(_scripted_recipe(tmp_path)), "--solutions", str(sols),
                                      "--set", "problem_field=problem", "--output-dir", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["statistics"]["inputs"]["duplicate_solution_rows_dropped"] == 1
    assert manifest["statistics"]["solutions"] == 2


def test_rows_without_ids_must_agree_on_the_reference(tmp_path):
    rows = [{"problem": "Q", "steps": ["a"], "answer": "1"}, {"problem": "Q", "steps": ["b"], "answer": "2"}]
    path = write(tmp_path / "s.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(SparkHubError, match=rf"^{path}:2: the same problem has another 'answer' in the row at {path}:1"):
        read_solutions(path)
