"""Reading evaluation data: JSONL files checked against the ``MANIFEST.json`` that lists them.

ProcessBench splits and the math benchmarks are both folders of ``<name>.jsonl`` files with an
``id`` per row, described by a ``MANIFEST.json`` (sha256, row count, source) in the folder or its
parent. `read_checked_jsonl` reads one such file the same way for both: every row through the
caller's reader (which raises a `SparkHubError` naming file:line and field), ids unique, and the
file's hash and row count compared with its manifest entry when ``verify`` is on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, TypeVar

from spark_hub.errors import SparkHubError
from spark_hub.inputs import iter_jsonl
from spark_hub.io import sha256_file

T = TypeVar("T")


def manifest_entries(folder: Path) -> dict[str, dict[str, Any]]:
    """File entries of a ``MANIFEST.json`` in ``folder`` or its parent, keyed by file name."""
    entries: dict[str, dict[str, Any]] = {}
    for candidate, prefix in ((folder / "MANIFEST.json", ""), (folder.parent / "MANIFEST.json", folder.name + "/")):
        if not candidate.is_file():
            continue
        try:
            table = json.loads(candidate.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise SparkHubError(f"cannot read {candidate}: {e}") from e
        if not isinstance(table, dict):
            continue
        for key, value in table.items():
            if isinstance(value, dict) and key.startswith(prefix) and "/" not in key[len(prefix):]:
                entries.setdefault(key[len(prefix):], value)
    return entries


def read_checked_jsonl(
    path: Path, read_row: Callable[[Any, str], T], *, limit: int | None = None, verify: bool = True,
    entry: dict[str, Any] | None = None,
) -> tuple[list[T], dict[str, Any]]:
    """Read the rows of one evaluation file.

    Args:
        path: the ``.jsonl`` file.
        read_row: ``read_row(row, where) -> item`` (``where`` is ``file:line``); items have an ``id``.
        limit: keep only the first ``limit`` rows (all rows are still counted and checked).
        verify: compare the file with ``entry`` (its ``MANIFEST.json`` entry): sha256 and row count.
        entry: the manifest entry; default: looked up next to the file.

    Returns:
        ``(items, info)`` with info ``{"path", "sha256", "rows", "used", "manifest_checked"[, "source"]}``.
    """
    if entry is None:
        entry = manifest_entries(path.parent).get(path.name) or {}
    digest = sha256_file(path)
    checked = bool(verify and entry.get("sha256"))
    if checked and entry["sha256"] != digest:
        raise SparkHubError(f"{path.name} does not match the sha256 in MANIFEST.json", where=str(path),
                            hint="the file was modified or truncated; fetch it again")
    items: list[T] = []
    seen: set[str] = set()
    rows = 0
    for where, row in iter_jsonl(path):
        rows += 1
        if limit is not None and len(items) >= limit:
            continue
        item = read_row(row, where)
        if item.id in seen:
            raise SparkHubError(f"duplicate id {item.id!r}", where=where)
        seen.add(item.id)
        items.append(item)
    if verify and isinstance(entry.get("rows"), int) and entry["rows"] != rows:
        raise SparkHubError(f"{path.name} has {rows} rows, MANIFEST.json says {entry['rows']}", where=str(path))
    info = {"path": str(path), "sha256": digest, "rows": rows, "used": len(items), "manifest_checked": checked}
    if entry.get("source"):
        info["source"] = entry["source"]
    return items, info
