"""``spark-hub validate``: check any dataset against the spark-hub schemas and its manifest.

Accepts a dataset folder (``data/``, ``verifications/``, ``manifest.json``), a single Parquet or
JSONL file of step records or verifications. Rows of every released schema version (v1, v2) are
accepted, each checked against the version it declares. Every error names the file, the record
(index and id) and the JSON path of the offending value.

A dataset folder is also checked against its manifest: every file of the manifest's file table
must exist with the recorded sha256 and size (``README.md`` too, when the table lists it), no data
shard may be missing from the table, and the row counts of ``data/`` and ``verifications/`` must
equal the manifest's statistics. `validate_dataset` is what ``spark-hub push`` runs before uploading.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from spark_hub.errors import SparkHubError
from spark_hub.inputs import iter_rows
from spark_hub.manifest import MANIFEST_NAME
from spark_hub.records import CONFIG_RECORDS
from spark_hub.schema import iter_errors, schema_of
from spark_hub.storage import CONFIGS

_SCHEMA_OF_CONFIG = {config: cls.SCHEMA for config, cls in CONFIG_RECORDS.items()}
_RECORD_OF_SCHEMA = {cls.SCHEMA: cls for cls in CONFIG_RECORDS.values()}


def _check_rows(rows: Iterator[tuple[str, dict[str, Any]]], schema: str | None, errors: list[str],
                max_errors: int) -> int:
    """Schema errors (all of them, with paths) of each row; then, for a schema-valid row, what the
    schema cannot express (derived ids, per-step list lengths, step spans) via `Record.from_dict`."""
    checked = 0
    for where, row in rows:
        name = schema or (schema_of(row) if isinstance(row, dict) else "step_record")
        rid = row.get("id") if isinstance(row, dict) else None
        at = f"{where}{f' (id {rid})' if rid else ''}"
        found = False
        for path, message in iter_errors(name, row):
            errors.append(f"{at}: {path}: {message}")
            found = True
            if len(errors) >= max_errors:
                return checked + 1
        if not found:
            try:
                _RECORD_OF_SCHEMA[name].from_dict(row, where=at)
            except SparkHubError as e:
                errors.append(e.one_line())
                if len(errors) >= max_errors:
                    return checked + 1
        checked += 1
    return checked


def _parquet_rows(path: Path) -> int | None:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except Exception:  # unreadable: reported when its rows are read
        return None


def check_files(folder: str | Path, manifest: dict[str, Any]) -> list[str]:
    """Differences between ``folder`` and the manifest's file table and row statistics."""
    from spark_hub.io import sha256_file

    folder = Path(folder)
    errors: list[str] = []
    table = manifest.get("files")
    if not isinstance(table, dict):
        return [f"{folder / MANIFEST_NAME}: $.files: missing (the file table is how a dataset is checked)"]
    for rel, expected in sorted(table.items()):
        path = folder / rel
        if not path.is_file():
            errors.append(f"{path}: listed in {MANIFEST_NAME} but missing")
            continue
        size = path.stat().st_size
        if "size" in expected and size != expected["size"]:
            errors.append(f"{path}: size {size} differs from {MANIFEST_NAME} ({expected['size']}): "
                          "the file changed after the manifest was written")
            continue
        sha = sha256_file(path)
        if sha != expected.get("sha256"):
            errors.append(f"{path}: sha256 {sha[:12]} differs from {MANIFEST_NAME} ({str(expected.get('sha256'))[:12]}): "
                          "the file changed after the manifest was written")
    for config, sub in CONFIGS.items():
        for shard in sorted((folder / sub).glob("*.parquet")):
            rel = shard.relative_to(folder).as_posix()
            if rel not in table:
                errors.append(f"{shard}: not in the file table of {MANIFEST_NAME} (a shard from another build?)")
    # row counts against the statistics the build recorded (only the totals it keeps)
    stats = manifest.get("statistics") or {}
    expected_rows = {"default": stats.get("records")}
    if isinstance(stats.get("verifications"), int):
        meta = ((stats.get("meta_critique") or {}).get("calls") or {})
        expected_rows["verifications"] = stats["verifications"] + sum(v for v in meta.values() if isinstance(v, int))
    for config, expected in expected_rows.items():
        if not isinstance(expected, int):
            continue
        shards = sorted((folder / CONFIGS[config]).glob("*.parquet"))
        counts = [_parquet_rows(s) for s in shards]
        if None in counts:
            continue
        if sum(counts) != expected:
            per_file = ", ".join(f"{s.name}: {n}" for s, n in zip(shards, counts))
            errors.append(f"{folder / CONFIGS[config]}: {sum(counts)} rows ({per_file}), {MANIFEST_NAME} "
                          f"statistics say {expected}")
    return errors


def validate_path(path: str | Path, *, max_errors: int = 20) -> tuple[list[str], int]:
    """Validate ``path``; returns ``(errors, records_checked)``. Never raises on bad records."""
    path = Path(path)
    errors: list[str] = []
    checked = 0
    if path.is_dir():
        manifest_path = path / MANIFEST_NAME
        manifest = None
        if manifest_path.exists():
            try:
                manifest = json.loads(manifest_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                errors.append(f"{manifest_path}:{getattr(e, 'lineno', 1)}: invalid JSON ({getattr(e, 'msg', e)})")
            else:
                for jpath, message in iter_errors("manifest", manifest):
                    errors.append(f"{manifest_path}: {jpath}: {message}")
                if isinstance(manifest, dict):
                    errors.extend(check_files(path, manifest))
        found = False
        for config, folder in CONFIGS.items():
            for shard in sorted((path / folder).glob("*.parquet")):
                found = True
                if len(errors) >= max_errors:
                    return errors[:max_errors], checked
                try:
                    checked += _check_rows(iter_rows(shard), _SCHEMA_OF_CONFIG[config], errors,
                                           max_errors - len(errors))
                except SparkHubError as e:
                    errors.append(e.one_line())
                except (OSError, ValueError) as e:  # pyarrow on a damaged shard
                    errors.append(f"{shard}: unreadable Parquet ({' '.join(str(e).split())})")
        if not found:
            raise SparkHubError(f"no data/*.parquet or verifications/*.parquet in {path}",
                                hint="pass a spark-hub dataset folder or a .parquet/.jsonl file")
        if not manifest_path.exists():
            errors.append(f"{manifest_path}: missing (every spark-hub dataset carries its manifest)")
        return errors[:max_errors], checked
    try:
        checked = _check_rows(iter_rows(path), None, errors, max_errors)
    except SparkHubError as e:
        errors.append(e.one_line())
    except (OSError, ValueError) as e:  # pyarrow on a damaged file
        errors.append(f"{path}: unreadable ({' '.join(str(e).split())})")
    return errors, checked


def validate_dataset(folder: str | Path, *, max_errors: int = 20) -> list[str]:
    """Every check of `validate_path` on a dataset folder; returns the errors (empty: valid).

    Used by ``spark-hub push`` before anything is uploaded.
    """
    return validate_path(folder, max_errors=max_errors)[0]
