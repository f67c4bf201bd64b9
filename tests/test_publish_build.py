"""build-dataset and the Hub together: --push, problems from a Hub dataset, download."""

import json

import datasets
from click.testing import CliRunner
from huggingface_hub import HfApi

from helpers import read_rows, scripted_recipe
from hub_fixtures import hub_server, unique_repo  # noqa: F401
from spark_hub.cli import cli
from spark_hub.hub import download


def test_build_push_load_dataset_round_trip(tmp_path, hub_server):  # noqa: F811
    repo = unique_repo("build")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [
        "build-dataset", "--config", str(scripted_recipe(tmp_path)), "--output-dir", str(out), "--no-progress",
        "--push", "--hub-repo", repo,
    ])
    assert result.exit_code == 0, result.output
    cache = tmp_path / "hf-datasets-cache"
    remote = datasets.load_dataset(repo, split="train", cache_dir=str(cache))
    remote_v = datasets.load_dataset(repo, "verifications", split="train", cache_dir=str(cache))
    assert remote.to_list() == read_rows(out)
    assert remote_v.to_list() == read_rows(out, "verifications")
    files = HfApi(endpoint=hub_server.endpoint).list_repo_files(repo, repo_type="dataset")
    assert "manifest.json" in files and not any(f.startswith(".spark") for f in files)
    assert hub_server.token not in (out / "manifest.json").read_text()

    # the same build pushed again is refused without --overwrite, and nothing changes remotely
    before = HfApi(endpoint=hub_server.endpoint).dataset_info(repo).sha
    again = CliRunner().invoke(cli, [
        "build-dataset", "--config", str(scripted_recipe(tmp_path)), "--output-dir", str(out), "--no-progress",
        "--push", "--hub-repo", repo,
    ])
    assert again.exit_code == 2 and "--overwrite" in again.output
    assert HfApi(endpoint=hub_server.endpoint).dataset_info(repo).sha == before

    # download() gives back the artifact with its manifest
    local = download(repo, repo_type="dataset", local_dir=tmp_path / "dl")
    assert json.loads((local / "manifest.json").read_text())["build_key"] == json.loads((out / "manifest.json").read_text())["build_key"]


def test_problems_from_a_hub_dataset_pin_the_revision(tmp_path, hub_server):  # noqa: F811
    repo = unique_repo("problems")
    api = HfApi(endpoint=hub_server.endpoint)
    api.create_repo(repo, repo_type="dataset")
    src = tmp_path / "problems_small.jsonl"
    scripted = scripted_recipe(tmp_path)
    commit = api.upload_file(path_or_fileobj=str(src), path_in_repo="train.jsonl", repo_id=repo, repo_type="dataset")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [
        "build-dataset", "--config", str(scripted), "--problems", repo, "--output-dir", str(out), "--no-progress",
    ])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"]["problems"]["source"] == f"hf://datasets/{repo}"
    assert manifest["inputs"]["problems"]["revision"] == commit.oid
    assert len(read_rows(out)) == 6
