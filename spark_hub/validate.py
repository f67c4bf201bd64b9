"""``spark-hub validate``: check any dataset against the spark-hub schemas.

Accepts a dataset folder (``data/``, ``verifications/``, ``manifest.json``), a single Parquet or
JSONL file of step records or verifications. Every error names the file, the record (index and id)
and the JSON path of the offending value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from spark_hub.errors import SparkHubError
from spark_hub.inputs import iter_rows
from spark_hub.manifest import MANIFEST_NAME
from spark_hub.schema import iter_errors
from spark_hub.storage import CONFIGS


def _schema_for(row: dict[str, Any]) -> str:
    return "verification" if "raw_text" in row or "verification_index" in row else "step_record"


def _check_rows(rows: Iterator[tuple[str, dict[str, Any]]], schema: str | None, errors: list[str],
                max_errors: int) -> int:
    checked = 0
    for where, row in rows:
        name = schema or _schema_for(row)
        rid = row.get("id")
        for path, message in iter_errors(name, row):
            errors.append(f"{where}{f' (id {rid})' if rid else ''}: {path}: {message}")
            if len(errors) >= max_errors:
                return checked + 1
        checked += 1
    return checked


def validate_path(path: str | Path, *, max_errors: int = 20) -> tuple[list[str], int]:
    """Validate ``path``; returns ``(errors, records_checked)``. Never raises on bad records."""
    path = Path(path)
    errors: list[str] = []
    checked = 0
    if path.is_dir():
        found = False
        for config, folder in CONFIGS.items():
            schema = "step_record" if config == "default" else "verification"
            for shard in sorted((path / folder).glob("*.parquet")):
                found = True
                checked += _check_rows(iter_rows(shard), schema, errors, max_errors - len(errors))
                if len(errors) >= max_errors:
                    return errors, checked
        manifest = path / MANIFEST_NAME
        if manifest.exists():
            try:
                data = json.loads(manifest.read_text())
            except json.JSONDecodeError as e:
                errors.append(f"{manifest}:{e.lineno}: invalid JSON ({e.msg})")
            else:
                for jpath, message in iter_errors("manifest", data):
                    errors.append(f"{manifest}: {jpath}: {message}")
        elif found:
            errors.append(f"{manifest}: missing (every spark-hub dataset carries its manifest)")
        if not found:
            raise SparkHubError(f"no data/*.parquet or verifications/*.parquet in {path}",
                                hint="pass a spark-hub dataset folder or a .parquet/.jsonl file")
        return errors, checked
    try:
        checked = _check_rows(iter_rows(path), None, errors, max_errors)
    except SparkHubError as e:
        errors.append(e.one_line())
    return errors, checked
