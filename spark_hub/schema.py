"""Load and validate records against the JSON Schemas in ``spark_hub/schemas/``.

Schemas are never edited once released; a new version gets a new file and a migration here.
Validators are compiled once per schema so that validating many rows is cheap.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable, Iterator

from spark_hub.errors import SparkHubError

CURRENT_VERSION = "1"
SCHEMAS = {
    "step_record": "step_record.v1.json",
    "verification": "verification.v1.json",
    "manifest": "manifest.v1.json",
    "prm_spec": "prm_spec.v1.json",
}


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict[str, Any]:
    """Return the JSON Schema called ``name`` (``step_record``, ``verification``, ``manifest``...)."""
    if name not in SCHEMAS:
        raise SparkHubError(f"unknown schema {name!r}", hint=f"valid: {', '.join(SCHEMAS)}")
    text = resources.files("spark_hub").joinpath("schemas", SCHEMAS[name]).read_text()
    return json.loads(text)


@lru_cache(maxsize=None)
def _validator(name: str):
    import jsonschema

    schema = load_schema(name)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@lru_cache(maxsize=None)
def fast_check(name: str):
    """A compiled boolean check for schema ``name`` (fastjsonschema), for validating many rows.

    It says valid/invalid only; `iter_errors` (jsonschema) then explains an invalid row with its
    JSON path. Both read the same schema file.
    """
    import fastjsonschema

    compiled = fastjsonschema.compile(load_schema(name))

    def check(record: dict[str, Any]) -> bool:
        try:
            compiled(record)
        except fastjsonschema.JsonSchemaException:
            return False
        return True

    return check


def _json_path(error) -> str:
    path = "$"
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def iter_errors(name: str, record: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Yield ``(json_path, message)`` for each schema violation of one record."""
    version = record.get("schema_version") if isinstance(record, dict) else None
    if isinstance(record, dict) and version is not None and str(version) != CURRENT_VERSION:
        yield "$.schema_version", (
            f"unsupported schema version {version!r} (this spark-hub reads version {CURRENT_VERSION})"
        )
        return
    for error in sorted(_validator(name).iter_errors(record), key=lambda e: list(map(str, e.path))):
        yield _json_path(error), error.message


def validate(name: str, record: dict[str, Any], *, where: str = "record") -> None:
    """Raise `SparkHubError` naming the record and JSON path of the first violation."""
    if fast_check(name)(record):
        return
    for path, message in iter_errors(name, record):
        raise SparkHubError(message, where=f"{where}: {path}")


def validate_many(name: str, records: Iterable[dict[str, Any]], *, where: str = "record") -> int:
    """Validate rows, fast path first; returns how many were checked."""
    check = fast_check(name)
    count = 0
    for i, record in enumerate(records):
        if not check(record):
            validate(name, record, where=f"{where} {i}")
        count += 1
    return count


def validate_manifest(manifest: dict[str, Any], *, where: str = "manifest.json") -> None:
    """Validate a manifest dict; raises `SparkHubError` with the JSON path of the first error."""
    validate("manifest", manifest, where=where)
