"""build-dataset and the Hub together: --push, problems from a Hub dataset, download."""

import hashlib
import json

import datasets
from click.testing import CliRunner
from huggingface_hub import HfApi

from helpers import read_rows, scripted_recipe
from hub_fixtures import hub_server, unique_repo  # noqa: F401
from spark_hub.cli import cli
from spark_hub.cards import render_card
from spark_hub.hub import download


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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

    # the pushed card is rendered from the manifest, which does not list it; every file it lists is
    # on the Hub byte for byte
    manifest = json.loads((out / "manifest.json").read_text())
    assert "README.md" not in manifest["files"]
    remote = hub_server.files(repo, "dataset")
    assert {path: sha256_bytes(remote[path]) for path in manifest["files"]} == {
        path: entry["sha256"] for path, entry in manifest["files"].items()}
    assert remote["README.md"].decode() == render_card(manifest, repo_id=repo)

    # the same build pushed again is already up to date: exit 0, nothing changes remotely
    before = HfApi(endpoint=hub_server.endpoint).dataset_info(repo).sha
    again = CliRunner().invoke(cli, [
        "build-dataset", "--config", str(scripted_recipe(tmp_path)), "--output-dir", str(out), "--no-progress",
        "--push", "--hub-repo", repo,
    ])
    assert again.exit_code == 0, again.output
    assert HfApi(endpoint=hub_server.endpoint).dataset_info(repo).sha == before
    assert len(hub_server.history(repo, "dataset")) == 2

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
