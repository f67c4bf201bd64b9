"""Read Stage I inputs: problems (JSONL / JSON / Parquet / a Hub dataset) and existing solutions.

Every malformed input raises a one-line `SparkHubError` naming the file, the line (or row) and the
field, before any output is written:

- bytes that are not UTF-8 name the line and the byte offset;
- a FIFO, socket or device is refused before it is opened (reading one would block);
- ``--solutions`` rows that share a problem id but not the problem (or reference) are an error
  naming both lines; rows repeated verbatim are dropped and counted (`Inputs.duplicates_dropped`);
- a path that looks like a file (``data/x.jsonl``, ``./x``) and does not exist is "file not found",
  never a Hub download; ``ORG/NAME`` (or ``hf://datasets/ORG/NAME``) is a Hub dataset, loaded with
  ``datasets.load_dataset(id, name=problems_config, split=problems_split, revision=sha)`` after the
  revision is resolved to a commit; a repo with several configs needs ``problems_config``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from spark_hub.errors import SparkHubError
from spark_hub.records import Problem

logger = logging.getLogger(__name__)

ID_FIELDS = ("id", "unique_id", "problem_id", "idx")
#: ``ORG/NAME`` as the Hub spells dataset ids.
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_PREFIX = "hf://datasets/"
#: Endings that make a missing path a missing *file* rather than a Hub id.
FILE_SUFFIXES = frozenset({".jsonl", ".ndjson", ".json", ".parquet", ".csv", ".tsv", ".txt", ".arrow",
                           ".gz", ".bz2", ".xz", ".zst", ".zip", ".yaml", ".yml"})


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def check_input_path(path: str | Path, what: str = "input") -> Path:
    """``path`` if it is a regular file or a folder; otherwise a one-line error (before any read).

    A FIFO or a device would block or never end when read, so they are refused at once.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise SparkHubError(f"{what} file not found: {path}") from None
    except OSError as e:
        raise SparkHubError(f"cannot read {what} {path}: {e.strerror}") from e
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise SparkHubError(f"{what} {path} is {_kind(mode)}, not a file",
                            hint="pass a .jsonl, .json or .parquet file (or a folder of them)")
    return path


def _utf8_error(path: Path, lineno: int, byte: int, offset: int, column: int) -> SparkHubError:
    return SparkHubError(
        f"not valid UTF-8: byte 0x{byte:02x} at byte offset {offset} (column {column})",
        where=f"{path}:{lineno}",
        hint="save the file as UTF-8, e.g. iconv -f latin1 -t utf-8",
    )


def _decode(raw: bytes, path: Path, lineno: int, offset: int) -> str:
    """``raw`` (one line, starting at byte ``offset`` of the file) as UTF-8, or a one-line error."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _utf8_error(path, lineno, raw[e.start], offset + e.start, e.start + 1) from None


def iter_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(location, row)`` for each non-blank line of a JSONL file (``location`` is ``file:line``).

    Every failure is a one-line `SparkHubError` naming file:line: a byte that is not UTF-8 (with its
    offset), invalid JSON, a line that is not a JSON object.
    """
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = _decode(raw, path, lineno, offset)
            offset += len(raw)
            if lineno == 1 and line.startswith("\ufeff"):  # a UTF-8 byte-order mark
                line = line[1:]
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
    path = check_input_path(path)
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
        yield from iter_jsonl(path)
    elif suffix == ".parquet":
        yield from _iter_parquet(path)
    elif suffix == ".json":
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line_start = raw.rfind(b"\n", 0, e.start) + 1
            raise _utf8_error(path, raw.count(b"\n", 0, e.start) + 1, raw[e.start], e.start,
                              e.start - line_start + 1) from None
        try:
            data = json.loads(text.lstrip("\ufeff"))
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


def problems_from_rows(
    rows: Iterator[tuple[str, dict[str, Any]]],
    *,
    source: str,
    problem_field: str = "problem",
    answer_field: str | None = "answer",
    id_field: str | None = None,
    limit: int | None = None,
) -> list[Problem]:
    """Validate ``(location, row)`` pairs into problems; ids must be unique. ``source`` names the
    input in the "no problems" error."""
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for i, (where, row) in enumerate(rows):
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
        raise SparkHubError(f"no problems in {source}", where=source, hint="the input is empty")
    return problems


def load_problems(
    path: str | Path,
    *,
    problem_field: str = "problem",
    answer_field: str | None = "answer",
    id_field: str | None = None,
    limit: int | None = None,
) -> list[Problem]:
    """Read problems from a local file or folder, validating every row; ids must be unique."""
    return problems_from_rows(iter_rows(path), source=str(path), problem_field=problem_field,
                              answer_field=answer_field, id_field=id_field, limit=limit)


@dataclass
class Solutions:
    """What `read_solutions` returns."""

    groups: list[tuple[Problem, list[dict[str, Any]]]]
    """One ``(problem, solution rows)`` per problem, in file order."""
    duplicates_dropped: int = 0
    """Rows dropped because an earlier row of the same problem was identical."""


def read_solutions(
    path: str | Path,
    *,
    problem_field: str = "problem",
    answer_field: str | None = "answer",
    id_field: str | None = None,
    limit: int | None = None,
) -> Solutions:
    """Read existing solutions (one per row: ``problem`` + ``steps`` list, optional ``final_answer``).

    Rows of the same problem (same id, or same text when no id field) are grouped in file order;
    ``limit`` counts problems. ProcessBench and PRM800K-style files work with the default mapping.
    Rows that share an id must share the problem text and reference (else an error names both
    lines); a row identical to an earlier one of its problem is dropped and counted.
    """
    grouped: dict[str, tuple[Problem, list[dict[str, Any]]]] = {}
    first_row: dict[str, tuple[str, str | None, str]] = {}  # key -> (problem text, reference, where)
    seen_rows: dict[str, dict[tuple, str]] = {}  # key -> solution content -> where
    dropped = 0
    skipped: set[str] = set()
    for where, row in iter_rows(path):
        text, reference, pid = _row_fields(row, where, problem_field, answer_field, id_field,
                                           ("problem_id",) + ID_FIELDS)
        steps = row.get("steps")
        if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
            raise SparkHubError("field 'steps' must be a non-empty list of strings", where=where)
        key = pid or text
        if key in first_row:
            first_text, first_reference, first_where = first_row[key]
            for name, now, before in ((problem_field, text, first_text), (answer_field, reference, first_reference)):
                if now == before:
                    continue
                if pid:
                    raise SparkHubError(
                        f"problem id {pid!r} is used for two different problems: field {name!r} differs from "
                        f"the row at {first_where}",
                        where=where, hint="give each problem its own id (or map another field with --set id_field=NAME)",
                    )
                raise SparkHubError(f"the same problem has another {name!r} in the row at {first_where}",
                                    where=where, hint="rows of one problem must agree on its reference answer")
        else:
            first_row[key] = (text, reference, where)
        if key not in grouped:
            if key in skipped or (limit is not None and len(grouped) >= limit):
                skipped.add(key)
                continue
            grouped[key] = (Problem(id=pid or f"{len(grouped):06d}", problem=text, reference=reference, source=where), [])
            seen_rows[key] = {}
        final = row.get("final_answer")
        solution = {
            "steps": [s.strip() for s in steps],
            "final_answer": final if isinstance(final, str) else None,
            "source": where,
        }
        content = (tuple(solution["steps"]), solution["final_answer"])
        if content in seen_rows[key]:
            dropped += 1
            logger.debug("%s: duplicate of the solution at %s; dropped", where, seen_rows[key][content])
            continue
        seen_rows[key][content] = where
        grouped[key][1].append(solution)
    if not grouped:
        raise SparkHubError(f"no solutions in {path}", where=str(path), hint="the file is empty")
    if dropped:
        logger.warning("%s: %d solution row(s) repeated an earlier row of the same problem verbatim; dropped",
                       path, dropped)
    return Solutions(list(grouped.values()), dropped)


def load_solutions(
    path: str | Path,
    *,
    problem_field: str = "problem",
    answer_field: str | None = "answer",
    id_field: str | None = None,
    limit: int | None = None,
) -> list[tuple[Problem, list[dict[str, Any]]]]:
    """`read_solutions` without the duplicate count: ``[(problem, solution rows), ...]``."""
    return read_solutions(path, problem_field=problem_field, answer_field=answer_field,
                          id_field=id_field, limit=limit).groups


# ------------------------------------------------------------------------------------------------
# Where the inputs come from: a local path or a Hub dataset
# ------------------------------------------------------------------------------------------------
def looks_like_local_path(text: str) -> bool:
    """True when ``text`` can only be a local path (so, if missing, it is "file not found").

    A Hub dataset id is exactly ``ORG/NAME``. Anything starting with ``.``, ``/`` or ``~``, holding
    a backslash or more than one ``/``, without any ``/``, or ending in a data-file suffix
    (``.jsonl``, ``.parquet``, ...) is a path.

    >>> [looks_like_local_path(t) for t in ("openai/gsm8k", "AI-MO/NuminaMath-1.5", "data/gsm8k-demo.jsonl",
    ...                                      "./gsm8k", "a/b/c", "problems", "hf://datasets/openai/gsm8k")]
    [False, False, True, True, True, True, False]
    """
    if text.startswith(HUB_PREFIX):
        return False
    if text.startswith((".", "/", "~")) or "\\" in text or text.count("/") != 1:
        return True
    return Path(text).suffix.lower() in FILE_SUFFIXES or not HUB_ID_RE.match(text)


def hub_dataset_id(text: str) -> str | None:
    """The ``ORG/NAME`` that ``text`` names when it is a Hub dataset id (and no local path), else None."""
    if text.startswith(HUB_PREFIX):
        text = text[len(HUB_PREFIX):].strip("/")
        return text if HUB_ID_RE.match(text) else None
    if looks_like_local_path(text) or os.path.lexists(text):
        return None
    return text


def _hashed(rows: Iterator[tuple[str, dict[str, Any]]], digest: "hashlib._Hash") -> Iterator[tuple[str, dict[str, Any]]]:
    """Pass ``rows`` through, feeding each row's canonical JSON to ``digest``."""
    for where, row in rows:
        digest.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass"))
        digest.update(b"\n")
        yield where, row


def load_hub_problems(
    repo_id: str,
    *,
    revision: str | None = None,
    config_name: str | None = None,
    split: str = "train",
    problem_field: str = "problem",
    answer_field: str | None = "answer",
    id_field: str | None = None,
    limit: int | None = None,
    retry=None,
) -> tuple[list[Problem], dict[str, Any]]:
    """Problems of one config and one split of a Hub dataset, pinned to a commit.

    The revision (default ``main``) is resolved to a commit sha first; everything after reads that
    commit, so the recorded sha names exactly the rows used. Transient Hub errors are retried with
    backoff (`spark_hub.hub.retry_download`).

    Args:
        repo_id: ``ORG/NAME``.
        revision: branch, tag or commit.
        config_name: the dataset config (subset); required when the repo has more than one.
        split: the split to read (``train``, ``test``, ...).
        retry: a `spark_hub.hub.RetryPolicy`; default ``spark_hub.hub.DEFAULT_RETRY``.

    Returns:
        ``(problems, provenance)``; provenance holds ``source``, ``revision`` (the commit sha),
        ``config``, ``split``, ``sha256`` (of the rows read: the whole split, or the first ``limit``)
        and ``rows``.

    Raises:
        `SparkHubError`: unknown repo, revision, config or split (the message lists the valid
            ones), a config that must be chosen, or a download that keeps failing.
    """
    import datasets
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    from spark_hub.hub import retry_download

    api = HfApi()
    target = f"dataset {repo_id}@{revision or 'main'}"
    try:
        sha = retry_download(lambda: api.dataset_info(repo_id, revision=revision).sha, target=target, retry=retry)
    except SparkHubError as error:
        if isinstance(error.__cause__, RevisionNotFoundError):
            raise SparkHubError(f"revision {revision!r} not found in dataset {repo_id}",
                                hint="set problems_revision to a branch, tag or commit") from error.__cause__
        if isinstance(error.__cause__, RepositoryNotFoundError):
            raise SparkHubError(f"no dataset {repo_id} on the Hub (or no access), and no local file of that name",
                                hint="check the id; for a private dataset set HF_TOKEN or run `hf auth login`") from error.__cause__
        raise
    where = f"{repo_id}@{sha[:8]}"
    target = f"dataset {repo_id}@{sha[:8]}"

    configs = retry_download(lambda: datasets.get_dataset_config_names(repo_id, revision=sha),
                             target=target, retry=retry)
    if config_name is None:
        if len(configs) > 1:
            raise SparkHubError(
                f"{repo_id} has {len(configs)} configs ({', '.join(configs)}); choose one",
                where=where, hint=f"--set problems_config={configs[0]}",
            )
        config_name = configs[0] if configs else None
    elif configs and config_name not in configs:
        raise SparkHubError(f"no config {config_name!r} in {repo_id} (configs: {', '.join(configs)})",
                            where=where, hint=f"--set problems_config={configs[0]}")

    builder = retry_download(lambda: datasets.load_dataset_builder(repo_id, name=config_name, revision=sha),
                             target=target, retry=retry)
    splits = list(builder.config.data_files or {})
    if splits and split not in splits:
        raise SparkHubError(
            f"no split {split!r} in {repo_id}" + (f" config {config_name!r}" if config_name else "")
            + f" (splits: {', '.join(splits)})",
            where=where, hint=f"--set problems_split={splits[0]}",
        )
    ds = retry_download(lambda: datasets.load_dataset(repo_id, name=config_name, split=split, revision=sha),
                        target=target, retry=retry)
    label = f"{where} {config_name or 'default'}/{split}"
    digest = hashlib.sha256()  # of the rows read (all, or the first `limit`): what this build consumed
    problems = problems_from_rows(_hashed(((f"{label}: row {i}", row) for i, row in enumerate(ds)), digest),
                                  source=label, problem_field=problem_field, answer_field=answer_field,
                                  id_field=id_field, limit=limit)
    provenance = {"source": f"{HUB_PREFIX}{repo_id}", "revision": sha, "config": config_name or "default",
                  "split": split, "sha256": digest.hexdigest(), "rows": len(problems)}
    logger.info("read %d problem(s) from %s (config %s, split %s, commit %s)", len(problems), repo_id,
                provenance["config"], split, sha)
    return problems, provenance


# ------------------------------------------------------------------------------------------------
# All inputs of a build
# ------------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    """The validated inputs of one build."""

    problems: list[Problem]
    given: dict[str, list[dict[str, Any]]] | None
    """Existing solutions per problem id (``--solutions``), else None."""
    provenance: dict[str, dict[str, Any]]
    """``{"problems" | "solutions": {source, sha256, revision?, config?, split?, rows}}`` for the manifest."""
    duplicates_dropped: int = 0
    """``--solutions`` rows dropped because they repeated an earlier row verbatim."""


def content_hash(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, ``.spark`` left out)."""
    from spark_hub.io import sha256_file

    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if ".spark" in p.parts or p.is_dir():
            continue
        check_input_path(p)
        h.update(p.relative_to(path).as_posix().encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def load_inputs(config: Any) -> Inputs:
    """Read and validate all inputs of a `BuildConfig` (before any output is written)."""
    fields = dict(problem_field=config.problem_field, answer_field=config.answer_field,
                  id_field=config.id_field, limit=config.limit)
    if config.solutions:
        path = check_input_path(config.solutions, "solutions")
        solutions = read_solutions(path, **fields)
        problems = [p for p, _ in solutions.groups]
        given = {p.id: rows for p, rows in solutions.groups}
        prov = {"solutions": {"source": str(path), "sha256": content_hash(path),
                              "rows": sum(len(r) for r in given.values())}}
        return Inputs(problems, given, prov, solutions.duplicates_dropped)
    if not config.problems:
        raise SparkHubError("no input: set `problems` (or `solutions`)", hint="--problems FILE.jsonl")
    repo_id = hub_dataset_id(config.problems)
    if repo_id is None:
        path = check_input_path(config.problems, "problems")
        problems = load_problems(path, **fields)
        prov = {"source": str(path), "sha256": content_hash(path), "rows": len(problems)}
        return Inputs(problems, None, {"problems": prov})
    problems, prov = load_hub_problems(
        repo_id, revision=getattr(config, "problems_revision", None),
        config_name=getattr(config, "problems_config", None), split=getattr(config, "problems_split", None) or "train",
        **fields,
    )
    return Inputs(problems, None, {"problems": prov})
