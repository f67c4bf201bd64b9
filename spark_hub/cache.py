"""Content-addressed store of model calls (SQLite in WAL mode).

Every request is keyed by `GenerationRequest.key(model_fingerprint)`: model + weights fingerprint,
the exact prompt and the semantic sampling fields. Batch size, concurrency and GPU settings are not
part of the key. Results are committed as soon as a batch returns, so a run killed at any point
(SIGKILL included) loses at most the batch in flight, and re-running skips every stored key.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Callable, Iterable

from spark_hub.backends.base import Backend, Completion, GenerationRequest

logger = logging.getLogger(__name__)


class CallCache:
    """A persistent map ``key -> list[Completion]``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS calls ("
            " key TEXT PRIMARY KEY, model TEXT NOT NULL, completions TEXT NOT NULL, created REAL NOT NULL)"
        )

    def get_many(self, keys: Iterable[str]) -> dict[str, list[Completion]]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, list[Completion]] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, blob in self._db.execute(
                f"SELECT key, completions FROM calls WHERE key IN ({marks})", chunk
            ):
                found[key] = [Completion.from_dict(d) for d in json.loads(blob)]
        return found

    def put_many(self, items: Iterable[tuple[str, str, list[Completion]]]) -> None:
        now = time.time()
        rows = [
            (key, model, json.dumps([c.to_dict() for c in completions], ensure_ascii=False), now)
            for key, model, completions in items
        ]
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
    """A backend wrapper that answers from the cache and stores every new batch at once.

    Attributes ``hits``, ``model_requests`` and ``model_calls`` (engine invocations) count work.
    """

    def __init__(self, backend: Backend, cache: CallCache, *, batch_size: int = 16):
        self.backend = backend
        self.cache = cache
        self.batch_size = max(1, batch_size)
        self.fingerprint = backend.fingerprint()
        self.hits = 0
        self.model_requests = 0
        self.model_calls = 0
        self.model_seconds = 0.0
        """Wall time spent inside the backend (model time, for throughput estimates)."""

    @property
    def model_id(self) -> str:
        return self.backend.model_id

    def generate(
        self,
        requests: list[GenerationRequest],
        on_batch: Callable[[list[GenerationRequest], list[list[Completion]]], None] | None = None,
    ) -> list[list[Completion]]:
        """Answer ``requests`` from the cache, sending misses to the backend in batches.

        ``on_batch`` is called after every batch (cached ones included) for progress reporting.
        """
        keys = [r.key(self.fingerprint) for r in requests]
        found = self.cache.get_many(keys)
        results: list[list[Completion] | None] = [found.get(k) for k in keys]
        self.hits += sum(r is not None for r in results)
        if on_batch is not None:
            done = [(r, c) for r, c in zip(requests, results) if c is not None]
            if done:
                on_batch([r for r, _ in done], [c for _, c in done])
        pending = [i for i, r in enumerate(results) if r is None]
        # Identical requests inside one run (same key) are sent once.
        first_of: dict[str, int] = {}
        unique = []
        for i in pending:
            if keys[i] not in first_of:
                first_of[keys[i]] = i
                unique.append(i)
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
            self.cache.put_many(
                (keys[i], self.backend.model_id, out) for i, out in zip(batch, outputs)
            )
            for i, out in zip(batch, outputs):
                results[i] = out
            if on_batch is not None:
                on_batch([requests[i] for i in batch], outputs)
        for i in pending:
            if results[i] is None:
                results[i] = results[first_of[keys[i]]]
        return results  # type: ignore[return-value]
