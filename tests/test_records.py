"""Records read back: to/from dict, `read_records` (folder, Parquet, JSONL, Hub), and `validate` of a
dataset folder against its manifest (hashes, row counts, README)."""

import json
import shutil

import pyarrow.parquet as pq
import pytest

from helpers import DATA, read_rows, scripted_recipe
from hub_fixtures import hub_server  # noqa: F401 - a fixture
from spark_hub.config import load_build_config
from spark_hub.errors import SparkHubError
from spark_hub.records import StepRecord, Verification, describe_columns, read_records
from spark_hub.stages import build
from spark_hub.validate import validate_dataset, validate_path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A real v2 build (scripted backend, meta-critique so every verification kind is present)."""
    tmp = tmp_path_factory.mktemp("records")
    recipe = scripted_recipe(tmp)
    config = load_build_config(recipe, ["aggregation.method=hybrid_step",
                                        f"verifier.model={recipe.parent / 'verifier_meta.jsonl'}"],
                               output_dir=str(tmp / "out"))
    build.main(config, progress=False)
    return tmp / "out"


@pytest.fixture
def copy_of(dataset, tmp_path):
    target = tmp_path / "ds"
    shutil.copytree(dataset, target, ignore=shutil.ignore_patterns(".spark"))
    return target


def test_verification_round_trip():
    v = Verification(problem_id="p", solution_index=1, index=2, verifier="m", raw_text="<think>x</think>t", text="t",
                     step_verdicts=[True, None], final_verdict=False, parse_status="missing_step_verdict",
                     expected_steps=2, step_probs=[0.9, None], final_prob=0.25, kind="merged")
    row = v.to_dict()
    assert (row["id"], row["record_id"], row["verification_index"]) == ("p/s1/m2", "p/s1", 2)
    assert Verification.from_dict(row) == v
    assert Verification.from_dict(json.loads(json.dumps(row))) == v


def test_step_record_round_trip_and_derived_columns():
    r = StepRecord(problem_id="p", problem="1+1?", reference="2", solution_index=0, solution="Step 1: 1+1=2\nAnswer: 2",
                   steps=["1+1=2"], step_spans=[[8, 13]], final_answer="2", solution_status="ok", generator="g",
                   verifier="v", method="step_consistency", n_verifications=2, status="ok", labels=[False],
                   final_label=False, votes_correct=[0], votes_incorrect=[2], agreement=[1.0], step_probs=[0.1],
                   final_votes_yes=0, final_votes_no=2, final_prob=0.2, n_parsed=2)
    row = r.to_dict()
    assert (row["id"], row["first_error_step"], row["schema_version"]) == ("p/s0", 0, "2")
    assert list(row) == [c.name for c in StepRecord.COLUMNS]
    assert StepRecord.from_dict(row) == r


def test_describe_columns_covers_every_column():
    cols = describe_columns(StepRecord)
    assert [c["name"] for c in cols] == [c.name for c in StepRecord.COLUMNS]
    assert {"name": "step_spans", "type": "list[list[int]] | None",
            "description": cols[[c["name"] for c in cols].index("step_spans")]["description"]} in cols
    assert all(c["description"] for c in cols)


def test_read_records_from_a_folder(dataset):
    records = read_records(dataset)
    assert records and all(isinstance(r, StepRecord) for r in records)
    assert [r.to_dict() for r in records] == read_rows(dataset)
    with_steps = [r for r in records if r.steps]
    assert with_steps and all(r.step_spans is not None for r in with_steps)
    for r in with_steps:
        assert [r.solution[a:b] for a, b in r.step_spans] == r.steps
    verifications = read_records(dataset, config="verifications")
    assert {v.kind for v in verifications} == {"sample", "critique", "merged"}
    assert [v.to_dict() for v in verifications] == read_rows(dataset, "verifications")


def test_read_records_from_one_parquet_or_jsonl_file(dataset, tmp_path):
    shard = next((dataset / "data").glob("*.parquet"))
    from_parquet = read_records(shard)
    jsonl = tmp_path / "records.jsonl"
    jsonl.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in from_parquet))
    assert read_records(jsonl) == from_parquet
    # v1 rows are migrated on read
    v1 = read_records(DATA / "v1_dataset")
    assert v1 and all(r.step_spans is None and r.step_probs is None for r in v1)


def test_read_records_errors_name_the_file(dataset, tmp_path):
    with pytest.raises(SparkHubError, match="file not found: ./missing.parquet"):
        read_records("./missing.parquet")
    with pytest.raises(SparkHubError, match=r"holds verifications rows, not default rows.*config='verifications'"):
        read_records(next((dataset / "verifications").glob("*.parquet")))
    with pytest.raises(SparkHubError, match="unknown config 'train'"):
        read_records(dataset, config="train")
    bad = tmp_path / "bad.jsonl"
    row = read_rows(dataset)[0]
    bad.write_text(json.dumps(row) + "\n" + json.dumps({**row, "n_parsed": "2"}) + "\n")
    with pytest.raises(SparkHubError, match=r"bad.jsonl:2: \$.n_parsed: '2' is not of type 'integer'"):
        read_records(bad)


def test_read_records_from_the_hub(dataset, hub_server, tmp_path):
    from hub_fixtures import unique_repo
    from spark_hub import hub

    repo_id = unique_repo("records")
    hub.push(dataset, repo_id)
    records = read_records(repo_id)
    assert [r.to_dict() for r in records] == read_rows(dataset)
    assert len(read_records(repo_id, revision="main", config="verifications")) == len(read_rows(dataset, "verifications"))


# ----------------------------------------------------------------------------- validate a folder


def test_a_fresh_build_validates(dataset):
    assert validate_dataset(dataset) == []
    errors, checked = validate_path(dataset)
    assert checked == len(read_rows(dataset)) + len(read_rows(dataset, "verifications"))


def test_validate_names_a_corrupted_shard(copy_of):
    shard = next((copy_of / "data").glob("*.parquet"))
    data = bytearray(shard.read_bytes())
    data[100:164] = bytes(64)  # same size: only the hash can tell
    shard.write_bytes(bytes(data))
    errors = validate_dataset(copy_of)
    assert any(e.startswith(f"{shard}: sha256 ") and "differs from manifest.json" in e for e in errors), errors


def test_validate_names_a_shard_with_a_row_removed(copy_of):
    shard = next((copy_of / "verifications").glob("*.parquet"))
    table = pq.read_table(shard)
    pq.write_table(table.slice(1), shard)
    errors = validate_dataset(copy_of)
    assert any(e.startswith(f"{shard}: size ") for e in errors), errors
    rows = table.num_rows
    assert any(f"{rows - 1} rows ({shard.name}: {rows - 1}), manifest.json statistics say {rows}" in e
               for e in errors), errors


def test_validate_names_missing_and_unlisted_files(copy_of):
    shard = next((copy_of / "data").glob("*.parquet"))
    extra = copy_of / "data" / "train-00009-of-00010.parquet"
    shutil.copy(shard, extra)
    (copy_of / "config.yaml").unlink()
    errors = validate_dataset(copy_of)
    assert f"{copy_of / 'config.yaml'}: listed in manifest.json but missing" in errors
    assert any(e.startswith(f"{extra}: not in the file table") for e in errors), errors


def test_validate_checks_readme_when_the_manifest_lists_it(tmp_path):
    folder = tmp_path / "v1"
    shutil.copytree(DATA / "v1_dataset", folder)
    assert validate_dataset(folder) == []
    (folder / "README.md").write_text((folder / "README.md").read_text().replace("spark-hub", "spark-hub!"))
    errors = validate_dataset(folder)
    assert len(errors) == 1 and errors[0].startswith(f"{folder / 'README.md'}: ") and "manifest.json" in errors[0]


def test_a_v1_dataset_reads_back_from_the_hub_as_v2_records(hub_server, tmp_path):
    from hub_fixtures import unique_repo
    from spark_hub import hub

    repo_id = unique_repo("v1")
    folder = tmp_path / "v1"
    shutil.copytree(DATA / "v1_dataset", folder)
    hub.push(folder, repo_id)
    records = read_records(repo_id)
    assert [r.to_dict() for r in records] == [StepRecord.from_dict(row).to_dict() for row in read_rows(folder)]
    assert all(r.schema_version == "2" and r.step_spans is None for r in records)
    verifications = read_records(repo_id, config="verifications")
    assert {v.kind for v in verifications} == {"sample", "critique", "merged"}
