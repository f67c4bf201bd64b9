"""Content-addressed store of model calls (SQLite, rollback journal, 64 KB pages).

Every request is keyed by `GenerationRequest.key(model_fingerprint)`: model + weights fingerprint,
the exact prompt and the semantic sampling fields. Batch size, concurrency and GPU settings are not
part of the key. Results are committed in one transaction per engine call of `CachedBackend.generate`
and at least every `COMMIT_INTERVAL` seconds inside it (a slow batch is committed as soon as it
returns, many fast ones together), so a run killed at any point (SIGKILL included) loses at most the
batch in flight plus a second of work, and re-running skips every stored key. A cache belongs to
one build at a time (`spark_hub.io.BuildLock`), so it needs no write-ahead log: with a rollback
journal each committed row is written once (WAL writes it twice, log then checkpoint), and 64 KB
pages hold a call's N completions in few pages: 0.18 vs 0.55 CPU s for 160 MB of completions
(measured here), with ``synchronous=FULL`` (a commit survives a power loss).

Model text is stored losslessly, whatever it holds: a completion with a lone UTF-16 surrogate (half
an emoji from an OpenAI-compatible server) cannot be encoded as UTF-8, so its row is stored as
ASCII-escaped JSON, which reads back to the same string. Other rows use a compact text encoding
(`_dumps`: a small JSON header with each completion's length and fields, then the texts verbatim),
a fifth of the cost of JSON-encoding the texts (~1.5 vs ~8 us per 2 KB completion); rows written
as JSON by older versions read as before. What `CachedBackend` hands to the stages has each lone
surrogate replaced by U+FFFD (same length, so token offsets stay valid), and counts those
completions in ``invalid_unicode``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sqlite3
import time
from pathlib import Path
from typing import Callable, Iterable

from spark_hub.backends.base import Backend, Completion, GenerationRequest
from spark_hub.errors import SparkHubError

logger = logging.getLogger(__name__)

COMMIT_INTERVAL = 1.0
"""Seconds of model work `CachedBackend.generate` may hold before committing it to the cache."""

PAGE_SIZE = 65536
"""SQLite page size of a new cache: a call's row (N completions of ~2 KB) spans few pages."""

_SURROGATE = re.compile("[\ud800-\udfff]")


_COMPACT = "#c1 "
"""Prefix of a compactly encoded row (a JSON row starts with ``[``)."""
_EXTRA_FIELDS = ("token_ids", "logprobs", "token_offsets")


def _dumps(completions: list[Completion]) -> tuple[str, bool]:
    """The text stored for a call, and whether it had to be ASCII-escaped JSON (lone surrogates).

    The compact form is ``#c1 <header>\\n<text 0><text 1>...``: the header is a JSON list with,
    per completion, ``[len(text), finish_reason, prompt_tokens, completion_tokens]`` plus a dict
    of the token fields that are set; the texts follow verbatim (no escaping)."""
    if any(_has_surrogate(c.text) for c in completions):
        return json.dumps([c.to_dict() for c in completions], ensure_ascii=True), True
    header = []
    for c in completions:
        entry = [len(c.text), c.finish_reason, c.prompt_tokens, c.completion_tokens]
        extra = {name: list(getattr(c, name)) for name in _EXTRA_FIELDS if getattr(c, name) is not None}
        if extra:
            entry.append(extra)
        header.append(entry)
    blob = _COMPACT + json.dumps(header, separators=(",", ":")) + "\n" + "".join(c.text for c in completions)
    if not blob.isascii():
        try:
            blob.encode("utf-8")  # a surrogate in a finish_reason or a token field
        except UnicodeEncodeError:
            return json.dumps([c.to_dict() for c in completions], ensure_ascii=True), True
    return blob, False


def _loads(blob: str) -> list[Completion]:
    """The completions of a stored row (compact, or JSON as older versions wrote it)."""
    if not blob.startswith(_COMPACT):
        return [Completion.from_dict(d) for d in json.loads(blob)]
    newline = blob.index("\n")
    pos = newline + 1
    out = []
    for entry in json.loads(blob[len(_COMPACT) : newline]):
        end = pos + entry[0]
        extra = entry[4] if len(entry) > 4 else {}
        out.append(Completion(blob[pos:end], entry[1], entry[2], entry[3], **extra))
        pos = end
    if pos != len(blob):
        raise ValueError(f"compact cache row: {len(blob) - pos} characters after the last completion")
    return out


def _has_surrogate(text: str) -> bool:
    """True when ``text`` cannot be UTF-8 encoded (a lone surrogate). ~0.1 us for ASCII text, ~1 us
    for 2 KB of other text (a regex scan costs ~20 us: as much as parsing the verification)."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def clean_text(completions: list[Completion]) -> tuple[list[Completion], int]:
    """Replace lone surrogates in completion texts with U+FFFD; returns the list and how many changed."""
    changed = 0
    out = completions
    for i, c in enumerate(completions):
        if _has_surrogate(c.text):
            if out is completions:
                out = list(completions)
            out[i] = dataclasses.replace(c, text=_SURROGATE.sub("\ufffd", c.text))
            changed += 1
    return out, changed


class CallCache:
    """A persistent map ``key -> list[Completion]``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        try:
            self._db.execute(f"PRAGMA page_size={PAGE_SIZE}")  # takes effect only in a new file
            try:  # an older cache in WAL mode is converted (only one build uses a cache: BuildLock)
                self._db.execute("PRAGMA journal_mode=DELETE")
            except sqlite3.OperationalError:  # another connection holds it: stay in WAL
                pass
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS calls ("
                " key TEXT PRIMARY KEY, model TEXT NOT NULL, completions TEXT NOT NULL, created REAL NOT NULL)"
            )
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(calls)")}
        except sqlite3.DatabaseError as e:
            self._db.close()
            raise SparkHubError(f"call cache {self.path} is not a readable spark-hub cache ({e})",
                                hint="move it away to start over; the model calls it held will be made again") from None
        if not {"key", "model", "completions", "created"} <= columns:
            self._db.close()
            raise SparkHubError(f"call cache {self.path} has a table `calls` of another shape ({', '.join(sorted(columns))})",
                                hint="point `cache:` at a spark-hub cache, or move this file away")
        self.commits = 0
        """Write transactions made by `put_many`."""
        self.escaped = 0
        """Calls stored ASCII-escaped because their text is not valid UTF-8 (lone surrogates)."""

    def get_many(self, keys: Iterable[str]) -> dict[str, list[Completion]]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, list[Completion]] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, blob in self._db.execute(
                f"SELECT key, completions FROM calls WHERE key IN ({marks})", chunk
            ):
                found[key] = _loads(blob)
        return found

    def put_many(self, items: Iterable[tuple[str, str, list[Completion]]]) -> None:
        now = time.time()
        rows = []
        for key, model, completions in items:
            blob, escaped = _dumps(completions)
            self.escaped += escaped
            rows.append((key, model, blob, now))
        if not rows:
            return
        self.commits += 1
        with self._db:  # one transaction: all or nothing
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO calls (key, model, completions, created) VALUES (?, ?, ?, ?)",
                rows,
            )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]

    def close(self) -> None:
        self._db.close()


class CachedBackend:
    """A backend wrapper that answers from the cache and stores every new batch.

    Attributes ``hits``, ``model_requests`` and ``model_calls`` (engine invocations) count work;
    ``invalid_unicode`` counts the completions handed out with lone surrogates replaced.
    """

    def __init__(self, backend: Backend, cache: CallCache, *, batch_size: int = 16,
                 commit_interval: float = COMMIT_INTERVAL):
        self.backend = backend
        self.cache = cache
        self.batch_size = max(1, batch_size)
        self.commit_interval = commit_interval
        self.fingerprint = backend.fingerprint()
        self.hits = 0
        self.model_requests = 0
        self.model_calls = 0
        self.model_seconds = 0.0
        """Wall time spent inside the backend (model time, for throughput estimates)."""
        self.invalid_unicode = 0

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    def generate(
        self,
        requests: list[GenerationRequest],
        on_batch: Callable[[list[GenerationRequest], list[list[Completion]]], None] | None = None,
    ) -> list[list[Completion]]:
        """Answer ``requests`` from the cache, sending misses to the backend in batches.

        New results are committed together: when this call returns (or raises), and whenever
        `commit_interval` seconds have passed since the last commit. ``on_batch(requests, outputs)``
        is called after every engine batch for progress reporting, and once with ``cached=True``
        for the requests answered from the cache.
        """
        keys = [r.key(self.fingerprint) for r in requests]
        found = self.cache.get_many(keys)
        results: list[list[Completion] | None] = [found.get(k) for k in keys]
        self.hits += sum(r is not None for r in results)
        if on_batch is not None:
            done = [(r, c) for r, c in zip(requests, results) if c is not None]
            if done:  # answered from the cache: progress, not throughput
                on_batch([r for r, _ in done], [c for _, c in done], cached=True)
        pending = [i for i, r in enumerate(results) if r is None]
        # Identical requests inside one run (same key) are sent once.
        first_of: dict[str, int] = {}
        unique = []
        for i in pending:
            if keys[i] not in first_of:
                first_of[keys[i]] = i
                unique.append(i)
        unsaved: list[tuple[str, str, list[Completion]]] = []
        last_commit = time.monotonic()
        try:
            for start in range(0, len(unique), self.batch_size):
                batch = unique[start : start + self.batch_size]
                started = time.perf_counter()
                outputs = self.backend.generate([requests[i] for i in batch])
                self.model_seconds += time.perf_counter() - started
                if len(outputs) != len(batch):
                    raise RuntimeError(
                        f"backend {type(self.backend).__name__} returned {len(outputs)} results for {len(batch)} requests"
                    )
                self.model_calls += 1
                self.model_requests += len(batch)
                unsaved.extend((keys[i], self.backend.model_id, out) for i, out in zip(batch, outputs))
                if time.monotonic() - last_commit >= self.commit_interval:
                    self.cache.put_many(unsaved)
                    unsaved, last_commit = [], time.monotonic()
                for i, out in zip(batch, outputs):
                    results[i] = out
                if on_batch is not None:
                    on_batch([requests[i] for i in batch], outputs)
        finally:
            self.cache.put_many(unsaved)  # what the engine returned is kept even if a later batch fails
        for i in pending:
            if results[i] is None:
                results[i] = results[first_of[keys[i]]]
        cleaned = []
        for out in results:
            out, changed = clean_text(out)  # type: ignore[arg-type]
            self.invalid_unicode += changed
            cleaned.append(out)
        return cleaned
