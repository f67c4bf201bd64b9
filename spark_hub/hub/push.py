"""Push a spark-hub output folder to a Hub branch: plan locally, check remotely, then write once.

A push runs in three phases, and only the last one writes:

1. **Plan** (`plan_push`, no network): the manifest is validated, every file it lists must still
   match its sha256, a dataset's rows must match their schema, no file may contain the Hub token,
   and the card (``README.md``) is rendered from the manifest for the target repo.
2. **Check** (read-only requests): a token is available; the target branch (or, for a new branch,
   ``main`` it starts from) is compared file by file (sha256 for LFS files, git blob sha1 for the
   others) with the plan. The same files already there is success: **already up to date**, nothing is
   committed. A different artifact on an existing branch needs ``overwrite``; an existing tag on
   another commit needs ``overwrite``. A dry run stops here and reports what the push would do.
3. **Write**: create the repo and the branch when missing, one commit (`HfApi.create_commit`) with
   every file (and, on a new branch or with ``overwrite``, the deletion of files the artifact does
   not have), then the tag. A commit whose answer was lost is recognised, not made twice.

Local state (``.spark/``, temporary files) is never pushed; the local folder is never modified.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import fnmatch
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any, Iterable

from spark_hub import __version__
from spark_hub.errors import SparkHubError
from spark_hub.hub.retries import (
    RetryPolicy,
    as_spark_error,
    default_retry,
    describe,
    is_transient,
    quiet_hub,
    with_retries,
)
from spark_hub.hub.revisions import DEFAULT_REVISION, check_revision, checkpoint_revision
from spark_hub.manifest import CARD_NAME, LOCAL_STATE_DIRS, MANIFEST_NAME, read_manifest

logger = logging.getLogger("spark_hub.hub")

#: Manifest ``kind`` -> Hub repo type.
REPO_TYPE_FOR_KIND = {"dataset": "dataset", "prm": "model", "policy": "model"}
#: Never pushed, whatever the caller asks: local state, VCS folders, caches, temporary files.
ALWAYS_IGNORED = (
    *(f"{d}/**" for d in LOCAL_STATE_DIRS), ".git/**", ".cache/**", "**/__pycache__/**", "**/.DS_Store",
    "**/.*.tmp", "**/*.tmp", "**/*.partial", "**/*.lock",
)
#: Extra patterns left out of checkpoint pushes (nested trainer checkpoints, RNG states).
CHECKPOINT_IGNORED = ("checkpoint-*/**", "**/*.pth")
#: Remote files that are the repo's own, never compared nor deleted.
REPO_FILES = (".gitattributes",)


@dataclasses.dataclass(frozen=True)
class PlannedFile:
    """One file of a push: its path in the repo, size, hashes, and where the bytes come from."""

    path: str
    size: int
    source: Path | None = None  # None: generated in memory (the card)
    content: bytes | None = None
    sha256: str | None = None
    git_sha1: str | None = None  # the git blob id the Hub reports for a non-LFS file


@dataclasses.dataclass
class PushResult:
    """What `push` did, or would do with ``dry_run=True``.

    Attributes:
        repo_id: ``namespace/name`` of the target repo (as the Hub resolved it after creation).
        repo_type: ``"dataset"`` or ``"model"``.
        revision: the branch that was (or would be) written.
        files: every file of the artifact, sorted by path.
        card: the card text (``README.md``) pushed with the artifact, rendered from the manifest.
        dry_run: True when nothing was written.
        up_to_date: the revision already held exactly these files: nothing was (or would be)
            committed.
        remote_checked: the remote checks ran (False for a dry run that could not reach the Hub).
        new_repo / new_branch: the repo / branch did not exist (and was, or would be, created).
        deleted: remote files removed (or to be removed) because the artifact does not have them.
        commit_sha / commit_url: the commit that holds the artifact (None for a dry run, unless
            the revision is already up to date).
        tag: the tag on that commit, if any.
        note: why the remote was not checked (dry run only).
    """

    repo_id: str
    repo_type: str
    revision: str
    files: list[PlannedFile]
    card: str
    dry_run: bool = False
    up_to_date: bool = False
    remote_checked: bool = False
    new_repo: bool = False
    new_branch: bool = False
    deleted: list[str] = dataclasses.field(default_factory=list)
    commit_sha: str | None = None
    commit_url: str | None = None
    tag: str | None = None
    note: str | None = None

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def target(self) -> str:
        return f"{self.repo_id}@{self.revision}"

    def summary(self) -> str:
        """One line for the terminal: what was pushed, or that the revision was already up to date."""
        tag = f" (tag {self.tag})" if self.tag else ""
        if self.up_to_date:
            where = f" (commit {self.commit_sha[:8]})" if self.commit_sha else ""
            prefix = "Dry run: " if self.dry_run else ""
            return f"{prefix}{self.target} is already up to date{where}{tag}: nothing to push"
        if self.dry_run:
            return (f"Dry run: would push {len(self.files)} files ({format_size(self.total_size)}) to "
                    f"{self.target}{tag}")
        return f"Pushed {len(self.files)} files ({format_size(self.total_size)}) to {self.target}{tag}"

    def _remote_line(self) -> str:
        if not self.remote_checked:
            return f"remote:   not checked ({self.note or 'unknown'})"
        if self.up_to_date:
            return f"remote:   already up to date: {self.target} holds this exact artifact"
        actions = []
        if self.new_repo:
            actions.append("create the repo")
        if self.new_branch:
            actions.append(f"create branch {self.revision} from {DEFAULT_REVISION}")
        actions.append("commit the files below")
        if self.tag:
            actions.append(f"tag the commit {self.tag}")
        return "remote:   " + ", ".join(actions)

    def render(self, *, with_card: bool = True) -> str:
        """Human-readable plan: target, what happens remotely, each file with its size, the card."""
        if self.dry_run:
            head = "Dry run: nothing was sent." if not self.remote_checked else \
                "Dry run: nothing was written (remote checked read-only)."
        elif self.up_to_date:
            head = f"Already up to date: commit {self.commit_sha}."
        else:
            head = f"Pushed commit {self.commit_sha}."
        lines = [
            head,
            f"repo:     {self.repo_id} ({self.repo_type})",
            f"revision: {self.revision}" + (f" (tag {self.tag})" if self.tag else ""),
        ]
        if self.dry_run:
            lines.append(self._remote_line())
        lines.append(f"files:    {len(self.files)}, {format_size(self.total_size)}")
        width = max((len(f.path) for f in self.files), default=0)
        lines += [f"  {f.path:<{width}}  {format_size(f.size):>10}" for f in self.files]
        if self.deleted:
            lines.append("deleted on the remote:" if not self.dry_run else "to delete on the remote:")
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


def _env_api_keys() -> set[str]:
    return {v for k, v in os.environ.items() if k.upper().endswith("_API_KEY") and v}


def known_tokens(token: str | None = None) -> list[str]:
    """Secret values that must never be published: the Hub token (explicit, ``HF_TOKEN``, the stored
    login) and the API keys named by ``*_API_KEY`` environment variables."""
    candidates = [token, os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    candidates += sorted(_env_api_keys())
    try:
        from huggingface_hub import constants

        token_path = Path(constants.HF_TOKEN_PATH)
        if token_path.is_file():
            candidates.append(token_path.read_text().strip())
    except Exception:  # pragma: no cover - best effort only
        logger.debug("could not read the stored token file", exc_info=True)
    return sorted({t for t in candidates if isinstance(t, str) and len(t) >= 8})


@dataclasses.dataclass(frozen=True)
class FileDigest:
    sha256: str
    git_sha1: str
    leaked: bool


def hash_file(path: Path, needles: Iterable[bytes] = (), chunk: int = 1 << 20) -> FileDigest:
    """sha256, git blob sha1 of ``path`` and whether any of ``needles`` occurs in it, in one pass."""
    needles = list(needles)
    size = path.stat().st_size
    digest = hashlib.sha256()
    blob = hashlib.sha1(b"blob %d\0" % size)
    overlap = max((len(n) for n in needles), default=1) - 1
    tail = b""
    found = False
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
            blob.update(block)
            if needles and not found:
                window = tail + block
                found = any(n in window for n in needles)
                tail = window[-overlap:] if overlap else b""
    return FileDigest(digest.hexdigest(), blob.hexdigest(), found)


def _bytes_file(path: str, data: bytes) -> PlannedFile:
    return PlannedFile(path, len(data), content=data, sha256=hashlib.sha256(data).hexdigest(),
                       git_sha1=hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())


def _validate_records(folder: Path) -> None:
    """`spark_hub.validate.validate_dataset`: every row against its schema, the files and row counts
    against the manifest, before anything is uploaded."""
    from spark_hub.validate import validate_dataset

    errors = validate_dataset(folder, max_errors=5)
    if errors:
        more = "" if len(errors) == 1 else f" (and {len(errors) - 1}+ more)"
        raise SparkHubError(
            f"the dataset does not match its schema or manifest: {errors[0]}{more}", where=str(folder),
            hint=f"`spark-hub validate {folder}` lists the errors; rebuild the dataset",
        )


def plan_push(
    folder: str | Path,
    repo_id: str,
    *,
    repo_type: str | None = None,
    revision: str = DEFAULT_REVISION,
    token: str | None = None,
    ignore_patterns: Iterable[str] = (),
    validate_rows: bool = True,
) -> tuple[PushResult, dict[str, Any]]:
    """Check ``folder`` and list what `push` would send, without any network access.

    The card (``README.md``) is rendered from the manifest for ``repo_id``; a ``README.md`` in the
    folder is not pushed (it is a local copy, and not part of the manifest's file table).

    Returns:
        ``(plan, manifest)``: a dry-run `PushResult` (remote not checked) and the validated manifest.

    Raises:
        `SparkHubError`: no folder, an invalid manifest, a file that no longer matches the manifest,
            a dataset row that does not match its schema, or a file containing the Hub token.
    """
    from huggingface_hub import RepoCard

    from spark_hub.cards import render_card

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
    secrets = known_tokens(token)
    needles = [t.encode() for t in secrets]
    recorded = manifest.get("files") or {}
    files: list[PlannedFile] = []
    for rel, path in collect_files(folder, patterns):
        if rel == CARD_NAME:
            continue  # rendered below from the manifest
        found = hash_file(path, needles)
        if found.leaked:
            hf_tokens = [t.encode() for t in secrets if t not in _env_api_keys()]
            what = "your Hugging Face token" if hash_file(path, hf_tokens).leaked else \
                "an API key from your environment (*_API_KEY)"
            raise SparkHubError(
                f"{rel} contains {what}; refusing to publish it",
                where=str(folder), hint="remove the secret from the config/manifest and rebuild",
            )
        expected = recorded.get(rel)
        if expected is not None and expected["sha256"] != found.sha256:
            raise SparkHubError(
                f"{rel} changed after {MANIFEST_NAME} was written (sha256 {found.sha256[:12]}, manifest says "
                f"{expected['sha256'][:12]})", where=str(folder),
                hint="re-run the stage that produced this folder, or rewrite the manifest",
            )
        files.append(PlannedFile(rel, path.stat().st_size, source=path, sha256=found.sha256,
                                 git_sha1=found.git_sha1))
    present = {f.path for f in files}
    if MANIFEST_NAME not in present:
        raise SparkHubError(f"{MANIFEST_NAME} is excluded by the ignore patterns", hint="it is always pushed")
    missing = sorted(p for p in recorded if p not in present and p != CARD_NAME and not _ignored(p, patterns))
    if missing:
        raise SparkHubError(
            f"{len(missing)} file(s) listed in {MANIFEST_NAME} are missing, e.g. {missing[0]}",
            where=str(folder), hint="re-run the stage that produced this folder",
        )
    if kind == "dataset" and validate_rows:
        _validate_records(folder)

    card = render_card(manifest, repo_id=repo_id, secrets=secrets)
    try:
        RepoCard(card)
    except ValueError as e:  # pragma: no cover - a template bug
        raise SparkHubError(f"invalid card metadata: {e}", where=str(folder / MANIFEST_NAME)) from e
    files.append(_bytes_file(CARD_NAME, card.encode("utf-8")))
    files.sort(key=lambda f: f.path)
    plan = PushResult(repo_id=repo_id, repo_type=repo_type, revision=revision, files=files, card=card, dry_run=True)
    return plan, manifest


# ------------------------------------------------------------------------------------------------
# Remote side
# ------------------------------------------------------------------------------------------------
def api_for(endpoint: str | None, token: str | None):
    """An `HfApi` for ``endpoint`` (default ``HF_ENDPOINT``) that names spark-hub in its user agent."""
    from huggingface_hub import HfApi

    return HfApi(
        endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None,
        token=token,
        library_name="spark-hub",
        library_version=__version__,
    )


def require_token(token: str | None = None) -> str:
    """The Hub token a push will use; a one-line error when there is none."""
    from huggingface_hub import get_token

    found = token or get_token()
    if not found:
        raise SparkHubError(
            "no Hugging Face token: pushing needs one with write access",
            hint="set HF_TOKEN or run `hf auth login`",
        )
    return found


@dataclasses.dataclass
class _Remote:
    """The target as it is now: what a push compares with and starts from."""

    repo_exists: bool
    branch_exists: bool
    parent: str | None  # head of the branch, or of main for a new branch; None: no repo
    files: dict[str, Any]  # path -> RepoFile at ``parent``, repo files (.gitattributes) left out
    tags: dict[str, str]


def _read_remote(api, repo_id: str, repo_type: str, revision: str, retry: RetryPolicy) -> _Remote:
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        with_retries(lambda _: api.repo_info(repo_id, repo_type=repo_type), what=f"read {repo_id}", retry=retry)
    except RepositoryNotFoundError:
        return _Remote(False, False, None, {}, {})
    refs = with_retries(lambda _: api.list_repo_refs(repo_id, repo_type=repo_type),
                        what=f"list the refs of {repo_id}", retry=retry)
    branches = {b.name: b.target_commit for b in refs.branches}
    tags = {t.name: t.target_commit for t in refs.tags}
    parent = branches.get(revision) or branches.get(DEFAULT_REVISION)
    files: dict[str, Any] = {}
    if parent:
        entries = with_retries(
            lambda _: list(api.list_repo_tree(repo_id, repo_type=repo_type, revision=parent, recursive=True)),
            what=f"list {repo_id}@{parent[:8]}", retry=retry,
        )
        files = {e.path: e for e in entries if hasattr(e, "blob_id") and e.path not in REPO_FILES}
    return _Remote(True, revision in branches, parent, files, tags)


def _same_file(local: PlannedFile, remote: Any) -> bool:
    lfs = getattr(remote, "lfs", None)
    if lfs is not None:
        return getattr(lfs, "sha256", None) == local.sha256
    return getattr(remote, "blob_id", None) == local.git_sha1


def _differences(plan: PushResult, remote: _Remote) -> list[str]:
    """Paths that differ between the plan and the remote (changed, new, or only on the remote)."""
    local = {f.path: f for f in plan.files}
    return sorted(
        [p for p, f in local.items() if p not in remote.files or not _same_file(f, remote.files[p])]
        + [p for p in remote.files if p not in local]
    )


def _up_to_date(plan: PushResult, remote: _Remote) -> bool:
    if not remote.parent or set(remote.files) != {f.path for f in plan.files}:
        return False
    return all(_same_file(f, remote.files[f.path]) for f in plan.files)


def _commit_url(endpoint: str, repo_type: str, repo_id: str, sha: str) -> str:
    prefix = "" if repo_type == "model" else f"{repo_type}s/"
    return f"{endpoint.rstrip('/')}/{prefix}{repo_id}/commit/{sha}"


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


def _remote_file_matches(api, repo_id: str, repo_type: str, revision: str, local: PlannedFile) -> bool:
    """Whether ``local.path`` at ``revision`` holds exactly ``local``'s bytes (compared by hash)."""
    infos = api.get_paths_info(repo_id, [local.path], repo_type=repo_type, revision=revision)
    return any(getattr(info, "path", None) == local.path and _same_file(local, info) for info in infos)


def _check_tag(tag: str | None, tags: dict[str, str], commit: str | None, repo_id: str, overwrite: bool) -> None:
    if tag and tag in tags and tags[tag] != commit and not overwrite:
        raise SparkHubError(
            f"tag {tag!r} already exists on {repo_id} (at {tags[tag][:8]})",
            hint="pass --overwrite to move it, or choose another --tag",
        )


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

    Idempotent: when the revision already holds exactly these files, nothing is committed and the
    result has ``up_to_date=True`` (the tag, if asked for, is still made). Everything that can make
    the push fail is checked before the first write.

    Args:
        folder: the output folder (holds ``manifest.json``); the card is rendered from the
            manifest for ``repo_id``.
        repo_id: ``namespace/name``; created if missing.
        repo_type: ``"dataset"`` or ``"model"``; default from the manifest kind (dataset -> dataset,
            prm/policy -> model).
        revision: target branch, created from ``main`` when missing (holding only this artifact).
            See `default_revision`.
        private: create the repo private (an existing repo keeps its visibility).
        overwrite: allow replacing a different artifact already on ``revision`` (remote files the
            new artifact lacks are deleted in the same commit), and moving an existing tag.
        dry_run: plan and run the read-only checks (token, up to date, overwrite and tag guards);
            nothing is written. When the Hub cannot be reached the plan says the remote was not
            checked.
        endpoint: Hub URL; default ``HF_ENDPOINT``, else huggingface.co.
        token: Hub token; default the usual `huggingface_hub` sources (``HF_TOKEN``, stored login).
        commit_message: summary line of the commit (default names the artifact kind).
        tag: also tag the commit (e.g. ``v1.0``).
        ignore_patterns: extra fnmatch patterns (POSIX relative paths) to leave out.
        retry: backoff for transient errors; default ``spark_hub.hub.DEFAULT_RETRY``.

    Returns:
        `PushResult` with the commit sha and URL (or the plan when ``dry_run``).

    Raises:
        `SparkHubError`: no token, invalid folder, manifest or rows, the revision holds another
            artifact (hint ``--overwrite``), the tag exists elsewhere, authentication problems, or a
            push that kept failing. Nothing is committed in those cases and the local folder is
            never modified.
    """
    retry = retry or default_retry()
    token = require_token(token)
    plan, manifest = plan_push(
        folder, repo_id, repo_type=repo_type, revision=revision, token=token, ignore_patterns=ignore_patterns
    )
    repo_type = plan.repo_type
    target = f"{repo_type} {repo_id}@{revision}"
    api = api_for(endpoint, token)

    # ---- check (read-only)
    try:
        remote = _read_remote(api, repo_id, repo_type, revision, retry)
    except SparkHubError:
        raise
    except Exception as error:
        from huggingface_hub.errors import OfflineModeIsEnabled

        if dry_run and (is_transient(error) or isinstance(error, OfflineModeIsEnabled)):
            plan.note = f"the Hub could not be reached: {describe(error)}"
            plan.tag = tag
            logger.warning("dry run: %s", plan.note)
            logger.info("%s", plan.render())
            return plan
        raise as_spark_error(error, action="Pushing to", target=target, retry=retry) from error
    plan.remote_checked = True
    plan.new_repo = not remote.repo_exists
    plan.new_branch = not remote.branch_exists and not (plan.new_repo and revision == DEFAULT_REVISION)
    plan.tag = tag
    local_paths = {f.path for f in plan.files}
    if _up_to_date(plan, remote):
        plan.up_to_date = True
        plan.commit_sha = remote.parent
        plan.commit_url = _commit_url(api.endpoint, repo_type, repo_id, remote.parent)
        _check_tag(tag, remote.tags, remote.parent, repo_id, overwrite)
    else:
        if remote.branch_exists and MANIFEST_NAME in remote.files and not overwrite:
            differ = _differences(plan, remote)
            raise SparkHubError(
                f"{target} already holds a different spark-hub artifact (commit {remote.parent[:8]}; "
                f"{len(differ)} file(s) differ, e.g. {differ[0]})",
                hint="pass --overwrite to replace it, or push to another --revision",
            )
        _check_tag(tag, remote.tags, None, repo_id, overwrite)
        # A new branch starts as a copy of main: it must end up holding this artifact only.
        if overwrite or not remote.branch_exists:
            plan.deleted = sorted(p for p in remote.files if p not in local_paths)
    if dry_run:
        logger.info("%s", plan.render())
        return plan

    # ---- write
    try:
        if plan.new_repo:
            repo_url = with_retries(
                lambda _: api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True),
                what=f"create {repo_type} repo {repo_id}", retry=retry,
            )
            repo_id = repo_url.repo_id or repo_id
            target = f"{repo_type} {repo_id}@{revision}"
            remote = _read_remote(api, repo_id, repo_type, revision, retry)
            plan.deleted = sorted(p for p in remote.files if p not in local_paths)
        if not remote.branch_exists and revision != DEFAULT_REVISION:
            with_retries(
                lambda _: api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True),
                what=f"create branch {revision}", retry=retry,
            )
        parent = remote.parent or with_retries(
            lambda _: api.repo_info(repo_id, repo_type=repo_type, revision=revision).sha,
            what=f"read {target}", retry=retry,
        )
    except SparkHubError:
        raise
    except Exception as error:
        raise as_spark_error(error, action="Pushing to", target=target, retry=retry) from error

    if plan.up_to_date:
        logger.info("%s already holds this exact artifact (commit %s); nothing to push", target, parent[:8])
        commit_sha, commit_url = parent, plan.commit_url
    else:
        commit_sha, commit_url = _commit(api, plan, manifest, repo_id, parent, target, commit_message, retry)
    result = dataclasses.replace(
        plan, repo_id=repo_id, dry_run=False, commit_sha=commit_sha,
        commit_url=commit_url or _commit_url(api.endpoint, repo_type, repo_id, commit_sha), tag=None,
    )
    if tag:
        tag_release(repo_id, tag, commit_sha, repo_type=repo_type, endpoint=endpoint, token=token,
                    overwrite=overwrite, retry=retry)
        result.tag = tag
    return result


def _commit(api, plan: PushResult, manifest: dict[str, Any], repo_id: str, parent: str, target: str,
            commit_message: str | None, retry: RetryPolicy) -> tuple[str, str | None]:
    """One commit of every planned file (and the planned deletions) on top of ``parent``."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    repo_type, revision = plan.repo_type, plan.revision
    summary, description = _commit_message(manifest, len(plan.files))
    summary = commit_message or summary
    manifest_file = next(f for f in plan.files if f.path == MANIFEST_NAME)

    def operations() -> list:
        ops: list = [CommitOperationDelete(path_in_repo=p) for p in plan.deleted]
        for f in plan.files:
            source = f.content if f.content is not None else str(f.source)
            ops.append(CommitOperationAdd(path_in_repo=f.path, path_or_fileobj=source))
        return ops

    def commit_step(attempt: int):
        if attempt > 1:
            # The previous attempt may have committed even though its answer was lost.
            head = api.repo_info(repo_id, repo_type=repo_type, revision=revision).sha
            if head != parent:
                if _remote_file_matches(api, repo_id, repo_type, head, manifest_file):
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
        with quiet_hub():
            commit_sha, commit_url = with_retries(commit_step, what=f"commit to {target}", retry=retry)
    except SparkHubError:
        raise
    except Exception as error:
        raise as_spark_error(error, action="Pushing to", target=target, retry=retry) from error
    logger.info("pushed %s to %s (commit %s)", size, target, commit_sha[:8])
    return commit_sha, commit_url


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

    Tagging a commit that already carries the tag is a no-op.

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
    retry = retry or default_retry()
    api = api_for(endpoint, token)
    target = f"{repo_type} {repo_id}@{revision}"
    try:
        sha = with_retries(lambda _: api.repo_info(repo_id, repo_type=repo_type, revision=revision).sha,
                           what=f"read {target}", retry=retry)

        def step(_attempt: int) -> None:
            refs = api.list_repo_refs(repo_id, repo_type=repo_type)
            existing = {t.name: t.target_commit for t in refs.tags}
            if existing.get(tag) == sha:
                return
            _check_tag(tag, existing, sha, repo_id, overwrite)
            if tag in existing:
                api.delete_tag(repo_id, tag=tag, repo_type=repo_type)
            api.create_tag(repo_id, tag=tag, tag_message=message, revision=sha, repo_type=repo_type)

        with_retries(step, what=f"tag {target} as {tag}", retry=retry)
    except SparkHubError:
        raise
    except Exception as error:
        raise as_spark_error(error, action="Tagging", target=target, retry=retry) from error
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

    The folder, its manifest and the token are checked before returning (so a broken checkpoint fails
    at once);
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
    require_token(kwargs.get("token"))
    logger.info("queueing checkpoint push of %s to %s@%s", folder, repo_id, kwargs["revision"])
    return _executor().submit(push, folder, repo_id, **kwargs)


__all__ = [
    "ALWAYS_IGNORED",
    "CARD_NAME",
    "CHECKPOINT_IGNORED",
    "PlannedFile",
    "PushResult",
    "REPO_TYPE_FOR_KIND",
    "api_for",
    "collect_files",
    "format_size",
    "hash_file",
    "known_tokens",
    "plan_push",
    "push",
    "push_checkpoint_async",
    "require_token",
    "tag_release",
]
