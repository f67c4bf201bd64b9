"""Publishing with provenance: spark_hub.hub, spark_hub.cards and `spark-hub push`.

Everything runs against the loopback Hub in ``tests/hub_server.py`` with the unmodified
`huggingface_hub` and `datasets` clients; no network, no real token.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import os
import re
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from hub_fixtures import (  # noqa: F401 - `hub_server` is a fixture
    DATASET_CONFIG,
    built_dataset,
    hub_server,
    make_dataset_folder,
    make_model_folder,
    rewrite_manifest,
    tree_bytes,
    unique_repo,
)
from spark_hub import cards, hub
from spark_hub.cli.push import push as push_command
from spark_hub.errors import SparkHubError
from spark_hub.manifest import new_manifest, read_manifest

# huggingface_hub's LFS upload passes a file object as `data=`; httpx2 warns about it (client-side only).
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

FAST = hub.RetryPolicy(attempts=4, base_delay=0.001, max_delay=0.01)
DATASET_FILES = {
    "README.md", "manifest.json", "config.yaml", cards.AGREEMENT_PLOT_NAME,
    "data/train-00000-of-00001.parquet", "verifications/train-00000-of-00001.parquet",
}


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    monkeypatch.setattr(hub, "DEFAULT_RETRY", FAST)


@pytest.fixture(scope="module")
def model_template(tmp_path_factory):
    """One tiny model folder per module (building it imports torch); tests copy it."""
    return make_model_folder(tmp_path_factory.mktemp("model") / "prm")


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _api(server):
    from huggingface_hub import HfApi

    return HfApi(endpoint=server.endpoint)


def _rows(ds):
    return ds.to_list()


# ------------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------------
def test_push_dataset_then_load_dataset(hub_server, tmp_path):
    import datasets

    repo_id = unique_repo("ds")
    folder = make_dataset_folder(tmp_path / "out", repo_id=repo_id)

    result = hub.push(folder, repo_id)

    assert (result.repo_id, result.repo_type, result.revision) == (repo_id, "dataset", "main")
    assert {f.path for f in result.files} == DATASET_FILES
    history = hub_server.history(repo_id, "dataset")
    assert len(history) == 2, "one commit for the whole folder (plus the repo's initial commit)"
    assert history[0].oid == result.commit_sha
    remote = hub_server.files(repo_id, "dataset")
    assert set(remote) == DATASET_FILES | {".gitattributes"}
    assert all(remote[path] == (folder / path).read_bytes() for path in DATASET_FILES)
    assert hub_server.repo(repo_id, "dataset").resolve("main").files["data/train-00000-of-00001.parquet"].lfs

    # A private datasets cache: datasets keys local folders by name and mtimes, which can collide
    # with other tests' "out" folders in the shared cache.
    cache = str(tmp_path / "datasets-cache")
    for name in ("default", "verifications"):
        local = datasets.load_dataset(str(folder), name, split="train", cache_dir=cache)
        remote_ds = datasets.load_dataset(repo_id, name, split="train", cache_dir=cache)
        assert len(local) > 0
        assert _rows(remote_ds) == _rows(local)
    default = datasets.load_dataset(repo_id, split="train", cache_dir=cache)
    assert _rows(default) == _rows(datasets.load_dataset(str(folder), split="train", cache_dir=cache))


def test_push_model_then_download(hub_server, tmp_path, model_template):
    from huggingface_hub import ModelCard

    repo_id = unique_repo("prm")
    folder = _copy(model_template, tmp_path / "prm")

    result = hub.push(folder, repo_id, tag="v1.0")

    assert result.repo_type == "model" and result.tag == "v1.0"
    assert hub_server.repo(repo_id).tags["v1.0"] == result.commit_sha
    assert hub_server.repo(repo_id).resolve("main").files["model.safetensors"].lfs
    local = hub.download(repo_id, local_dir=tmp_path / "downloaded")
    expected = {k: v for k, v in tree_bytes(folder).items() if not k.startswith(".spark/")}
    # The local card was rendered without a repo id; the pushed one is rendered for the repo.
    assert cards.REPO_PLACEHOLDER.encode() in expected["README.md"]
    expected["README.md"] = cards.render_card(read_manifest(folder), repo_id=repo_id).encode()
    got = {k: v for k, v in tree_bytes(local).items() if not k.startswith(".cache/") and k != ".gitattributes"}
    assert got == expected, "downloaded files are byte-identical to the pushed folder"
    assert f'load_prm("{repo_id}")' in result.card
    assert read_manifest(local)["kind"] == "prm"
    card = ModelCard.load(local / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    # Into the cache, repo type found on its own, at the tag.
    cached = hub.download(repo_id, revision="v1.0")
    assert (cached / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


def test_checkpoint_pushes_run_in_background_on_step_branches(hub_server, tmp_path, model_template):
    repo_id = unique_repo("ckpt")
    folder = _copy(model_template, tmp_path / "checkpoint")
    hub_server.delay_next(1, seconds=1.0, path_contains="/api/repos/create")

    start = time.monotonic()
    first = hub.push_checkpoint_async(folder, repo_id, step=10)
    returned_after = time.monotonic() - start
    second = hub.push_checkpoint_async(folder, repo_id, step=20)

    assert isinstance(first, concurrent.futures.Future)
    assert returned_after < 0.5 and not first.done(), "the caller is not blocked by the upload"
    results = [first.result(timeout=30), second.result(timeout=30)]
    assert [r.revision for r in results] == ["step-000010", "step-000020"]
    refs = _api(hub_server).list_repo_refs(repo_id)
    assert {b.name for b in refs.branches} == {"main", "step-000010", "step-000020"}
    assert set(hub_server.files(repo_id)) == {".gitattributes"}, "main is untouched"
    assert "model.safetensors" in hub_server.files(repo_id, revision="step-000010")
    assert hub.tag_release(repo_id, "best", "step-000020") == results[1].commit_sha
    assert hub_server.repo(repo_id).tags["best"] == results[1].commit_sha


# ------------------------------------------------------------------------------------------------
# Guards
# ------------------------------------------------------------------------------------------------
def test_an_identical_push_is_up_to_date_and_a_different_one_needs_overwrite(hub_server, tmp_path):
    repo_id = unique_repo("ds")
    folder = make_dataset_folder(tmp_path / "out", repo_id=repo_id)
    first = hub.push(folder, repo_id, revision="run-1")

    # The same artifact again (e.g. a re-run after a push killed once its commit had landed):
    # success, nothing committed.
    again = hub.push(folder, repo_id, revision="run-1")
    cli = CliRunner().invoke(push_command, [str(folder), repo_id, "--revision", "run-1"])
    assert again.up_to_date and again.commit_sha == first.commit_sha
    assert "already up to date" in again.summary() and "\n" not in again.summary()
    assert cli.exit_code == 0, cli.output
    assert len(hub_server.history(repo_id, "dataset", "run-1")) == 2, "no new commit"

    # A changed artifact (plot removed) is refused without --overwrite, with one line.
    (folder / cards.AGREEMENT_PLOT_NAME).unlink()
    rewrite_manifest(folder)
    with pytest.raises(SparkHubError) as refused:
        hub.push(folder, repo_id, revision="run-1")
    message = str(refused.value)
    assert "--overwrite" in message and "different spark-hub artifact" in message and "\n" not in message
    assert "3 file(s) differ" in message  # the manifest, its card, and the plot only on the remote
    cli = CliRunner().invoke(push_command, [str(folder), repo_id, "--revision", "run-1"])
    assert cli.exit_code == 2
    assert cli.stderr.count("\n") == 1 and "--overwrite" in cli.stderr
    assert len(hub_server.history(repo_id, "dataset", "run-1")) == 2

    # ... and replaces the old one with it, the stale file going away.
    result = hub.push(folder, repo_id, revision="run-1", overwrite=True)

    assert result.deleted == [cards.AGREEMENT_PLOT_NAME] and not result.up_to_date
    assert len(hub_server.history(repo_id, "dataset", "run-1")) == 3
    remote = hub_server.files(repo_id, "dataset", "run-1")
    assert cards.AGREEMENT_PLOT_NAME not in remote
    assert remote["README.md"].decode() == result.card, "the card was rendered from the manifest"
    assert set(hub_server.files(repo_id, "dataset")) == {".gitattributes"}, "main was never touched"


def _writes(server) -> list:
    """Requests that could change the Hub (everything but reads)."""
    return [r for r in server.requests if r.method not in ("GET", "HEAD")]


def test_dry_run_writes_nothing_and_shows_files_and_card(hub_server, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="spark_hub")
    repo_id = unique_repo("ds")
    folder = make_dataset_folder(tmp_path / "out", repo_id=repo_id)
    hub_server.clear_log()

    result = hub.push(folder, repo_id, dry_run=True)
    cli = CliRunner().invoke(push_command, [str(folder), repo_id, "--dry-run", "--revision", "auto"])

    assert _writes(hub_server) == [], "a dry run only reads"
    assert result.dry_run and result.commit_sha is None and result.remote_checked and result.new_repo
    assert not result.new_branch and "remote:   create the repo, commit the files below" in result.render()
    assert {f.path: f.size for f in result.files} == {p: (folder / p).stat().st_size for p in DATASET_FILES}
    assert cli.exit_code == 0, cli.output
    for text in (result.render(), caplog.text, cli.output):
        assert all(path in text for path in DATASET_FILES)
        assert "config_name: verifications" in text and "## Provenance" in text
    assert f"revision: {hub.default_revision(read_manifest(folder)['config'])}" in cli.output

    # The pushed card is rendered for the target repo, whatever the local copy says.
    unnamed = make_dataset_folder(tmp_path / "unnamed")
    assert cards.REPO_PLACEHOLDER in (unnamed / "README.md").read_text()
    plan = hub.push(unnamed, repo_id, dry_run=True)
    assert f'load_dataset("{repo_id}", "verifications"' in plan.card and cards.REPO_PLACEHOLDER not in plan.card
    assert next(f for f in plan.files if f.path == "README.md").content == plan.card.encode()

    # Without a README the card is rendered from the manifest (and nothing is written locally).
    (folder / "README.md").unlink()
    before = tree_bytes(folder)
    plan = hub.push(folder, repo_id, dry_run=True)
    assert "README.md" in {f.path for f in plan.files} and plan.card.startswith("---\n")
    assert tree_bytes(folder) == before
    assert _writes(hub_server) == []


def test_dry_run_checks_what_the_push_would_check(hub_server, tmp_path, monkeypatch):
    repo_id = unique_repo("ds")
    folder = make_dataset_folder(tmp_path / "out")
    pushed = hub.push(folder, repo_id)
    hub_server.clear_log()

    # Already there: the dry run says so.
    plan = hub.push(folder, repo_id, dry_run=True)
    assert plan.up_to_date and plan.commit_sha == pushed.commit_sha
    assert "already up to date" in plan.render() and "already up to date" in plan.summary()
    cli = CliRunner().invoke(push_command, [str(folder), repo_id, "--dry-run"])
    assert cli.exit_code == 0 and "already up to date" in cli.output

    # A different artifact on the branch: the dry run refuses like the push would.
    (folder / cards.AGREEMENT_PLOT_NAME).unlink()
    rewrite_manifest(folder)
    with pytest.raises(SparkHubError, match="different spark-hub artifact.*--overwrite"):
        hub.push(folder, repo_id, dry_run=True)
    plan = hub.push(folder, repo_id, dry_run=True, overwrite=True)
    assert plan.deleted == [cards.AGREEMENT_PLOT_NAME] and "to delete on the remote" in plan.render()
    assert _writes(hub_server) == []

    # No token: refused before any request, by the dry run too.
    monkeypatch.delenv("HF_TOKEN")
    hub_server.clear_log()
    for dry_run in (True, False):
        with pytest.raises(SparkHubError, match="no Hugging Face token.*HF_TOKEN"):
            hub.push(folder, repo_id, dry_run=dry_run, overwrite=True)
    cli = CliRunner().invoke(push_command, [str(folder), repo_id, "--dry-run"])
    assert cli.exit_code == 2 and cli.stderr.count("\n") == 1 and "no Hugging Face token" in cli.stderr
    assert hub_server.requests == []


def test_auto_revision_with_a_tag_checks_everything_before_writing(hub_server, tmp_path):
    repo_id = unique_repo("ds")
    folder = make_dataset_folder(tmp_path / "out")
    first = hub.push(folder, repo_id, tag="v0.1")
    api = _api(hub_server)
    auto = hub.default_revision(read_manifest(folder)["config"])

    # The same artifact on a new branch with the same tag: the branch points at the same commit,
    # the tag is already right, exit 0.
    cli = CliRunner().invoke(push_command, [str(folder), repo_id, "--revision", "auto", "--tag", "v0.1"])
    assert cli.exit_code == 0, cli.output
    refs = api.list_repo_refs(repo_id, repo_type="dataset")
    assert {b.name: b.target_commit for b in refs.branches} == {"main": first.commit_sha, auto: first.commit_sha}
    assert hub_server.repo(repo_id, "dataset").tags["v0.1"] == first.commit_sha

    # A different artifact with a tag that is taken: refused before the branch is created.
    other = make_dataset_folder(tmp_path / "other", config_update={"seed": 7})
    other_auto = hub.default_revision(read_manifest(other)["config"])
    assert other_auto != auto
    hub_server.clear_log()
    cli = CliRunner().invoke(push_command, [str(other), repo_id, "--revision", "auto", "--tag", "v0.1"])
    assert cli.exit_code == 2 and "tag 'v0.1' already exists" in cli.stderr and cli.stderr.count("\n") == 1
    assert _writes(hub_server) == [], "nothing was written"
    assert other_auto not in {b.name for b in api.list_repo_refs(repo_id, repo_type="dataset").branches}

    # With a fresh tag it goes to its own branch, which holds that artifact only (main's files that
    # it lacks are removed there), while main keeps its artifact.
    (other / cards.AGREEMENT_PLOT_NAME).unlink()
    rewrite_manifest(other)
    result = hub.push(other, repo_id, revision=other_auto, tag="v0.2")
    assert result.new_branch and result.deleted == [cards.AGREEMENT_PLOT_NAME]
    assert set(hub_server.files(repo_id, "dataset", other_auto)) == {f.path for f in result.files} | {".gitattributes"}
    assert cards.AGREEMENT_PLOT_NAME in hub_server.files(repo_id, "dataset")
    assert hub_server.repo(repo_id, "dataset").tags["v0.2"] == result.commit_sha


def test_push_refuses_a_folder_that_no_longer_matches_its_manifest(hub_server, tmp_path):
    folder = make_dataset_folder(tmp_path / "out")
    (folder / "config.yaml").write_text("edited: true\n")
    with pytest.raises(SparkHubError, match="config.yaml changed after manifest.json"):
        hub.push(folder, unique_repo("ds"), dry_run=True)
    (folder / "config.yaml").unlink()
    with pytest.raises(SparkHubError, match="missing"):
        hub.push(folder, unique_repo("ds"), dry_run=True)
    with pytest.raises(SparkHubError, match="no manifest.json"):
        hub.push(tmp_path, unique_repo("ds"), dry_run=True)


# ------------------------------------------------------------------------------------------------
# Failures
# ------------------------------------------------------------------------------------------------
def test_transient_errors_and_dropped_connections_are_retried(hub_server, tmp_path):
    repo_id = unique_repo("ds")
    folder = make_dataset_folder(tmp_path / "out", repo_id=repo_id)
    hub_server.fail_next(1, status=503, path_contains="/api/repos/create")
    hub_server.fail_next(2, status=500, path_contains="/commit/")
    hub_server.drop_next(1, path_contains="/commit/")

    result = hub.push(folder, repo_id)

    assert len(hub_server.requests_to("/commit/", "POST")) == 4
    assert len(hub_server.history(repo_id, "dataset")) == 2
    assert hub_server.history(repo_id, "dataset")[0].oid == result.commit_sha


def test_a_commit_whose_answer_was_lost_is_not_made_twice(hub_server, tmp_path):
    repo_id = unique_repo("ds")
    folder = make_dataset_folder(tmp_path / "out", repo_id=repo_id)
    hub_server.drop_next(1, path_contains="/commit/", after=True)

    result = hub.push(folder, repo_id)

    assert len(hub_server.requests_to("/commit/", "POST")) == 1
    history = hub_server.history(repo_id, "dataset")
    assert len(history) == 2 and history[0].oid == result.commit_sha


def test_failed_push_leaves_remote_and_local_unchanged(hub_server, tmp_path):
    repo_id = unique_repo("ds")
    folder = make_dataset_folder(tmp_path / "out", repo_id=repo_id)
    hub.push(folder, repo_id)
    pushed = hub_server.files(repo_id, "dataset")
    (folder / cards.AGREEMENT_PLOT_NAME).unlink()
    rewrite_manifest(folder)
    before = tree_bytes(folder)
    hub_server.clear_log()
    hub_server.fail_next(100, status=500, path_contains="/commit/")

    with pytest.raises(SparkHubError) as failed:
        hub.push(folder, repo_id, overwrite=True)

    assert "failed after 4 attempt(s)" in str(failed.value) and "\n" not in str(failed.value)
    assert len(hub_server.requests_to("/commit/", "POST")) == 4
    assert hub_server.files(repo_id, "dataset") == pushed, "the remote revision is unchanged"
    assert len(hub_server.history(repo_id, "dataset")) == 2
    assert tree_bytes(folder) == before, "the local folder is intact"


def test_a_push_killed_after_its_commit_landed_is_up_to_date_on_rerun(hub_server, tmp_path):
    repo_id = unique_repo("ds")
    folder = make_dataset_folder(tmp_path / "out")
    hub_server.drop_next(1, path_contains="/commit/", after=True)

    # One attempt only: the commit lands, the answer is lost, the push fails.
    with pytest.raises(SparkHubError, match="failed after 1 attempt"):
        hub.push(folder, repo_id, retry=hub.RetryPolicy(attempts=1))
    landed = hub_server.history(repo_id, "dataset")[0].oid

    cli = CliRunner().invoke(push_command, [str(folder), repo_id])
    assert cli.exit_code == 0, cli.output
    assert len(hub_server.history(repo_id, "dataset")) == 2, "nothing committed twice"
    assert hub.push(folder, repo_id).commit_sha == landed


def test_hub_errors_are_one_line_without_progress_bars(hub_server, tmp_path, capfd):
    repo_id = unique_repo("ds")
    folder = make_dataset_folder(tmp_path / "out")
    hub.push(folder, repo_id)
    (folder / cards.AGREEMENT_PLOT_NAME).unlink()
    rewrite_manifest(folder)
    hub_server.fail_next(100, status=500, path_contains="/commit/")
    capfd.readouterr()

    cli = CliRunner().invoke(push_command, [str(folder), repo_id, "--overwrite"])

    captured = capfd.readouterr()
    assert cli.exit_code == 2
    errors = [line for line in cli.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and cli.stderr.rstrip("\n").splitlines()[-1] == errors[0]
    assert "failed after 4 attempt(s)" in errors[0] and "nothing was committed" in errors[0]
    for text in (cli.stderr, cli.output, captured.err, captured.out):
        assert "LFS files" not in text and "it/s" not in text, text


def test_push_validates_every_row_before_uploading(hub_server, tmp_path):
    import pyarrow.parquet as pq

    repo_id = unique_repo("ds")
    folder = make_dataset_folder(tmp_path / "out")
    shard = folder / "data" / "train-00000-of-00001.parquet"
    rows = pq.read_table(shard).to_pylist()
    rows[1]["agreement"] = [7.0 for _ in rows[1]["agreement"]] or [7.0]  # agreement is a share: <= 1
    pq.write_table(pq.read_table(shard).from_pylist(rows, schema=pq.read_schema(shard)), shard)
    rewrite_manifest(folder)  # the hashes match: only the schema can catch it
    hub_server.clear_log()

    with pytest.raises(SparkHubError, match="does not match its schema or manifest") as invalid:
        hub.push(folder, repo_id)
    assert "agreement" in str(invalid.value) and "\n" not in str(invalid.value)
    with pytest.raises(SparkHubError, match="does not match its schema or manifest"):
        hub.push(folder, repo_id, dry_run=True)
    assert hub_server.requests == [], "nothing was sent"


def test_pushed_readme_and_manifest_agree(hub_server, tmp_path):
    repo_id = unique_repo("ds")
    folder = make_dataset_folder(tmp_path / "out")
    manifest = read_manifest(folder)
    assert "README.md" not in manifest["files"], "the card is a view of the manifest, not hashed in it"

    hub.push(folder, repo_id)
    local = hub.download(repo_id, repo_type="dataset", local_dir=tmp_path / "dl")

    remote = hub_server.files(repo_id, "dataset")
    for path, entry in manifest["files"].items():
        assert hashlib.sha256(remote[path]).hexdigest() == entry["sha256"], path
    assert set(remote) == set(manifest["files"]) | {"README.md", "manifest.json", ".gitattributes"}
    assert (local / "README.md").read_text() == cards.render_card(read_manifest(local), repo_id=repo_id)


def test_the_token_is_never_written_pushed_or_logged(hub_server, tmp_path, caplog, monkeypatch):
    import datasets

    caplog.set_level(logging.DEBUG)
    token = hub_server.token
    repo_id = unique_repo("ds")
    folder = make_dataset_folder(tmp_path / "out", repo_id=repo_id)

    hub.push(folder, repo_id, tag="v1")
    hub.download(repo_id, repo_type="dataset", local_dir=tmp_path / "downloaded")
    datasets.load_dataset(repo_id, split="train")
    cli = CliRunner().invoke(push_command, [str(folder), repo_id, "--dry-run"])

    needle = token.encode()
    for root in (tmp_path, Path(os.environ["HF_HOME"])):
        leaked = [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]
        assert leaked == [], f"token written to {leaked}"
    assert all(needle not in blob for blob in hub_server.all_stored_bytes())
    assert token not in caplog.text and token not in cli.output
    sent_with_auth = 0
    for request in hub_server.requests:
        assert needle not in request.body and token not in request.path
        for name, value in request.headers:
            if name.lower() == "authorization":
                sent_with_auth += token in value
            else:
                assert token not in value, f"token in header {name}"
    assert sent_with_auth > 0, "the token from HF_TOKEN was used (in the Authorization header only)"

    # A token that made it into the config is refused, and the error does not repeat it.
    leaky = make_dataset_folder(tmp_path / "leaky", config_update={"verifier": {"extra": {"hf_token": token}}})
    with pytest.raises(SparkHubError, match="contains your Hugging Face token") as refused:
        hub.push(leaky, unique_repo("ds"), dry_run=True)
    assert token not in str(refused.value)
    assert token not in (leaky / "README.md").read_text(), "cards redact secret-looking config keys"

    # So is an API key from the environment (e.g. an OpenAI-compatible server's), whatever the key.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-key-0123456789")
    keyed = make_dataset_folder(tmp_path / "keyed", config_update={"verifier": {"base_url": "http://h/?k=sk-env-key-0123456789"}})
    with pytest.raises(SparkHubError, match="contains an API key from your environment") as refused:
        hub.push(keyed, unique_repo("ds"), dry_run=True)
    assert "sk-env-key" not in str(refused.value) and "sk-env-key" not in (keyed / "README.md").read_text()


# ------------------------------------------------------------------------------------------------
# Download and problems from the Hub
# ------------------------------------------------------------------------------------------------
def test_download_needs_a_valid_manifest(hub_server, tmp_path):
    api = _api(hub_server)
    repo_id = unique_repo("plain")
    api.create_repo(repo_id)
    api.upload_file(path_or_fileobj=b"# not spark-hub\n", path_in_repo="README.md", repo_id=repo_id)

    with pytest.raises(SparkHubError, match="has no manifest.json, so it is not a spark-hub artifact"):
        hub.download(repo_id, local_dir=tmp_path / "a")
    api.upload_file(path_or_fileobj=b'{"schema_version": "1", "kind": "nope"}', path_in_repo="manifest.json",
                    repo_id=repo_id)
    with pytest.raises(SparkHubError, match="invalid manifest.json"):
        hub.download(repo_id, local_dir=tmp_path / "b")
    with pytest.raises(SparkHubError, match="branches: main"):
        hub.download(repo_id, revision="no-such-branch")
    with pytest.raises(SparkHubError, match="no model or dataset repository"):
        hub.download(unique_repo("missing"))


def test_downloads_are_retried_and_worded_as_downloads(hub_server, tmp_path):
    repo_id = unique_repo("ds")
    folder = make_dataset_folder(tmp_path / "out")
    hub.push(folder, repo_id)
    hub_server.clear_log()
    # (File GETs also go through huggingface_hub's own backoff; the API calls around them do not.)
    hub_server.fail_next(2, status=503, path_contains="/api/datasets/")
    hub_server.drop_next(1, path_contains="/api/datasets/")

    local = hub.download(repo_id, repo_type="dataset", local_dir=tmp_path / "a")
    assert (local / "manifest.json").read_bytes() == (folder / "manifest.json").read_bytes()
    assert [r.status for r in hub_server.requests_to(f"/api/datasets/{repo_id}")][:2] == [503, 503]

    hub_server.clear_log()
    hub_server.fail_next(100, status=503, path_contains="/api/datasets/")
    with pytest.raises(SparkHubError) as failed:
        hub.download(repo_id, repo_type="dataset", local_dir=tmp_path / "b")
    message = str(failed.value)
    assert message.startswith(f"download of dataset {repo_id}@main failed after 4 attempt(s): ")
    assert "committed" not in message and "\n" not in message
    assert len(hub_server.requests_to(f"/api/datasets/{repo_id}")) == 4
    hub_server.clear_faults()

    # The helper for other downloads (e.g. datasets.load_dataset of --problems ORG/NAME).
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("connection reset by peer")
        return "rows"

    assert hub.retry_download(flaky, target=f"dataset {repo_id}") == "rows" and len(calls) == 3
    with pytest.raises(SparkHubError, match=r"^download of dataset x/y failed after 4 attempt\(s\): ConnectionError"):
        hub.retry_download(lambda: (_ for _ in ()).throw(ConnectionError("down")), target="dataset x/y")
    with pytest.raises(SparkHubError, match="repository not found"):
        hub.retry_download(lambda: _api(hub_server).dataset_info(unique_repo("missing")), target="dataset x/z")


def test_read_remote_manifest_fetches_only_the_manifest(hub_server, tmp_path):
    repo_id = unique_repo("ds")
    folder = make_dataset_folder(tmp_path / "out")
    pushed = hub.push(folder, repo_id, revision="run-1")
    hub_server.clear_log()

    manifest, sha = hub.read_remote_manifest(repo_id, "run-1")

    assert manifest == read_manifest(folder) and sha == pushed.commit_sha
    fetched = {r.path.split("/resolve/")[1].split("/", 1)[1] for r in hub_server.requests if "/resolve/" in r.path}
    assert fetched == {"manifest.json"}
    with pytest.raises(SparkHubError, match="branches: main, run-1"):
        hub.read_remote_manifest(repo_id, "run-2")


def test_a_dry_run_that_cannot_reach_the_hub_says_so(tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setenv("HF_TOKEN", "hf_offline_dry_run_token")
    folder = make_dataset_folder(tmp_path / "out")

    plan = hub.push(folder, "org/spark-demo", dry_run=True, endpoint=endpoint)

    assert plan.dry_run and not plan.remote_checked and not plan.up_to_date
    assert "remote:   not checked (the Hub could not be reached" in plan.render()
    with pytest.raises(SparkHubError, match="failed after 4 attempt"):
        hub.push(folder, "org/spark-demo", endpoint=endpoint)


def test_resolve_hub_dataset_pins_the_commit(hub_server):
    api = _api(hub_server)
    repo_id = unique_repo("problems")
    api.create_repo(repo_id, repo_type="dataset")
    api.upload_file(path_or_fileobj=b'{"problem": "1+1?", "answer": "2"}\n', path_in_repo="train.jsonl",
                    repo_id=repo_id, repo_type="dataset")
    api.create_branch(repo_id, branch="v2", repo_type="dataset")
    api.upload_file(path_or_fileobj=b'{"problem": "2+2?", "answer": "4"}\n', path_in_repo="train.jsonl",
                    repo_id=repo_id, repo_type="dataset", revision="v2")

    path, sha = hub.resolve_hub_dataset(repo_id)
    path_v2, sha_v2 = hub.resolve_hub_dataset(repo_id, "v2")

    assert sha == api.dataset_info(repo_id).sha and re.fullmatch(r"[0-9a-f]{40}", sha)
    assert sha_v2 == api.dataset_info(repo_id, revision="v2").sha != sha
    assert "1+1" in (path / "train.jsonl").read_text() and "2+2" in (path_v2 / "train.jsonl").read_text()
    with pytest.raises(SparkHubError, match="revision 'v3' not found"):
        hub.resolve_hub_dataset(repo_id, "v3")


# ------------------------------------------------------------------------------------------------
# Revisions, cards, CLI
# ------------------------------------------------------------------------------------------------
def test_default_revision_is_a_stable_valid_branch_name():
    revision = hub.default_revision(DATASET_CONFIG)
    assert re.fullmatch(r"step-consistency-qwen3-32b-m4-n3-[0-9a-f]{8}", revision)
    assert hub.check_revision(revision) == revision
    assert hub.default_revision(dict(reversed(list(DATASET_CONFIG.items())))) == revision
    assert hub.default_revision({**DATASET_CONFIG, "seed": 7}) != revision
    flat = {"aggregation": "outcome_level", "verifier_model": "org/v.gguf",
            "num_solutions": 8, "num_verifications": 16}
    assert hub.default_revision(flat).startswith("outcome-level-v-m8-n16-")
    assert hub.checkpoint_revision(10) == "step-000010"
    sanitized = hub.sanitize_revision(" Outcome Level / GPT-4o:mini..lock ")
    assert hub.check_revision(sanitized) == sanitized == "outcome-level/gpt-4o-mini-lock"
    for bad in ("refs/heads/x", "a..b", "has space", "x.lock", "0" * 40, ""):
        with pytest.raises(SparkHubError):
            hub.check_revision(bad)


def _prm_manifest(**overrides):
    kwargs = dict(
        config={"prm_format": "prm_cot", "license": "apache-2.0", "backend": {"api_key": "sk-secret-value"}},
        models={"base_model": {"id": "Qwen/Qwen2.5-14B-Instruct", "revision": "abc123"}},
        prompts={"prm_cot": "c" * 64}, seeds={"train": 7},
        inputs={"train": {"source": "spark-tester/spark-demo", "revision": "d" * 40, "rows": 100}},
        results={"processbench": {"gsm8k": {"f1": 70.25, "acc_error": 60.0}, "math": 64.5, "average": 67.4},
                 "math": {"math500": {"accuracy": 47.4}, "aime24": 10.0}},
    )
    kwargs.update(overrides)
    return new_manifest("prm", **kwargs)


def test_cards_validate_and_round_trip(tmp_path):
    from huggingface_hub import DatasetCard, ModelCard
    from jinja2.exceptions import SecurityError

    folder = make_dataset_folder(tmp_path / "out")
    built = read_manifest(folder)
    manifest = {**built, "uses_references": True,
                "contamination": {"benchmarks": ["math500"], "overlapping_problems": 0}}
    text = cards.render_dataset_card(manifest, repo_id="org/spark-demo")
    card = DatasetCard(text)
    data = card.data.to_dict()
    assert data["license"] == "apache-2.0"
    assert set(cards.DATASET_TAGS) <= set(data["tags"]) and "text-generation" in data["task_categories"]
    assert data["annotations_creators"] == ["machine-generated"]
    assert data["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]},
        {"config_name": "verifications", "data_files": [{"split": "train", "path": "verifications/*.parquet"}]},
    ]
    assert yaml.safe_load(text.split("---\n")[1]) == yaml.safe_load(card.data.to_yaml())
    assert DatasetCard(str(card)).data.to_dict() == data
    prompt_hash = manifest["prompts"]["verifier"]
    for expected in ("2512.03244", "Rahman", "scripted:verifier.jsonl", manifest["models"]["verifier"]["fingerprint"],
                     prompt_hash, 'load_dataset("org/spark-demo", "verifications"', "Labels used references",
                     "Contamination report", f"![Mean per-step agreement]({cards.AGREEMENT_PLOT_NAME})",
                     "one row per solution", "## Data fields", "| `labels` |", "| `raw_text` |"):
        assert expected in card.text, expected
    assert "one row per labelled solution step" not in card.text

    # Rendered before the manifest has its file table (as build-dataset does): same configs.
    no_files = {k: v for k, v in manifest.items() if k != "files"}
    early = DatasetCard(cards.render_dataset_card(no_files, agreement_plot="agreement.png"))
    assert early.data.to_dict()["configs"] == data["configs"]
    assert "![Mean per-step agreement](agreement.png)" in early.text
    assert f'load_dataset("{cards.REPO_PLACEHOLDER}"' in early.text

    model_text = cards.render_model_card(_prm_manifest(), repo_id="org/spark-prm")
    model = ModelCard(model_text)
    assert model.data.base_model == "Qwen/Qwen2.5-14B-Instruct"
    assert model.data.datasets == ["spark-tester/spark-demo"]
    scores = {
        (r.dataset_type, r.dataset_split or r.dataset_name, r.metric_type): r.metric_value
        for r in model.data.eval_results
    }
    assert scores == {
        ("Qwen/ProcessBench", "gsm8k", "f1"): 70.25, ("Qwen/ProcessBench", "math", "f1"): 64.5,
        ("HuggingFaceH4/MATH-500", "math500", "accuracy"): 47.4, ("aime24", "aime24", "accuracy"): 10.0,
    }
    assert ModelCard(str(model)).data.to_dict() == model.data.to_dict()
    assert "sk-secret-value" not in model_text and "<redacted>" in model_text
    assert "Labels used references" not in cards.render_dataset_card(built)

    policy_manifest = new_manifest("policy", config={}, models={"reward_model": {"id": "org/spark-prm"}})
    policy = ModelCard(cards.render_card(policy_manifest))
    assert "grpo" in policy.data.tags and "org/spark-prm" in policy.text and policy.data.eval_results is None

    with pytest.raises(SecurityError):
        cards.environment().from_string("{{ x.__class__.__mro__[1].__subclasses__() }}").render(x=1)


def test_agreement_plot(tmp_path):
    path = cards.write_agreement_plot({"agreement_by_step": [0.9, None, 0.7]}, tmp_path / "a" / "plot.png")
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert cards.write_agreement_plot({"agreement_by_step": [0.9, None, 0.7]}, tmp_path / "b.png").read_bytes() \
        == path.read_bytes()  # no timestamp: identical statistics, identical bytes
    assert cards.write_agreement_plot({}, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    for steps in (1, 3, 12, 60):  # the title fits in the image, however few steps there are
        chart = cards.agreement_chart({"agreement_by_step": [0.5] * steps})
        width, height = chart.size
        x0, y0, x1, y1 = chart.boxes["title"]
        assert 0 < x0 < x1 < width and 0 < y0 < y1 < chart.boxes["plot"][1], (steps, chart.boxes, chart.size)
        # ... and it is drawn: ink in its box, and none between it and the canvas edges.
        band = chart.image.convert("L").crop((0, 0, width, (y1 + chart.boxes["plot"][1]) // 2))
        ink = band.point(lambda v: 255 if v < 200 else 0).getbbox()
        assert ink and x0 - 1 <= ink[0] and ink[2] <= x1 + 1 and y0 - 1 <= ink[1] and ink[3] <= y1 + 1, (steps, ink)


def test_cards_redact_secrets_by_value_and_exact_key_and_hide_local_paths(tmp_path, monkeypatch):
    token = "hf_cardsecret" + "x" * 20
    monkeypatch.setenv("HF_TOKEN", token)
    folder = make_dataset_folder(tmp_path / "out", config_update={
        "verifier": {"extra": {"api_key": "sk-by-key-0123456789", "password": "pw-by-key-0123",
                               "header": f"Bearer {token}"}},
    })
    manifest = read_manifest(folder)
    manifest["models"]["verifier"] = {**manifest["models"]["verifier"], "id": "embedded",
                                      "source": str(tmp_path / "site-packages" / "smollm2.gguf")}
    text = cards.render_dataset_card(manifest, repo_id="org/spark-demo")

    config_yaml = text.split("```yaml\n")[1].split("```")[0]
    assert "max_tokens: 512" in config_yaml, "max_tokens is not a secret"
    assert "api_key_env: OPENAI_API_KEY" in config_yaml
    assert "api_key: <redacted>" in config_yaml and "password: <redacted>" in config_yaml
    assert "header: Bearer <redacted>" in config_yaml, "a known token is redacted by value, whatever the key"
    for secret in (token, "sk-by-key-0123456789", "pw-by-key-0123"):
        assert secret not in text
    # No absolute local path: the build ran under a temporary folder.
    assert str(built_dataset().parent) not in text and str(tmp_path) not in text
    assert "problems: problems_small.jsonl" in config_yaml
    # The bundled model is named by the repo it comes from.
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in text and "| embedded |" not in text
    assert DatasetCard_from(text).data.to_dict().get("source_datasets") is None
    declared = {**manifest, "config": {**manifest["config"], "source_datasets": ["openai/gsm8k"]}}
    assert DatasetCard_from(cards.render_dataset_card(declared)).data.to_dict()["source_datasets"] == ["openai/gsm8k"]

    # The pushed card goes through the same filter (a folder holding the token is refused anyway).
    keyed = make_dataset_folder(tmp_path / "keyed", config_update={"verifier": {"extra": {"api_key": "sk-0123456789"}}})
    plan, _ = hub.plan_push(keyed, "org/spark-demo", token=token)
    assert "api_key: <redacted>" in plan.card and "sk-0123456789" not in plan.card
    assert "max_tokens: 512" in plan.card and str(tmp_path) not in plan.card


def DatasetCard_from(text):  # noqa: N802 - reads like the class it wraps
    from huggingface_hub import DatasetCard

    return DatasetCard(text)


def test_cli_push(hub_server, tmp_path):
    repo_id = unique_repo("ds")
    folder = make_dataset_folder(tmp_path / "out", repo_id=repo_id)
    runner = CliRunner()

    ok = runner.invoke(push_command, [str(folder), repo_id, "--private", "--tag", "v1", "-m", "first release"])
    missing = runner.invoke(push_command, [str(tmp_path / "nope"), repo_id])

    assert ok.exit_code == 0, ok.output
    assert f"to {repo_id}@main (tag v1)" in ok.output and "/commit/" in ok.output
    assert hub_server.repo(repo_id, "dataset").private
    assert hub_server.history(repo_id, "dataset")[0].title == "first release"
    assert missing.exit_code == 2 and missing.stderr.startswith("Error: not a folder")
    assert missing.stderr.count("\n") == 1


def test_xet_failure_mode_is_documented(hub_server, tmp_path, monkeypatch):
    """With Xet enabled the client never asks the server for LFS; a server without Xet fails.

    This is why tests/conftest.py sets HF_HUB_DISABLE_XET=1. If a future huggingface_hub negotiates
    and falls back to LFS, this test fails and that note can go.
    """
    pytest.importorskip("hf_xet")
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", False)
    repo_id = unique_repo("xet")
    folder = make_dataset_folder(tmp_path / "out", repo_id=repo_id)

    with pytest.raises(SparkHubError) as failed:
        hub.push(folder, repo_id)

    assert "xet-write-token" in str(failed.value) and "HF_HUB_DISABLE_XET=1" in str(failed.value)
    assert len(hub_server.requests_to("xet-write-token")) == 1, "not retried: it is not transient"
    assert len(hub_server.history(repo_id, "dataset")) == 1
