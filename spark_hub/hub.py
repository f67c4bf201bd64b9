"""Publish spark-hub artifacts to the Hugging Face Hub, and fetch them back.

A spark-hub artifact is a folder with a ``manifest.json`` (see `spark_hub.manifest`): a dataset built by
``build-dataset``, a PRM or a policy. Publishing follows a few rules:

* the manifest is validated first, and every file it lists must still match its recorded sha256;
* the whole folder goes up in **one commit** (`HfApi.create_commit`), so a failed push leaves the
  remote revision as it was; local state (``.spark/``, temporary files) is never pushed;
* each revision is a branch; pushing onto a revision that already holds an artifact needs
  ``overwrite=True`` (``--overwrite``), which also removes remote files the new artifact no longer has;
* transient errors (HTTP 408/429/5xx, dropped connections, timeouts) are retried with exponential
  backoff; a commit whose answer was lost is recognised, not made twice;
* the token comes from the usual `huggingface_hub` sources (``HF_TOKEN``, ``hf auth login``) and is
  never printed, logged or written; a file that contains it is refused;
* ``dry_run=True`` returns the plan (repo, revision, files with sizes, the card) without any request;
* a card rendered before the repo was known (`spark_hub.cards.REPO_PLACEHOLDER`) gets the target
  repo id in the pushed copy; the local folder is never modified.

Example:

```py
>>> from spark_hub import hub
>>> hub.push("out/spark-demo", "my-org/spark-demo", dry_run=True).render()  # doctest: +SKIP
>>> hub.push("out/spark-demo", "my-org/spark-demo", revision=hub.default_revision(config))  # doctest: +SKIP
>>> folder = hub.download("my-org/spark-prm")  # doctest: +SKIP
```
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import fnmatch
import hashlib
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from spark_hub import __version__
from spark_hub.errors import SparkHubError
from spark_hub.manifest import LOCAL_STATE_DIRS, MANIFEST_NAME, read_manifest

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Manifest ``kind`` -> Hub repo type.
REPO_TYPE_FOR_KIND = {"dataset": "dataset", "prm": "model", "policy": "model"}
CARD_NAME = "README.md"
DEFAULT_REVISION = "main"
#: Never pushed, whatever the caller asks: local state, VCS folders, caches, temporary files.
ALWAYS_IGNORED = (
    *(f"{d}/**" for d in LOCAL_STATE_DIRS), ".git/**", ".cache/**", "**/__pycache__/**", "**/.DS_Store",
    "**/.*.tmp", "**/*.tmp", "**/*.partial", "**/*.lock",
)
#: Extra patterns left out of checkpoint pushes (nested trainer checkpoints, RNG states).
CHECKPOINT_IGNORED = ("checkpoint-*/**", "**/*.pth")
#: HTTP statuses worth retrying.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How transient Hub errors are retried.

    Args:
        attempts: total tries of one step (1 = no retry).
        base_delay: seconds before the first retry; doubled after each failure.
        max_delay: cap on one wait, in seconds.
    """

    attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 30.0

    def delay(self, failures: int) -> float:
        """Wait before the next try after ``failures`` consecutive failures."""
        return min(self.max_delay, self.base_delay * 2 ** max(0, failures - 1))


#: Used when ``push(..., retry=None)``; tests patch it to make retries instant.
DEFAULT_RETRY = RetryPolicy()


@dataclasses.dataclass(frozen=True)
class PlannedFile:
    """One file of a push: its path in the repo, size, and where the bytes come from."""

    path: str
    size: int
    source: Path | None = None  # None: generated in memory (the card when the folder has none)
    content: bytes | None = None


@dataclasses.dataclass
class PushResult:
    """What `push` did, or would do with ``dry_run=True``.

    Attributes:
        repo_id: ``namespace/name`` of the target repo (as the Hub resolved it after creation).
        repo_type: ``"dataset"`` or ``"model"``.
        revision: the branch that was (or would be) written.
        files: every file in the commit, sorted by path.
        card: the card text (``README.md``) pushed with the artifact.
        dry_run: True when nothing was sent.
        deleted: remote files removed by an overwrite.
        commit_sha / commit_url: the commit that holds the artifact (None for a dry run).
        tag: the tag created on that commit, if any.
    """

    repo_id: str
    repo_type: str
    revision: str
    files: list[PlannedFile]
    card: str
    dry_run: bool = False
    deleted: list[str] = dataclasses.field(default_factory=list)
    commit_sha: str | None = None
    commit_url: str | None = None
    tag: str | None = None

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def render(self, *, with_card: bool = True) -> str:
        """Human-readable plan: target, each file with its size, and (optionally) the card text."""
        head = "Dry run: nothing was sent." if self.dry_run else f"Pushed commit {self.commit_sha}."
        lines = [
            head,
            f"repo:     {self.repo_id} ({self.repo_type})",
            f"revision: {self.revision}" + (f" (tag {self.tag})" if self.tag else ""),
            f"files:    {len(self.files)}, {format_size(self.total_size)}",
        ]
        width = max((len(f.path) for f in self.files), default=0)
        lines += [f"  {f.path:<{width}}  {format_size(f.size):>10}" for f in self.files]
        if self.deleted:
            lines.append("deleted on the remote:")
            lines += [f"  {path}" for path in self.deleted]
        if with_card:
            lines += ["", f"--- {CARD_NAME} ---", self.card.rstrip("\n"), f"--- end of {CARD_NAME} ---"]
        return "\n".join(lines)


def format_size(size: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


# ------------------------------------------------------------------------------------------------
# Revisions
# ------------------------------------------------------------------------------------------------
_REF_INVALID = re.compile(r"[^A-Za-z0-9._/-]+")


def sanitize_revision(name: str) -> str:
    """Turn ``name`` into a valid branch name (git check-ref-format rules, Hub-safe characters).

    >>> sanitize_revision("Step Level / Qwen3:32B..lock")
    'step-level/qwen3-32b-lock'
    """
    ref = _REF_INVALID.sub("-", name.strip().lower())
    ref = re.sub(r"\.{2,}", ".", ref)
    ref = re.sub(r"/{2,}", "/", ref)
    ref = re.sub(r"-{2,}", "-", ref)
    parts = [p.strip(".-") for p in ref.split("/")]
    parts = [p[:-5] + "-lock" if p.endswith(".lock") else p for p in parts if p]
    ref = "/".join(parts)
    if not ref or ref == "head" or re.fullmatch(r"[0-9a-f]{40}", ref):
        raise SparkHubError(f"cannot derive a branch name from {name!r}", hint="pass --revision NAME")
    return ref[:200]


def check_revision(revision: str) -> str:
    """Return ``revision`` if it is a usable branch name, else raise `SparkHubError` with a fix."""
    if (
        not revision
        or revision.startswith(("refs/", "/", "-", "."))
        or revision.endswith(("/", ".", ".lock"))
        or ".." in revision
        or "//" in revision
        or _REF_INVALID.search(revision)
        or re.fullmatch(r"[0-9a-f]{40}", revision)
    ):
        raise SparkHubError(
            f"invalid revision {revision!r}: pushes go to a branch name",
            hint=f"use letters, digits and . _ - /, e.g. {sanitize_revision(revision or 'my-run')!r}"
            if (revision or "").strip(" ./-") else "e.g. --revision my-run",
        )
    return revision


def default_revision(config: dict[str, Any]) -> str:
    """A branch name that identifies a run by its config, like search-and-learn's revisions.

    The name is ``{aggregation}-{verifier}-m{M}-n{N}-{hash8}``: the aggregation method, the short
    name of the verifier model, solutions per problem, verifications per solution, and the first 8
    hex digits of the sha256 of the whole config (canonical JSON), so two different configs never
    share a branch. Values are read by `spark_hub.cards.method_summary` (``aggregation.method``,
    ``verifier.model``, ``generator.n``, ``verifier.n``, or flat keys); missing parts are left out.

    >>> default_revision({"aggregation": {"method": "step_consistency"}, "generator": {"n": 8},
    ...                   "verifier": {"model": "Qwen/Qwen3-32B", "n": 16}})[:33]
    'step-consistency-qwen3-32b-m8-n16'
    """
    from spark_hub.cards import method_summary

    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:8]
    method = method_summary(config)
    parts = []
    if method["aggregation"]:
        parts.append(str(method["aggregation"]).replace("_", "-"))
    if method["verifier"]:
        short = re.split(r"[/\\]", str(method["verifier"]).rstrip("/\\"))[-1]
        parts.append(re.sub(r"\.(gguf|safetensors|bin|jsonl)$", "", short))
    if method["m"] is not None:
        parts.append(f"m{method['m']}")
    if method["n"] is not None:
        parts.append(f"n{method['n']}")
    parts.append(digest)
    return sanitize_revision("-".join(parts))


def checkpoint_revision(step: int) -> str:
    """Branch of a training checkpoint: ``step-000010`` for step 10."""
    return f"step-{int(step):06d}"


# ------------------------------------------------------------------------------------------------
# Local side: what would be pushed
# ------------------------------------------------------------------------------------------------
def _ignored(rel: str, patterns: Iterable[str]) -> bool:
    for pattern in patterns:
        if fnmatch.fnmatchcase(rel, pattern):
            return True
        # "dir/**" also matches "dir/x" at the top level; "**/x" also matches "x".
        if pattern.startswith("**/") and fnmatch.fnmatchcase(rel, pattern[3:]):
            return True
    return False


def collect_files(folder: str | Path, ignore_patterns: Iterable[str] = ()) -> list[tuple[str, Path]]:
    """``[(path_in_repo, local_path)]`` of every file of the artifact in ``folder``, sorted.

    Local state (``.spark/``), VCS and cache folders and temporary files are always left out;
    ``ignore_patterns`` (fnmatch on the POSIX relative path) leave out more.
    """
    folder = Path(folder)
    patterns = (*ALWAYS_IGNORED, *ignore_patterns)
    out = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(folder).as_posix()
        if rel.split("/")[0] in LOCAL_STATE_DIRS or _ignored(rel, patterns):
            continue
        out.append((rel, path))
    return out


def _known_tokens(token: str | None) -> list[str]:
    """Token values that must never be published: the explicit one, env vars, the stored login."""
    candidates = [token, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    try:
        from huggingface_hub import constants

        token_path = Path(constants.HF_TOKEN_PATH)
        if token_path.is_file():
            candidates.append(token_path.read_text().strip())
    except Exception:  # pragma: no cover - best effort only
        logger.debug("could not read the stored token file", exc_info=True)
    return sorted({t for t in candidates if isinstance(t, str) and len(t) >= 8})


def _hash_and_scan(path: Path, needles: list[bytes], chunk: int = 1 << 20) -> tuple[str, bool]:
    """sha256 of ``path`` and whether any of ``needles`` occurs in it, in one streaming pass."""
    digest = hashlib.sha256()
    overlap = max((len(n) for n in needles), default=1) - 1
    tail = b""
    found = False
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
            if needles and not found:
                window = tail + block
                found = any(n in window for n in needles)
                tail = window[-overlap:] if overlap else b""
    return digest.hexdigest(), found


def plan_push(
    folder: str | Path,
    repo_id: str,
    *,
    repo_type: str | None = None,
    revision: str = DEFAULT_REVISION,
    token: str | None = None,
    ignore_patterns: Iterable[str] = (),
) -> tuple[PushResult, dict[str, Any]]:
    """Check ``folder`` and list what `push` would send, without any network access.

    Returns:
        ``(plan, manifest)``: a dry-run `PushResult` and the validated manifest.

    Raises:
        `SparkHubError`: no folder, an invalid manifest, a file that no longer matches the manifest,
            an invalid card, or a file containing the Hub token.
    """
    from huggingface_hub import RepoCard

    folder = Path(folder)
    if not folder.is_dir():
        raise SparkHubError(f"not a folder: {folder}", hint="pass the output folder of a spark-hub stage")
    check_revision(revision)
    manifest = read_manifest(folder)
    kind = manifest["kind"]
    repo_type = repo_type or REPO_TYPE_FOR_KIND[kind]
    if repo_type not in ("dataset", "model"):
        raise SparkHubError(f"unsupported repo type {repo_type!r}", hint="use 'dataset' or 'model'")

    patterns = tuple(ignore_patterns)
    local = collect_files(folder, patterns)
    needles = [t.encode() for t in _known_tokens(token)]
    recorded = manifest.get("files") or {}
    files: list[PlannedFile] = []
    for rel, path in local:
        sha, leaked = _hash_and_scan(path, needles)
        if leaked:
            raise SparkHubError(
                f"{rel} contains your Hugging Face token; refusing to publish it",
                where=str(folder), hint="remove the token from the config/manifest and rebuild",
            )
        expected = recorded.get(rel)
        if expected is not None and rel != CARD_NAME and expected["sha256"] != sha:
            raise SparkHubError(
                f"{rel} changed after {MANIFEST_NAME} was written (sha256 {sha[:12]}, manifest says "
                f"{expected['sha256'][:12]})", where=str(folder),
                hint="re-run the stage that produced this folder, or rewrite the manifest",
            )
        files.append(PlannedFile(rel, path.stat().st_size, source=path))
    present = {f.path for f in files}
    if MANIFEST_NAME not in present:
        raise SparkHubError(f"{MANIFEST_NAME} is excluded by the ignore patterns", hint="it is always pushed")
    missing = sorted(p for p in recorded if p not in present and p != CARD_NAME and not _ignored(p, patterns))
    if missing:
        raise SparkHubError(
            f"{len(missing)} file(s) listed in {MANIFEST_NAME} are missing, e.g. {missing[0]}",
            where=str(folder), hint="re-run the stage that produced this folder",
        )

    if CARD_NAME in present:
        from spark_hub.cards import REPO_PLACEHOLDER

        card = (folder / CARD_NAME).read_text(encoding="utf-8")
        if REPO_PLACEHOLDER in card:  # rendered before the repo was known: fill it in the pushed copy
            card = card.replace(REPO_PLACEHOLDER, repo_id)
            content = card.encode("utf-8")
            files = [PlannedFile(CARD_NAME, len(content), content=content) if f.path == CARD_NAME else f
                     for f in files]
    else:
        from spark_hub.cards import render_card

        card = render_card(manifest, repo_id=repo_id)
        if any(n in card.encode() for n in needles):
            raise SparkHubError("the rendered card contains your Hugging Face token; refusing to publish it")
        content = card.encode("utf-8")
        files.append(PlannedFile(CARD_NAME, len(content), content=content))
        files.sort(key=lambda f: f.path)
    try:
        RepoCard(card)
    except ValueError as e:
        raise SparkHubError(f"invalid card metadata: {e}", where=str(folder / CARD_NAME)) from e

    plan = PushResult(repo_id=repo_id, repo_type=repo_type, revision=revision, files=files, card=card, dry_run=True)
    return plan, manifest


# ------------------------------------------------------------------------------------------------
# Network side
# ------------------------------------------------------------------------------------------------
def _transport_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        for name in ("TransportError", "ConnectionError", "Timeout"):
            cls = getattr(mod, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                errors.append(cls)
    return tuple(errors)


def is_transient(error: BaseException) -> bool:
    """True for errors worth retrying: HTTP 408/429/5xx, dropped connections, timeouts."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(error, OfflineModeIsEnabled) or _is_xet_unsupported(error):
        return False
    if isinstance(error, HfHubHTTPError):
        response = getattr(error, "response", None)
        return response is not None and response.status_code in TRANSIENT_STATUS
    return isinstance(error, _transport_errors())


def _is_xet_unsupported(error: BaseException) -> bool:
    """hf_xet's error when the endpoint has no Xet storage (a mirror or test server): not transient."""
    return "xet-write-token" in str(error) or "xet-read-token" in str(error)


def _describe(error: BaseException) -> str:
    """One short line about ``error`` (status and first line of the message; never headers)."""
    status = getattr(getattr(error, "response", None), "status_code", None)
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    text = f"{type(error).__name__}: {first}"
    if status is not None and str(status) not in text:
        text = f"HTTP {status} {text}"
    return text if len(text) <= 240 else text[:237] + "..."


def _with_retries(step: Callable[[int], T], *, what: str, retry: RetryPolicy) -> T:
    """Run ``step(attempt)`` (attempt counts from 1), retrying transient errors with backoff."""
    attempts = max(1, retry.attempts)
    for attempt in range(1, attempts + 1):
        try:
            return step(attempt)
        except Exception as error:
            if not is_transient(error) or attempt == attempts:
                raise
            delay = retry.delay(attempt)
            logger.warning("%s failed (%s); retrying in %.2fs [attempt %d/%d]",
                           what, _describe(error), delay, attempt + 1, attempts)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _as_spark_error(error: BaseException, *, action: str, target: str, retry: RetryPolicy) -> SparkHubError:
    """Translate a `huggingface_hub` / transport error into a one-line `SparkHubError`."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(error, RevisionNotFoundError):
        return SparkHubError(f"revision not found: {target}", hint="check --revision (a branch, tag or commit)")
    if isinstance(error, GatedRepoError):
        return SparkHubError(f"{target} is gated", hint="request access on the Hub, then retry")
    if isinstance(error, RepositoryNotFoundError):
        return SparkHubError(
            f"repository not found or not accessible: {target}",
            hint="check the repo id and --repo-type, and that your token (HF_TOKEN or `hf auth login`) can read it",
        )
    if isinstance(error, RemoteEntryNotFoundError):
        return SparkHubError(f"file not found: {target}")
    if _is_xet_unsupported(error):
        return SparkHubError(
            f"{action} {target} failed: the Hub endpoint does not offer Xet storage ({_describe(error)})",
            hint="set HF_HUB_DISABLE_XET=1 before starting spark-hub to upload through LFS instead",
        )
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, HfHubHTTPError) and status in (401, 403):
        return SparkHubError(
            f"{action} {target} was refused (HTTP {status})",
            hint="set HF_TOKEN or run `hf auth login` with a token that has write access",
        )
    if isinstance(error, HfHubHTTPError) and status == 412:
        return SparkHubError(
            f"{target} changed while {action.lower()} was in progress (someone else pushed)",
            hint="nothing was committed; re-run the command",
        )
    if is_transient(error):
        return SparkHubError(
            f"{action} {target} failed after {retry.attempts} attempt(s): {_describe(error)}",
            hint="nothing was committed and the local folder is unchanged; re-run the same command",
        )
    return SparkHubError(f"{action} {target} failed: {_describe(error)}")


def _api(endpoint: str | None, token: str | None):
    from huggingface_hub import HfApi

    return HfApi(
        endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None,
        token=token,
        library_name="spark-hub",
        library_version=__version__,
    )


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _remote_file_matches(api, repo_id: str, repo_type: str, revision: str, path: str, data: bytes) -> bool:
    """Whether ``path`` at ``revision`` holds exactly ``data`` (compared by hash, nothing downloaded)."""
    infos = api.get_paths_info(repo_id, [path], repo_type=repo_type, revision=revision)
    for info in infos:
        if getattr(info, "path", None) != path:
            continue
        lfs = getattr(info, "lfs", None)
        if lfs is not None:
            return lfs.sha256 == hashlib.sha256(data).hexdigest()
        return getattr(info, "blob_id", None) == _git_blob_sha1(data)
    return False


def _commit_message(manifest: dict[str, Any], n_files: int) -> tuple[str, str]:
    summary = f"spark-hub: {manifest['kind']} ({n_files} files)"
    details = {
        "spark_hub_version": manifest.get("spark_hub_version"),
        "git_sha": manifest.get("git_sha"),
        "build_key": manifest.get("build_key"),
        "created_at": manifest.get("created_at"),
    }
    description = "\n".join(f"{k}: {v}" for k, v in details.items() if v)
    return summary, description


def push(
    folder: str | Path,
    repo_id: str,
    *,
    repo_type: str | None = None,
    revision: str = DEFAULT_REVISION,
    private: bool = False,
    overwrite: bool = False,
    dry_run: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    tag: str | None = None,
    ignore_patterns: Iterable[str] = (),
    retry: RetryPolicy | None = None,
) -> PushResult:
    """Publish a spark-hub output folder to a Hub branch in a single commit.

    Args:
        folder: the output folder (holds ``manifest.json``; ``README.md`` is rendered from the
            manifest when absent).
        repo_id: ``namespace/name``; created if missing (``exist_ok``).
        repo_type: ``"dataset"`` or ``"model"``; default from the manifest kind (dataset -> dataset,
            prm/policy -> model).
        revision: target branch, created from ``main`` when missing. See `default_revision`.
        private: create the repo private (an existing repo keeps its visibility).
        overwrite: allow replacing an artifact already on ``revision``; remote files the new
            artifact lacks are deleted in the same commit.
        dry_run: only plan; no request is sent.
        endpoint: Hub URL; default ``HF_ENDPOINT``, else huggingface.co.
        token: Hub token; default the usual `huggingface_hub` sources (``HF_TOKEN``, stored login).
        commit_message: summary line of the commit (default names the artifact kind).
        tag: also tag the commit (e.g. ``v1.0``).
        ignore_patterns: extra fnmatch patterns (POSIX relative paths) to leave out.
        retry: backoff for transient errors; default `DEFAULT_RETRY`.

    Returns:
        `PushResult` with the commit sha and URL (or the plan when ``dry_run``).

    Raises:
        `SparkHubError`: invalid folder or manifest, the revision already holds an artifact (hint
            ``--overwrite``), authentication problems, or a push that kept failing. Nothing is
            committed in those cases and the local folder is never modified.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    retry = retry or DEFAULT_RETRY
    plan, manifest = plan_push(
        folder, repo_id, repo_type=repo_type, revision=revision, token=token, ignore_patterns=ignore_patterns
    )
    if dry_run:
        logger.info("%s", plan.render())
        return plan

    repo_type = plan.repo_type
    target = f"{repo_type} {repo_id}@{revision}"
    api = _api(endpoint, token)
    try:
        repo_url = _with_retries(
            lambda _: api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True),
            what=f"create {repo_type} repo {repo_id}", retry=retry,
        )
        repo_id = repo_url.repo_id or repo_id
        target = f"{repo_type} {repo_id}@{revision}"
        if revision != DEFAULT_REVISION:
            _with_retries(
                lambda _: api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True),
                what=f"create branch {revision}", retry=retry,
            )
        parent = _with_retries(
            lambda _: api.repo_info(repo_id, repo_type=repo_type, revision=revision).sha,
            what=f"read {target}", retry=retry,
        )
        remote_files = _with_retries(
            lambda _: api.list_repo_files(repo_id, repo_type=repo_type, revision=parent),
            what=f"list {target}", retry=retry,
        )
    except SparkHubError:
        raise
    except Exception as error:
        raise _as_spark_error(error, action="Pushing to", target=target, retry=retry) from error

    manifest_bytes = (Path(folder) / MANIFEST_NAME).read_bytes()
    if MANIFEST_NAME in remote_files and not overwrite:
        same = False
        try:
            same = _remote_file_matches(api, repo_id, repo_type, parent, MANIFEST_NAME, manifest_bytes)
        except Exception:  # only used to word the message
            logger.debug("could not compare the remote manifest", exc_info=True)
        what = "this exact artifact" if same else "a spark-hub artifact"
        raise SparkHubError(
            f"{target} already holds {what} ({MANIFEST_NAME} at {parent[:8]})",
            hint="pass --overwrite to replace it, or push to another --revision",
        )

    local_paths = {f.path for f in plan.files}
    deleted = sorted(p for p in remote_files if overwrite and p not in local_paths and p != ".gitattributes")
    summary, description = _commit_message(manifest, len(plan.files))
    summary = commit_message or summary

    def operations() -> list:
        ops: list = [CommitOperationDelete(path_in_repo=p) for p in deleted]
        for f in plan.files:
            source = f.content if f.content is not None else str(f.source)
            ops.append(CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=source))
        return ops

    def commit_step(attempt: int):
        if attempt > 1:
            # The previous attempt may have committed even though its answer was lost.
            head = api.repo_info(repo_id, repo_type=repo_type, revision=revision).sha
            if head != parent:
                if _remote_file_matches(api, repo_id, repo_type, head, MANIFEST_NAME, manifest_bytes):
                    logger.info("the previous attempt's commit %s landed; not committing again", head[:8])
                    return head, None
                raise SparkHubError(
                    f"{target} changed while pushing (now at {head[:8]}, expected {parent[:8]})",
                    hint="nothing of this push was committed; re-run the command",
                )
        info = api.create_commit(
            repo_id, operations(), commit_message=summary, commit_description=description,
            repo_type=repo_type, revision=revision, parent_commit=parent,
        )
        return info.oid, info.commit_url

    size = format_size(plan.total_size)
    logger.info("pushing %d files (%s) to %s", len(plan.files), size, target)
    try:
        commit_sha, commit_url = _with_retries(commit_step, what=f"commit to {target}", retry=retry)
    except SparkHubError:
        raise
    except Exception as error:
        raise _as_spark_error(error, action="Pushing to", target=target, retry=retry) from error

    result = dataclasses.replace(
        plan, repo_id=repo_id, dry_run=False, deleted=deleted, commit_sha=commit_sha,
        commit_url=commit_url or _commit_url(api.endpoint, repo_type, repo_id, commit_sha),
    )
    if tag:
        tag_release(repo_id, tag, commit_sha, repo_type=repo_type, endpoint=endpoint, token=token,
                    overwrite=overwrite, retry=retry)
        result.tag = tag
    logger.info("pushed %s to %s (commit %s)", size, target, commit_sha[:8])
    return result


def _commit_url(endpoint: str, repo_type: str, repo_id: str, sha: str) -> str:
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    return f"{endpoint.rstrip('/')}/{prefix}{repo_id}/commit/{sha}"


def tag_release(
    repo_id: str,
    tag: str,
    revision: str = DEFAULT_REVISION,
    *,
    repo_type: str = "model",
    endpoint: str | None = None,
    token: str | None = None,
    message: str | None = None,
    overwrite: bool = False,
    retry: RetryPolicy | None = None,
) -> str:
    """Tag ``revision`` of a Hub repo (e.g. the checkpoint branch chosen for a release).

    Args:
        repo_id: ``namespace/name``.
        tag: tag name (e.g. ``v1.0``).
        revision: branch, tag or commit to tag.
        repo_type: ``"model"`` (default) or ``"dataset"``.
        overwrite: move an existing tag; without it an existing tag on another commit is an error.
        message: optional tag message.

    Returns:
        The commit sha that the tag points to.
    """
    retry = retry or DEFAULT_RETRY
    api = _api(endpoint, token)
    target = f"{repo_type} {repo_id}@{revision}"
    try:
        sha = _with_retries(lambda _: api.repo_info(repo_id, repo_type=repo_type, revision=revision).sha,
                            what=f"read {target}", retry=retry)

        def step(_attempt: int) -> None:
            refs = api.list_repo_refs(repo_id, repo_type=repo_type)
            existing = {t.name: t.target_commit for t in refs.tags}
            if existing.get(tag) == sha:
                return
            if tag in existing:
                if not overwrite:
                    raise SparkHubError(
                        f"tag {tag!r} already exists on {repo_id} (at {existing[tag][:8]})",
                        hint="pass --overwrite to move it, or choose another --tag",
                    )
                api.delete_tag(repo_id, tag=tag, repo_type=repo_type)
            api.create_tag(repo_id, tag=tag, tag_message=message, revision=sha, repo_type=repo_type)

        _with_retries(step, what=f"tag {target} as {tag}", retry=retry)
    except SparkHubError:
        raise
    except Exception as error:
        raise _as_spark_error(error, action="Tagging", target=target, retry=retry) from error
    logger.info("tagged %s (%s) as %s", target, sha[:8], tag)
    return sha


_EXECUTOR: concurrent.futures.ThreadPoolExecutor | None = None
_EXECUTOR_LOCK = threading.Lock()


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            # One worker: checkpoint pushes run in order, one at a time, like HfApi.run_as_future.
            _EXECUTOR = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="spark-hub-push")
        return _EXECUTOR


def push_checkpoint_async(
    folder: str | Path, repo_id: str, step: int, **kwargs: Any
) -> concurrent.futures.Future[PushResult]:
    """Push a training checkpoint to branch ``step-{step:06d}`` in the background.

    The folder and its manifest are checked before returning (so a broken checkpoint fails at once);
    the upload then runs on a single background thread, so pushes happen in submission order and the
    training loop is not blocked. Do not modify ``folder`` until the future is done. Pending pushes
    finish before the interpreter exits.

    Args:
        folder: the checkpoint folder (with a ``manifest.json``).
        repo_id: target model repo.
        step: training step, used for the branch name (`checkpoint_revision`).
        **kwargs: passed to `push` (``revision`` overrides the branch; ``ignore_patterns``
            defaults to `CHECKPOINT_IGNORED`; ``commit_message`` to ``"checkpoint step N"``).

    Returns:
        A `concurrent.futures.Future` resolving to the `PushResult` (or raising its error).
    """
    kwargs.setdefault("revision", checkpoint_revision(step))
    kwargs.setdefault("ignore_patterns", CHECKPOINT_IGNORED)
    kwargs.setdefault("commit_message", f"checkpoint step {step}")
    if not Path(folder).is_dir():
        raise SparkHubError(f"not a folder: {folder}", hint="pass the checkpoint folder the trainer wrote")
    read_manifest(folder)
    logger.info("queueing checkpoint push of %s to %s@%s", folder, repo_id, kwargs["revision"])
    return _executor().submit(push, folder, repo_id, **kwargs)


# ------------------------------------------------------------------------------------------------
# Download
# ------------------------------------------------------------------------------------------------
def _resolve_repo(api, repo_id: str, repo_type: str | None, revision: str | None) -> tuple[str, str]:
    """``(repo_type, commit_sha)`` for ``repo_id``; tries model then dataset when the type is unknown."""
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    types = [repo_type] if repo_type else ["model", "dataset"]
    last: Exception | None = None
    for candidate in types:
        try:
            info = api.repo_info(repo_id, repo_type=candidate, revision=revision)
            return candidate, info.sha
        except RevisionNotFoundError as error:
            branches = []
            try:
                branches = [b.name for b in api.list_repo_refs(repo_id, repo_type=candidate).branches]
            except Exception:
                logger.debug("could not list refs", exc_info=True)
            raise SparkHubError(
                f"revision {revision!r} not found in {candidate} {repo_id}",
                hint=f"branches: {', '.join(sorted(branches))}" if branches else "check --revision",
            ) from error
        except RepositoryNotFoundError as error:
            last = error
    kinds = repo_type or "model or dataset"
    raise SparkHubError(
        f"no {kinds} repository {repo_id} (or no access)",
        hint="check the repo id and --repo-type; for private repos set HF_TOKEN or run `hf auth login`",
    ) from last


def _verify_files(folder: Path, manifest: dict[str, Any], where: str) -> None:
    for rel, expected in sorted((manifest.get("files") or {}).items()):
        if rel == CARD_NAME:
            continue
        path = folder / rel
        if not path.is_file():
            raise SparkHubError(f"{rel} is listed in {MANIFEST_NAME} but missing", where=where,
                                hint="the artifact was pushed incompletely; push it again")
        sha, _ = _hash_and_scan(path, [])
        if sha != expected["sha256"]:
            raise SparkHubError(f"{rel} does not match its sha256 in {MANIFEST_NAME}", where=where,
                                hint="the download is corrupt or the artifact was modified; retry or re-push")


def download(
    repo_id: str,
    *,
    revision: str | None = None,
    repo_type: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    local_dir: str | Path | None = None,
    verify: bool = True,
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

    Returns:
        The local folder holding the artifact.

    Raises:
        `SparkHubError`: unknown repo or revision, no ``manifest.json``, an invalid manifest, or
            files that do not match it.
    """
    from huggingface_hub.errors import EntryNotFoundError

    api = _api(endpoint, token)
    retry = DEFAULT_RETRY
    target = f"{repo_id}@{revision or DEFAULT_REVISION}"
    try:
        repo_type, sha = _resolve_repo(api, repo_id, repo_type, revision)
        target = f"{repo_type} {repo_id}@{revision or DEFAULT_REVISION}"
        try:
            api.hf_hub_download(repo_id, MANIFEST_NAME, repo_type=repo_type, revision=sha,
                                local_dir=str(local_dir) if local_dir else None)
        except EntryNotFoundError as error:
            raise SparkHubError(
                f"{target} has no {MANIFEST_NAME}, so it is not a spark-hub artifact",
                hint="publish artifacts with `spark-hub push DIR REPO_ID`",
            ) from error
        path = Path(api.snapshot_download(repo_id, repo_type=repo_type, revision=sha,
                                          local_dir=str(local_dir) if local_dir else None))
    except SparkHubError:
        raise
    except Exception as error:
        raise _as_spark_error(error, action="Downloading", target=target, retry=retry) from error
    where = f"{repo_id}@{sha[:8]}"
    try:
        manifest = read_manifest(path)
    except SparkHubError as error:
        raise SparkHubError(f"invalid {MANIFEST_NAME}: {error.message}", where=where,
                            hint="this artifact was not written by a compatible spark-hub") from error
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
) -> tuple[Path, str]:
    """Fetch a Hub dataset (e.g. ``--problems org/name --revision R``) pinned to a commit.

    Args:
        repo_id: dataset repo id.
        revision: branch, tag or commit; default ``main``.
        allow_patterns: only download files matching these patterns (e.g. ``"*.jsonl"``).

    Returns:
        ``(local_folder, commit_sha)``: record the sha in the manifest's ``inputs`` so the exact
        data can be fetched again.
    """
    api = _api(endpoint, token)
    target = f"dataset {repo_id}@{revision or DEFAULT_REVISION}"
    try:
        _, sha = _resolve_repo(api, repo_id, "dataset", revision)
        path = api.snapshot_download(repo_id, repo_type="dataset", revision=sha, allow_patterns=allow_patterns)
    except SparkHubError:
        raise
    except Exception as error:
        raise _as_spark_error(error, action="Downloading", target=target, retry=DEFAULT_RETRY) from error
    logger.info("resolved %s to commit %s", target, sha)
    return Path(path), sha


__all__ = [
    "CHECKPOINT_IGNORED",
    "DEFAULT_RETRY",
    "PlannedFile",
    "PushResult",
    "RetryPolicy",
    "check_revision",
    "checkpoint_revision",
    "collect_files",
    "default_revision",
    "download",
    "format_size",
    "is_transient",
    "plan_push",
    "push",
    "push_checkpoint_async",
    "resolve_hub_dataset",
    "sanitize_revision",
    "tag_release",
]
