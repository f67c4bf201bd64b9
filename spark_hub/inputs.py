"""Read Stage I inputs: problems (JSONL / Parquet / Hub dataset) and existing solutions.

Every malformed input raises a one-line `SparkHubError` naming the file, the line (or row) and the
field, before any output is written.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

from spark_hub.errors import SparkHubError
from spark_hub.records import Problem

logger = logging.getLogger(__name__)

ID_FIELDS = ("id", "unique_id", "problem_id", "idx")


def _iter_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(location, row)`` for each non-blank line of a JSONL file."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SparkHubError(f"invalid JSON ({e.msg} at column {e.colno})", where=where) from e
            if not isinstance(row, dict):
                raise SparkHubError(f"expected a JSON object, got {type(row).__name__}", where=where)
            yield where, row


def _iter_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for non-parquet files
        raise SparkHubError(f"not a readable Parquet file ({e})", where=str(path)) from e
    row_index = 0
    for batch in table.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            yield f"{path}: row {row_index}", row
            row_index += 1


def iter_rows(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of a .jsonl / .json / .parquet file with a location string for error messages."""
    path = Path(path)
    if not path.exists():
        raise SparkHubError(f"file not found: {path}")
    if path.is_dir():
        files = sorted([*path.rglob("*.parquet"), *path.rglob("*.jsonl")])
        files = [f for f in files if ".spark" not in f.parts]
        if not files:
            raise SparkHubError(f"no .jsonl or .parquet files in folder {path}")
        for f in files:
            yield from iter_rows(f)
        return
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from _iter_jsonl(path)
    elif suffix == ".parquet":
        yield from _iter_parquet(path)
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise SparkHubError(f"invalid JSON ({e.msg})", where=f"{path}:{e.lineno}") from e
        if not isinstance(data, list):
            raise SparkHubError("a .json input must hold a list of objects", where=str(path))
        for i, row in enumerate(data):
            if not isinstance(row, dict):
                raise SparkHubError(f"expected a JSON object, got {type(row).__name__}", where=f"{path}: item {i}")
            yield f"{path}: item {i}", row
    else:
        raise SparkHubError(f"unsupported input format {suffix or '(none)'!r} for {path}", hint="use .jsonl, .json or .parquet")


def _lookup(row: dict[str, Any], name: str) -> Any:
    """``row[name]``; dotted names walk nested mappings (``reward_model.ground_truth``)."""
    if name in row:
        return row[name]
    node: Any = row
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _text_field(row: dict[str, Any], name: str, where: str, *, required: bool) -> str | None:
    value = _lookup(row, name)
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        # a chat prompt (list of messages): the problem is the last user message
        users = [m for m in value if m.get("role", "user") == "user"] or value
        value = users[-1]["content"]
    if value is None:
        if required:
            present = ", ".join(sorted(map(str, row))) or "none"
            raise SparkHubError(
                f"missing field {name!r} (fields present: {present})",
                where=where,
                hint="map it with --set problem_field=NAME" if name else None,
            )
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise SparkHubError(f"field {name!r} must be a string, got {type(value).__name__}", where=where)
    if required and not value.strip():
        raise SparkHubError(f"field {name!r} is empty", where=where)
    return value


def clean_reference(answer: str | None) -> str | None:
    """GSM8K-style references keep the final answer after ``####``; a JSON list keeps its first item."""
    if answer is None:
        return None
    text = answer.strip()
    if text.startswith("[") and text.endswith("]"):  # e.g. Skywork-OR1's '["72"]'
        try:
            items = json.loads(text)
        except json.JSONDecodeError:
            items = None
        if isinstance(items, list) and items and isinstance(items[0], (str, int, float)):
            answer = str(items[0])
    if "####" in answer:
        answer = answer.rsplit("####", 1)[1]
    return answer.strip() or None


def _row_fields(
    row: dict[str, Any], where: str, problem_field: str, answer_field: str | None, id_field: str | None,
    id_fields: tuple[str, ...] = ID_FIELDS,
) -> tuple[str, str | None, str | None]:
    """``(problem text, reference, id or None)`` of one input row, validated."""
    text = _text_field(row, problem_field, where, required=True)
    reference = clean_reference(_text_field(row, answer_field, where, required=False)) if answer_field else None
    if id_field:
        pid = _text_field(row, id_field, where, required=True)
    else:
        pid = next((str(row[k]) for k in id_fields if row.get(k) not in (None, "")), None)
    return text, reference, pid


def load_problems(
    path: str | Path,
    *,
    problem_field: str = "problem",
    answer_field: str | None = "answer",
    id_field: str | None = None,
    limit: int | None = None,
) -> list[Problem]:
    """Read problems, validating every row; ids must be unique."""
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for i, (where, row) in enumerate(iter_rows(path)):
        if limit is not None and len(problems) >= limit:
            break
        text, reference, pid = _row_fields(row, where, problem_field, answer_field, id_field)
        pid = pid or f"{i:06d}"
        if pid in seen:
            raise SparkHubError(f"duplicate problem id {pid!r} (first seen at {seen[pid]})", where=where,
                                hint="set --set id_field=NAME to a unique field")
        seen[pid] = where
        problems.append(Problem(id=pid, problem=text, reference=reference, source=where))
    if not problems:
        raise SparkHubError(f"no problems in {path}", where=str(path), hint="the file is empty")
    return problems


def load_solutions(
    path: str | Path,
    *,
    problem_field: str = "problem",
    answer_field: str | None = "answer",
    id_field: str | None = None,
    limit: int | None = None,
) -> list[tuple[Problem, list[dict[str, Any]]]]:
    """Read existing solutions (one per row: ``problem`` + ``steps`` list, optional ``final_answer``).

    Rows of the same problem (same id, or same text when no id field) are grouped in file order;
    ``limit`` counts problems. ProcessBench and PRM800K-style files work with the default mapping.
    """
    grouped: dict[str, tuple[Problem, list[dict[str, Any]]]] = {}
    for where, row in iter_rows(path):
        text, reference, pid = _row_fields(row, where, problem_field, answer_field, id_field,
                                           ("problem_id",) + ID_FIELDS)
        steps = row.get("steps")
        if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
            raise SparkHubError("field 'steps' must be a non-empty list of strings", where=where)
        key = pid or text
        if key not in grouped:
            if limit is not None and len(grouped) >= limit:
                continue
            grouped[key] = (Problem(id=pid or f"{len(grouped):06d}", problem=text, reference=reference, source=where), [])
        final = row.get("final_answer")
        grouped[key][1].append({
            "steps": [s.strip() for s in steps],
            "final_answer": final if isinstance(final, str) else None,
            "source": where,
        })
    if not grouped:
        raise SparkHubError(f"no solutions in {path}", where=str(path), hint="the file is empty")
    return list(grouped.values())
