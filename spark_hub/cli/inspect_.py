"""``spark-hub validate`` and ``spark-hub info``: check and describe a built artifact."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from spark_hub.cli import options
from spark_hub.cli.app import user_errors
from spark_hub.errors import SparkHubError


@click.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--max-errors", default=20, show_default=True, help="Stop after this many errors.")
@user_errors
def validate(path, max_errors):
    """Check a dataset folder, Parquet or JSONL file against the spark-hub schemas.

    Each error names the file, the record and the JSON path. Exit code 1 when invalid.
    """
    from spark_hub.validate import validate_path

    errors, checked = validate_path(path, max_errors=max_errors)
    for err in errors:
        click.echo(err, err=True)
    if errors:
        click.echo(f"invalid: {len(errors)} error(s) in {checked} record(s) checked", err=True)
        sys.exit(1)
    click.echo(f"valid: {checked} record(s)")


def _looks_like_repo_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def _read_manifest(target: str, revision: str | None, endpoint: str | None) -> tuple[dict[str, Any], str | None]:
    """The manifest of a local output folder, or of a Hub repo (only manifest.json is fetched)."""
    from spark_hub.manifest import read_manifest

    path = Path(target)
    if path.exists():
        if not path.is_dir():
            raise SparkHubError(f"{target} is a file", hint="pass a spark-hub output folder or a Hub repo id")
        return read_manifest(path), None
    if not _looks_like_repo_id(target):
        raise SparkHubError(f"no such folder: {target}", hint="pass a spark-hub output folder or a Hub repo id ORG/NAME")
    from spark_hub import hub

    try:
        manifest, sha = hub.read_remote_manifest(target, revision, endpoint=endpoint)
    except SparkHubError as e:  # it may have been meant as a local folder: say that none exists either
        hint = "; ".join(h for h in (e.hint, f"there is no local folder {target} either") if h)
        raise SparkHubError(e.message, where=e.where, hint=hint) from None
    return manifest, f"{target}@{revision or 'main'} (commit {sha[:8]})"


def provenance_rows(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """``(key, value)`` rows: versions, git SHA, models with revisions, inputs with hashes."""
    rows = [
        ("kind", manifest.get("kind", "?")),
        ("spark-hub", f"{manifest.get('spark_hub_version')} (git {(manifest.get('git_sha') or 'unknown')[:12]})"),
        ("created", str(manifest.get("created_at"))),
    ]
    if manifest.get("build_key"):
        rows.append(("build key", manifest["build_key"][:16]))
    for role, model in (manifest.get("models") or {}).items():
        pin = model.get("revision") or model.get("file_hash") or model.get("fingerprint")
        rows.append((f"model: {role}", f"{model.get('id')} [{model.get('backend', '?')}] @ {pin or 'unpinned'}"))
    for name, item in (manifest.get("inputs") or {}).items():
        pin = ", ".join(f"{k} {str(item[k])[:16]}" for k in ("revision", "sha256") if item.get(k))
        rows.append((f"input: {name}", f"{item.get('source')}" + (f" ({pin})" if pin else "")))
    for name, digest in (manifest.get("prompts") or {}).items():
        rows.append((f"prompt: {name}", str(digest)[:16]))
    if manifest.get("seeds"):
        rows.append(("seeds", json.dumps(manifest["seeds"])))
    rows.append(("uses references", "yes" if manifest.get("uses_references") else "no"))
    packages = manifest.get("packages") or {}
    if packages:
        rows.append(("packages", ", ".join(f"{k} {v}" for k, v in packages.items() if v)))
    return rows


@click.command()
@click.argument("target", metavar="PATH_OR_REPO")
@click.option("--revision", default=None, metavar="REV",
              help="With a Hub repo id: the branch, tag or commit to read (default main).")
@options.hub_endpoint()
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@user_errors
def info(target, revision, hub_endpoint, as_json):
    """Print the provenance and statistics of a built artifact (from its manifest).

    PATH_OR_REPO is an output folder or a Hub repo id (ORG/NAME); of a Hub artifact only its
    manifest.json is fetched.
    """
    manifest, remote = _read_manifest(target, revision, hub_endpoint)
    if as_json:
        click.echo(json.dumps(manifest.get("statistics", {}), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{remote or target} ({manifest['kind']}, spark-hub {manifest['spark_hub_version']})")
    table.add_column("key")
    table.add_column("value", overflow="fold")
    for key, value in provenance_rows(manifest):
        table.add_row(key, value)
    table.add_section()
    for key, value in manifest.get("statistics", {}).items():
        table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    Console().print(table)
