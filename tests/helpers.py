"""Shared helpers for the test suite."""

import os
import shutil
from pathlib import Path

DATA = Path(__file__).parent / "data"


def scripted_recipe(tmp_path: Path) -> Path:
    """Copy the scripted recipe and its files into ``tmp_path`` (tests may edit the copies)."""
    target = tmp_path / "scripted"
    shutil.copytree(DATA / "scripted", target, dirs_exist_ok=True)
    shutil.copy(DATA / "problems_small.jsonl", tmp_path / "problems_small.jsonl")
    return target / "recipe.yaml"


def read_rows(folder: Path, config: str = "default") -> list[dict]:
    import pyarrow.parquet as pq

    sub = "data" if config == "default" else "verifications"
    rows = []
    for shard in sorted((Path(folder) / sub).glob("*.parquet")):
        rows.extend(pq.read_table(shard).to_pylist())
    return rows


def env_with_tests_on_path() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    env["SPARK_HUB_NO_PROGRESS"] = "1"
    return env
