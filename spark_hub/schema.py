"""Validate records against the JSON Schemas in ``spark_hub/schemas/``; migrate older versions.

Schemas are never edited once released: a new version gets a new file (``step_record.v2.json``
beside ``step_record.v1.json``) and a migration here. A row is validated against the schema of the
version it declares (``schema_version``), so `spark-hub validate` accepts every released version;
`migrate` brings a row to the current version (what `spark_hub.records.Record.from_dict` reads).
Validators are compiled once per schema file so that validating many rows is cheap.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any, Callable, Iterable, Iterator

from spark_hub.errors import SparkHubError

#: Released schema files per schema name and version (never edited; the last one is current).
SCHEMAS: dict[str, dict[str, str]] = {
    "step_record": {"1": "step_record.v1.json", "2": "step_record.v2.json"},
    "verification": {"1": "verification.v1.json", "2": "verification.v2.json"},
    "manifest": {"1": "manifest.v1.json"},
    "prm_spec": {"1": "prm_spec.v1.json"},
}
#: Current version of each schema.
CURRENT: dict[str, str] = {name: list(versions)[-1] for name, versions in SCHEMAS.items()}
#: Current version of the row schemas (step records and verifications).
CURRENT_VERSION = CURRENT["step_record"]


def _check_name(name: str) -> None:
    if name not in SCHEMAS:
        raise SparkHubError(f"unknown schema {name!r}", hint=f"valid: {', '.join(SCHEMAS)}")


@lru_cache(maxsize=None)
def load_schema(name: str, version: str | None = None) -> dict[str, Any]:
    """The JSON Schema ``name`` (``step_record``, ``verification``, ``manifest``...) at ``version``
    (default: current)."""
    _check_name(name)
    version = CURRENT[name] if version is None else str(version)
    if version not in SCHEMAS[name]:
        raise SparkHubError(f"unknown {name} schema version {version!r}", hint=f"valid: {', '.join(SCHEMAS[name])}")
    text = resources.files("spark_hub").joinpath("schemas", SCHEMAS[name][version]).read_text()
    return json.loads(text)


@lru_cache(maxsize=None)
def _validator(name: str, version: str):
    import jsonschema

    schema = load_schema(name, version)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


@lru_cache(maxsize=None)
def fast_check(name: str, version: str | None = None) -> Callable[[dict[str, Any]], bool]:
    """A compiled boolean check for schema ``name`` at ``version`` (default: current), for many rows.

    It says valid/invalid only; `iter_errors` (jsonschema) then explains an invalid row with its
    JSON path. Both read the same schema file.
    """
    import fastjsonschema

    compiled = fastjsonschema.compile(load_schema(name, version))

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


def _version_of(name: str, record: Any) -> tuple[str | None, str | None]:
    """``(version to validate against, error)`` for a record of schema ``name``."""
    _check_name(name)
    version = record.get("schema_version") if isinstance(record, dict) else None
    if version is None:  # the schema itself reports the missing field
        return CURRENT[name], None
    if str(version) not in SCHEMAS[name] or not isinstance(version, str):
        known = list(SCHEMAS[name])
        reads = f"version {known[0]}" if len(known) == 1 else f"versions {', '.join(known)}"
        return None, f"unsupported schema version {version!r} (this spark-hub reads {reads})"
    return version, None


def iter_errors(name: str, record: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Yield ``(json_path, message)`` for each violation of the schema version the record declares."""
    version, error = _version_of(name, record)
    if error:
        yield "$.schema_version", error
        return
    if fast_check(name, version)(record):  # the common case: valid, no need to explain
        return
    for err in sorted(_validator(name, version).iter_errors(record), key=lambda e: list(map(str, e.path))):
        yield _json_path(err), err.message


def validate(name: str, record: dict[str, Any], *, where: str = "record") -> None:
    """Raise `SparkHubError` naming the record and JSON path of the first violation."""
    version, _ = _version_of(name, record)
    if version is not None and fast_check(name, version)(record):
        return
    for path, message in iter_errors(name, record):
        raise SparkHubError(message, where=f"{where}: {path}")


def validate_many(name: str, records: Iterable[dict[str, Any]], *, where: str = "record") -> int:
    """Validate rows, fast path first; returns how many were checked."""
    count = 0
    for i, record in enumerate(records):
        validate(name, record, where=f"{where} {i}")
        count += 1
    return count


def validate_manifest(manifest: dict[str, Any], *, where: str = "manifest.json") -> None:
    """Validate a manifest dict; raises `SparkHubError` with the JSON path of the first error."""
    validate("manifest", manifest, where=where)


# ----------------------------------------------------------------------------- migrations


def _v1_to_v2_step_record(row: dict[str, Any]) -> dict[str, Any]:
    # v1 steps were whitespace-normalised; their spans in the solution are unknown. `reference` was
    # optional in v1 (every v2 column is required).
    return {"reference": None, **row, "schema_version": "2", "step_spans": None, "step_probs": None,
            "final_prob": None}


def _v1_to_v2_verification(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "schema_version": "2", "step_probs": None, "final_prob": None}


#: (schema, from version) -> function returning the row at the next version (a new dict).
MIGRATIONS: dict[tuple[str, str], Callable[[dict[str, Any]], dict[str, Any]]] = {
    ("step_record", "1"): _v1_to_v2_step_record,
    ("verification", "1"): _v1_to_v2_verification,
}


def schema_of(row: dict[str, Any]) -> str:
    """``verification`` or ``step_record``, from a row's columns."""
    return "verification" if "raw_text" in row or "verification_index" in row else "step_record"


def migrate(row: dict[str, Any], name: str | None = None, *, where: str = "record") -> dict[str, Any]:
    """``row`` at the current version of its schema (the row itself when already current).

    ``name`` defaults to `schema_of` the row. The row is validated against the version it declares
    before each step, so a broken v1 row is reported against the v1 schema, with its JSON path.
    New fields of a later version are ``None`` (unknown) in migrated rows.
    """
    name = name or schema_of(row)
    version, error = _version_of(name, row)
    if error:
        raise SparkHubError(error, where=f"{where}: $.schema_version")
    while version != CURRENT[name]:
        validate(name, row, where=where)
        row = MIGRATIONS[(name, version)](row)
        version = row["schema_version"]
    return row
