"""Dataset storage: streamed Parquet shards laid out like a Hub dataset repo.

```
DIR/data/train-00000-of-00002.parquet           step records   (config "default")
DIR/verifications/train-00000-of-00001.parquet  raw verifications (config "verifications")
```
Rows are appended chunk by chunk into staging shards under ``DIR/.spark/staging`` (memory stays
flat), then moved into place by `finalize_shards`. Column types come from the record declarations in
`spark_hub.records` (with the ``huggingface`` schema metadata), so that ``datasets.load_dataset(DIR)``
reads exactly what was written, without importing ``datasets`` on the write path.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

CONFIGS = {"default": "data", "verifications": "verifications"}
STAGING = Path(".spark") / "staging"


def record_type(config: str):
    """The record class of a config (``default``: `StepRecord`, ``verifications``: `Verification`)."""
    from spark_hub.records import CONFIG_RECORDS

    if config not in CONFIG_RECORDS:
        raise KeyError(config)
    return CONFIG_RECORDS[config]


def arrow_schema(config: str):
    """The Parquet schema of a config, derived from its record type (no ``datasets`` import)."""
    from spark_hub.records import arrow_schema as schema_of

    return schema_of(record_type(config))


def features(config: str):
    """The `datasets.Features` of a config, derived from its record type."""
    from spark_hub.records import features as features_of

    return features_of(record_type(config))


def _load_pandas_shim() -> None:
    """Let pyarrow import pandas (when installed) now rather than inside the first `write`.

    pyarrow's first conversion of a Python list imports pandas (~0.3 CPU s), whatever the data.
    Doing it before the build's chunk loop puts those ~100k module objects among the ones the
    build freezes out of garbage collection (`spark_hub.stages.build._bulk_gc`); imported inside
    the loop, every later collection traverses them (~0.5 CPU s on a 16k-verification build)."""
    import pyarrow as pa

    pa.array([], type=pa.null())


class ShardWriter:
    """Append rows to numbered staging shards of at most ``shard_rows`` rows each."""

    def __init__(self, root: str | Path, config: str, shard_rows: int = 50000):
        self.root = Path(root)
        self.config = config
        self.shard_rows = shard_rows
        self.dir = self.root / STAGING / CONFIGS[config]
        if self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True)
        self.record_type = record_type(config)
        self.schema = arrow_schema(config)
        _load_pandas_shim()
        self.shards: list[Path] = []
        self.rows = 0
        self._writer = None
        self._in_shard = 0

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Append row dicts (the columns of the config's record type)."""
        import pyarrow as pa

        self._write(rows, lambda part: pa.Table.from_pylist(part, schema=self.schema))

    def write_records(self, records: list) -> None:
        """Append records of the config's record type, converted column by column (no row dicts)."""
        from spark_hub.records import to_table

        self._write(records, lambda part: to_table(self.record_type, part))

    def _write(self, items: list, to_table) -> None:
        import pyarrow.parquet as pq

        while items:
            if self._writer is None:
                path = self.dir / f"part-{len(self.shards):05d}.parquet"
                self.shards.append(path)
                self._writer = pq.ParquetWriter(path, self.schema, compression="zstd")
                self._in_shard = 0
            take = items[: self.shard_rows - self._in_shard]
            items = items[len(take):]
            self._writer.write_table(to_table(take))
            self._in_shard += len(take)
            self.rows += len(take)
            if self._in_shard >= self.shard_rows:
                self._close_shard()

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self) -> list[Path]:
        self._close_shard()
        if not self.shards:  # an empty config still gets one (empty) shard so it loads
            import pyarrow.parquet as pq

            path = self.dir / "part-00000.parquet"
            pq.write_table(self.schema.empty_table(), path, compression="zstd")
            self.shards.append(path)
        for path in self.shards:  # make the staged shards durable before they are moved
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        return self.shards


def finalize_shards(root: str | Path, config: str, shards: list[Path]) -> list[str]:
    """Replace ``root/<config dir>/*.parquet`` with the staged shards; returns relative paths."""
    root = Path(root)
    target = root / CONFIGS[config]
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("*.parquet"):
        old.unlink()
    names = []
    for i, shard in enumerate(shards):
        name = f"train-{i:05d}-of-{len(shards):05d}.parquet"
        os.replace(shard, target / name)
        names.append(f"{CONFIGS[config]}/{name}")
    return names


def card_configs() -> list[dict[str, Any]]:
    """The ``configs:`` block of the dataset card: default step records and raw verifications."""
    return [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}], "default": True},
        {"config_name": "verifications", "data_files": [{"split": "train", "path": "verifications/train-*.parquet"}]},
    ]
