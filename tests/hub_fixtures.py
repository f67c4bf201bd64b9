"""Fixtures for Hub tests: a loopback Hub server and small spark-hub output folders.

Import the fixtures into a test module with ``from hub_fixtures import hub_server  # noqa: F401``.

One `HubServer` serves the whole test session (``huggingface_hub`` and fsspec cache file systems per
endpoint, so a fixed endpoint keeps them consistent); each test gets a clean request log and no
pending faults, and should use its own repo names (`unique_repo`).
"""

from __future__ import annotations

import atexit
import secrets
import uuid
from pathlib import Path
from typing import Any

import pytest

from hub_server import HubServer

_SERVER: HubServer | None = None


def _session_server() -> HubServer:
    """The one server of this test session, started on first use and stopped at exit."""
    global _SERVER
    if _SERVER is None:
        _SERVER = HubServer().start()
        atexit.register(_SERVER.stop)
    return _SERVER


@pytest.fixture
def hub_server(monkeypatch):
    """The loopback Hub, with every client pointed at it and a dummy token in ``HF_TOKEN``.

    Sets ``HF_ENDPOINT`` and ``HF_TOKEN`` in the environment (spark-hub passes the endpoint to
    `HfApi` explicitly), and patches the values `huggingface_hub` and `datasets` read at import
    time. The token is available as ``hub_server.token``.
    """
    import datasets.config
    import huggingface_hub.constants as hf_constants

    server = _session_server()
    endpoint = server.endpoint
    token = "hf_sparktest" + secrets.token_hex(12)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", endpoint)
    monkeypatch.setattr(
        datasets.config, "HUB_DATASETS_URL", endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"
    )
    monkeypatch.setattr(datasets.config, "USE_PARQUET_EXPORT", False)
    server.clear_faults()
    server.clear_log()
    server.token = token
    yield server
    server.clear_faults()


def unique_repo(prefix: str = "repo") -> str:
    """A fresh ``spark-tester/<prefix>-<hex>`` repo id (the server maps every token to that user)."""
    return f"spark-tester/{prefix}-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------------------------------------
# Output folders
# ------------------------------------------------------------------------------------------------
#: Shaped like the resolved ``build-dataset`` config (generator.n = M, verifier.n = N).
DATASET_CONFIG = {
    "problems": "tests/data/problems.jsonl",
    "generator": {"backend": "scripted", "model": "HuggingFaceTB/SmolLM2-135M-Instruct", "n": 4,
                  "temperature": 0.7},
    "verifier": {"backend": "scripted", "model": "Qwen/Qwen3-32B", "n": 3, "temperature": 0.8},
    "aggregation": {"method": "step_consistency"},
    "seed": 42,
    "license": "apache-2.0",
}


def step_rows(n: int = 6) -> list[dict[str, Any]]:
    return [
        {
            "schema_version": "1", "problem_id": f"p{i // 3}", "solution_id": f"p{i // 3}-s{i % 3}",
            "step_index": i % 3, "step": f"Step {i % 3 + 1}: add {i} and {i + 1}.", "label": i % 4 != 0,
            "votes_correct": 3 - (i % 4 == 0) * 2, "votes_incorrect": (i % 4 == 0) * 2,
            "agreement": 1.0 if i % 4 else 2 / 3,
        }
        for i in range(n)
    ]


def verification_rows(n: int = 9) -> list[dict[str, Any]]:
    return [
        {
            "schema_version": "1", "solution_id": f"p{i // 9}-s{(i // 3) % 3}", "sample": i % 3,
            "raw": "## Step 1: check\nThis step is correct.\n"
                   f"Verification: Is the answer correct (Yes/No)? {'Yes' if i % 2 else 'No'}",
            "step_verdicts": [True, i % 2 == 1], "final_verdict": i % 2 == 1, "parse_status": "ok",
        }
        for i in range(n)
    ]


def make_dataset_folder(folder: str | Path, *, repo_id: str | None = None, config: dict | None = None,
                        uses_references: bool = False) -> Path:
    """A folder shaped like ``build-dataset`` output: data/, verifications/, config, card, manifest, .spark/."""
    import datasets
    import yaml

    from spark_hub.cards import AGREEMENT_PLOT_NAME, render_dataset_card, write_agreement_plot
    from spark_hub.io import atomic_write_text, sha256_text
    from spark_hub.manifest import new_manifest, write_manifest

    folder = Path(folder)
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "verifications").mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(step_rows()).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    datasets.Dataset.from_list(verification_rows()).to_parquet(
        str(folder / "verifications" / "train-00000-of-00001.parquet")
    )
    config = dict(config or DATASET_CONFIG)
    atomic_write_text(folder / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    statistics = {
        "records": 6, "verifications": 9, "parse_failure_rate": 0.0,
        "label_balance": {"correct": 4 / 6, "incorrect": 2 / 6}, "agreement_by_step": [0.89, 0.89, 1.0],
    }
    write_agreement_plot(statistics, folder / AGREEMENT_PLOT_NAME)
    # Local state that must never be pushed.
    (folder / ".spark").mkdir(exist_ok=True)
    (folder / ".spark" / "cache.sqlite").write_bytes(b"SQLite format 3\0local cache")
    manifest = new_manifest(
        "dataset", config=config,
        models={"generator": {"id": config["generator"]["model"], "backend": "scripted", "revision": "main"},
                "verifier": {"id": config["verifier"]["model"], "backend": "scripted", "fingerprint": "0" * 16}},
        prompts={"generator": sha256_text("generator prompt"), "verifier": sha256_text("verifier prompt")},
        seeds={"generate": 42, "verify": 43},
        inputs={"problems": {"source": "tests/data/problems.jsonl", "sha256": sha256_text("problems"), "rows": 2}},
        statistics=statistics, uses_references=uses_references, build_key="b" * 16,
        contamination={"benchmarks": ["math500"], "overlapping_problems": 0},
    )
    write_manifest(folder, manifest)
    from spark_hub.manifest import read_manifest

    atomic_write_text(folder / "README.md", render_dataset_card(read_manifest(folder), repo_id=repo_id))
    return folder


def make_model_folder(folder: str | Path, *, kind: str = "prm", repo_id: str | None = None,
                      results: dict | None = None) -> Path:
    """A tiny random Llama saved with ``save_pretrained``, plus a manifest of ``kind`` and its card."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from spark_hub.cards import render_model_card
    from spark_hub.io import atomic_write_text, sha256_text
    from spark_hub.manifest import new_manifest, read_manifest, write_manifest

    folder = Path(folder)
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
    LlamaForCausalLM(config).save_pretrained(folder)
    (folder / ".spark").mkdir(exist_ok=True)
    (folder / ".spark" / "trainer_state.json").write_text("{}")
    manifest = new_manifest(
        kind, config={"prm_format": "prm_cot", "learning_rate": 1e-5, "num_train_epochs": 1},
        models={"base_model": {"id": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "main"}},
        prompts={"prm_cot": sha256_text("prm prompt")}, seeds={"train": 0},
        inputs={"train": {"source": "spark-tester/spark-demo", "revision": "a" * 40, "rows": 6}},
        results=results if results is not None else {
            "processbench": {"gsm8k": {"f1": 61.5}, "math": {"f1": 55.25}},
            "math": {"math500": {"accuracy": 31.0}},
        },
    )
    write_manifest(folder, manifest)
    atomic_write_text(folder / "README.md", render_model_card(read_manifest(folder), repo_id=repo_id))
    return folder


def tree_bytes(folder: str | Path) -> dict[str, bytes]:
    """``{relative_path: bytes}`` of every file under ``folder`` (hidden ones included)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


__all__ = [
    "DATASET_CONFIG",
    "hub_server",
    "make_dataset_folder",
    "make_model_folder",
    "tree_bytes",
    "unique_repo",
]
