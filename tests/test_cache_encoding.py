"""Call-cache row encoding: compact rows round-trip every Completion field; JSON rows of older
caches (and lone-surrogate rows) still read."""

from __future__ import annotations

import json

from spark_hub.backends.base import Completion
from spark_hub.cache import CallCache, _dumps, _loads

COMPLETIONS = [
    Completion("## Step 1: ok\n**This step is correct.**\n\\frac{1}{2} é 😀", "stop", 12, 9),
    Completion("", None, 0, 0),
    Completion("#c1 [[3]]\nnot a header", "length", 1, 2, token_ids=[5, 6], logprobs=[-0.25, -1e-9],
               token_offsets=[0, 4]),
]


def test_compact_row_round_trips_every_field():
    blob, escaped = _dumps(COMPLETIONS)
    assert not escaped and blob.startswith("#c1 ")
    assert COMPLETIONS[0].text in blob  # stored verbatim, not JSON-escaped
    assert _loads(blob) == COMPLETIONS


def test_rows_written_as_json_by_older_versions_still_read(tmp_path):
    cache = CallCache(tmp_path / "cache.sqlite")
    old = json.dumps([c.to_dict() for c in COMPLETIONS], ensure_ascii=False)
    cache._db.execute("INSERT INTO calls (key, model, completions, created) VALUES ('old', 'm', ?, 0)", (old,))
    cache.put_many([("new", "m", COMPLETIONS)])
    found = cache.get_many(["old", "new"])
    assert found["old"] == COMPLETIONS and found["new"] == COMPLETIONS


def test_lone_surrogate_row_stays_ascii_json():
    blob, escaped = _dumps([Completion("half \ud83d emoji", "stop", 1, 1)])
    assert escaped and blob.startswith("[") and blob.isascii()
    assert _loads(blob)[0].text == "half \ud83d emoji"


def test_new_caches_use_big_pages_and_older_wal_caches_are_converted(tmp_path):
    import sqlite3

    from spark_hub.cache import PAGE_SIZE

    cache = CallCache(tmp_path / "new.sqlite")
    assert cache._db.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE
    assert cache._db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    cache.close()
    # a cache written in WAL mode (spark-hub <= 0.1) with 4 KB pages
    old = tmp_path / "old.sqlite"
    db = sqlite3.connect(old)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE calls (key TEXT PRIMARY KEY, model TEXT NOT NULL, completions TEXT NOT NULL, "
               "created REAL NOT NULL)")
    db.execute("INSERT INTO calls VALUES ('k', 'm', ?, 0)", (_dumps(COMPLETIONS)[0],))
    db.commit()
    db.close()
    cache = CallCache(old)
    assert cache._db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert cache.get_many(["k"]) == {"k": COMPLETIONS}
    cache.put_many([("k2", "m", COMPLETIONS[:1])])
    cache.close()
    assert not (tmp_path / "old.sqlite-wal").exists()
    assert CallCache(old).get_many(["k", "k2"]) == {"k": COMPLETIONS, "k2": COMPLETIONS[:1]}
