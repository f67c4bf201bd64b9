"""Fetch spark-hub artifacts and Hub datasets back, pinned to a commit and checked.

Every request goes through `spark_hub.hub.retries.retry_download`: transient errors are retried
with backoff, and a failure reads ``download of ORG/NAME failed after N attempt(s): ...``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from spark_hub.errors import SparkHubError
from spark_hub.hub.push import CARD_NAME, api_for, hash_file
from spark_hub.hub.retries import RetryPolicy, default_retry, retry_download
from spark_hub.hub.revisions import DEFAULT_REVISION
from spark_hub.manifest import MANIFEST_NAME, read_manifest

logger = logging.getLogger("spark_hub.hub")


def _resolve_repo(api, repo_id: str, repo_type: str | None, revision: str | None,
                  retry: RetryPolicy) -> tuple[str, str]:
    """``(repo_type, commit_sha)`` for ``repo_id``; tries model then dataset when the type is unknown."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    types = [repo_type] if repo_type else ["model", "dataset"]
    last: Exception | None = None
    for candidate in types:
        target = f"{candidate} {repo_id}@{revision or DEFAULT_REVISION}"
        try:
            info = retry_download(lambda: api.repo_info(repo_id, repo_type=candidate, revision=revision),
                                  target=target, retry=retry)
            return candidate, info.sha
        except SparkHubError as error:
            cause = error.__cause__
            if isinstance(cause, RevisionNotFoundError):
                branches = []
                try:
                    branches = [b.name for b in api.list_repo_refs(repo_id, repo_type=candidate).branches]
                except Exception:
                    logger.debug("could not list refs", exc_info=True)
                raise SparkHubError(
                    f"revision {revision!r} not found in {candidate} {repo_id}",
                    hint=f"branches: {', '.join(sorted(branches))}" if branches else "check the revision",
                ) from cause
            if not isinstance(cause, RepositoryNotFoundError):
                raise
            last = cause
    kinds = repo_type or "model or dataset"
    raise SparkHubError(
        f"no {kinds} repository {repo_id} (or no access)",
        hint="check the repo id and --repo-type; for private repos set HF_TOKEN or run `hf auth login`",
    ) from last


def _verify_files(folder: Path, manifest: dict[str, Any], where: str) -> None:
    for rel, expected in sorted((manifest.get("files") or {}).items()):
        if rel == CARD_NAME:  # manifests written before the card was left out of the file table
            continue
        path = folder / rel
        if not path.is_file():
            raise SparkHubError(f"{rel} is listed in {MANIFEST_NAME} but missing", where=where,
                                hint="the artifact was pushed incompletely; push it again")
        if hash_file(path).sha256 != expected["sha256"]:
            raise SparkHubError(f"{rel} does not match its sha256 in {MANIFEST_NAME}", where=where,
                                hint="the download is corrupt or the artifact was modified; retry or re-push")


def _fetch_manifest(api, repo_id: str, repo_type: str, sha: str, target: str, retry: RetryPolicy,
                    local_dir: str | None) -> Path:
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(retry_download(
            lambda: api.hf_hub_download(repo_id, MANIFEST_NAME, repo_type=repo_type, revision=sha, local_dir=local_dir),
            target=target, retry=retry,
        ))
    except SparkHubError as error:
        if isinstance(error.__cause__, EntryNotFoundError):
            raise SparkHubError(
                f"{target} has no {MANIFEST_NAME}, so it is not a spark-hub artifact",
                hint="publish artifacts with `spark-hub push DIR REPO_ID`",
            ) from error.__cause__
        raise


def _read(folder: Path, where: str) -> dict[str, Any]:
    try:
        return read_manifest(folder)
    except SparkHubError as error:
        raise SparkHubError(f"invalid {MANIFEST_NAME}: {error.message}", where=where,
                            hint="this artifact was not written by a compatible spark-hub") from error


def read_remote_manifest(
    repo_id: str,
    revision: str | None = None,
    *,
    repo_type: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    retry: RetryPolicy | None = None,
) -> tuple[dict[str, Any], str]:
    """The validated manifest of a Hub artifact, without downloading anything else.

    Args:
        repo_id: ``namespace/name``.
        revision: branch, tag or commit (default ``main``).
        repo_type: ``"model"`` or ``"dataset"``; tried in that order when None.

    Returns:
        ``(manifest, commit_sha)``: the manifest at the commit ``revision`` resolved to.

    Raises:
        `SparkHubError`: unknown repo or revision, no or an invalid ``manifest.json``, or a
            download that kept failing.
    """
    retry = retry or default_retry()
    api = api_for(endpoint, token)
    repo_type, sha = _resolve_repo(api, repo_id, repo_type, revision, retry)
    target = f"{repo_type} {repo_id}@{revision or DEFAULT_REVISION}"
    path = _fetch_manifest(api, repo_id, repo_type, sha, target, retry, None)
    return _read(path.parent, f"{repo_id}@{sha[:8]}"), sha


def download(
    repo_id: str,
    *,
    revision: str | None = None,
    repo_type: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    local_dir: str | Path | None = None,
    verify: bool = True,
    retry: RetryPolicy | None = None,
) -> Path:
    """Download a spark-hub artifact and check its manifest.

    The manifest is fetched first, so a repo that is not a spark-hub artifact fails before any large
    file is downloaded; then the whole snapshot is fetched at the resolved commit and (``verify``)
    every file is checked against the sha256 recorded in the manifest.

    Args:
        repo_id: ``namespace/name``.
        revision: branch, tag or commit (default ``main``).
        repo_type: ``"model"`` or ``"dataset"``; tried in that order when None.
        endpoint: Hub URL; default ``HF_ENDPOINT``.
        token: Hub token; default the usual `huggingface_hub` sources.
        local_dir: copy the files there instead of returning the cache folder.
        verify: check file hashes against the manifest.
        retry: backoff for transient errors; default ``spark_hub.hub.DEFAULT_RETRY``.

    Returns:
        The local folder holding the artifact.

    Raises:
        `SparkHubError`: unknown repo or revision, no ``manifest.json``, an invalid manifest, files
            that do not match it, or a download that kept failing.
    """
    retry = retry or default_retry()
    api = api_for(endpoint, token)
    repo_type, sha = _resolve_repo(api, repo_id, repo_type, revision, retry)
    target = f"{repo_type} {repo_id}@{revision or DEFAULT_REVISION}"
    into = str(local_dir) if local_dir else None
    # The manifest first: a repo that is not a valid artifact fails before any large file is fetched.
    _read(_fetch_manifest(api, repo_id, repo_type, sha, target, retry, into).parent, f"{repo_id}@{sha[:8]}")
    path = Path(retry_download(lambda: api.snapshot_download(repo_id, repo_type=repo_type, revision=sha,
                                                             local_dir=into), target=target, retry=retry))
    where = f"{repo_id}@{sha[:8]}"
    manifest = _read(path, where)
    if verify:
        _verify_files(path, manifest, where)
    logger.info("downloaded %s %s (%s) to %s", manifest["kind"], target, sha[:8], path)
    return path


def resolve_hub_dataset(
    repo_id: str,
    revision: str | None = None,
    *,
    endpoint: str | None = None,
    token: str | None = None,
    allow_patterns: list[str] | str | None = None,
    retry: RetryPolicy | None = None,
) -> tuple[Path, str]:
    """Fetch a Hub dataset (e.g. ``--problems org/name``) pinned to a commit.

    Args:
        repo_id: dataset repo id.
        revision: branch, tag or commit; default ``main``.
        allow_patterns: only download files matching these patterns (e.g. ``"*.jsonl"``).
        retry: backoff for transient errors; default ``spark_hub.hub.DEFAULT_RETRY``.

    Returns:
        ``(local_folder, commit_sha)``: record the sha in the manifest's ``inputs`` so the exact
        data can be fetched again.
    """
    retry = retry or default_retry()
    api = api_for(endpoint, token)
    target = f"dataset {repo_id}@{revision or DEFAULT_REVISION}"
    _, sha = _resolve_repo(api, repo_id, "dataset", revision, retry)
    path = retry_download(
        lambda: api.snapshot_download(repo_id, repo_type="dataset", revision=sha, allow_patterns=allow_patterns),
        target=target, retry=retry,
    )
    logger.info("resolved %s to commit %s", target, sha)
    return Path(path), sha


__all__ = ["download", "read_remote_manifest", "resolve_hub_dataset"]
