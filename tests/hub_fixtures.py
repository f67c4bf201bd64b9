"""Fixtures for Hub tests: a loopback Hub server and small spark-hub output folders.

Dataset folders are copies of one real ``build-dataset`` run on the scripted backend (built once per
session, `built_dataset`), so their rows, manifest and card are what the pipeline writes and pass
the project's own validation; model folders hold a tiny random Llama with a manifest.

Import the fixtures into a test module with ``from hub_fixtures import hub_server  # noqa: F401``.

One `HubServer` serves the whole test session (``huggingface_hub`` and fsspec cache file systems per
endpoint, so a fixed endpoint keeps them consistent); each test gets a clean request log and no
pending faults, and should use its own repo names (`unique_repo`).
"""

from __future__ import annotations

import atexit
import secrets
import shutil
import tempfile
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


_BUILT: Path | None = None


def built_dataset() -> Path:
    """The output folder of a real ``build-dataset`` run (scripted backend, tests/data/scripted),
    built once per test session; copy it (`make_dataset_folder`), never modify it."""
    global _BUILT
    if _BUILT is None:
        from helpers import scripted_recipe
        from spark_hub.config import load_build_config
        from spark_hub.stages import build

        root = Path(tempfile.mkdtemp(prefix="spark-hub-test-built-"))
        atexit.register(shutil.rmtree, root, True)
        config = load_build_config(scripted_recipe(root), ["license=apache-2.0"], output_dir=str(root / "out"))
        build.main(config, progress=False)
        _BUILT = root / "out"
    return _BUILT


def make_dataset_folder(folder: str | Path, *, repo_id: str | None = None,
                        config_update: dict | None = None) -> Path:
    """A copy of a real ``build-dataset`` output (`built_dataset`): data/, verifications/, config.yaml,
    the agreement plot, README.md, manifest.json and local state in .spark/.

    Args:
        repo_id: render the local card for this repo (as ``build-dataset --hub-repo`` does).
        config_update: merged into the recorded config (config.yaml and the manifest, which is
            rewritten with its file table): to test what a config may carry into a push.
    """
    from spark_hub.cards import write_card
    from spark_hub.io import atomic_write_text
    from spark_hub.manifest import read_manifest, write_manifest

    folder = Path(folder)
    shutil.copytree(built_dataset(), folder)
    if config_update:
        import yaml

        manifest = {k: v for k, v in read_manifest(folder).items() if k != "files"}
        manifest["config"] = _merge(manifest["config"], config_update)
        atomic_write_text(folder / "config.yaml", yaml.safe_dump(manifest["config"], sort_keys=False))
        write_manifest(folder, manifest)
    write_card(folder, repo_id=repo_id)
    return folder


def rewrite_manifest(folder: str | Path, **changes: Any) -> dict:
    """Rewrite ``folder``'s manifest with ``changes`` and a fresh file table (and its card)."""
    from spark_hub.cards import write_card
    from spark_hub.manifest import read_manifest, write_manifest

    manifest = {k: v for k, v in read_manifest(folder).items() if k != "files"}
    manifest.update(changes)
    write_manifest(folder, manifest)
    write_card(folder)
    return read_manifest(folder)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def make_model_folder(folder: str | Path, *, kind: str = "prm", repo_id: str | None = None,
                      results: dict | None = None) -> Path:
    """A tiny random Llama saved with ``save_pretrained``, plus a manifest of ``kind`` and its card."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from spark_hub.cards import write_card
    from spark_hub.io import sha256_text
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
    write_card(folder, read_manifest(folder), repo_id=repo_id)
    return folder


def tree_bytes(folder: str | Path) -> dict[str, bytes]:
    """``{relative_path: bytes}`` of every file under ``folder`` (hidden ones included)."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


__all__ = [
    "DATASET_CONFIG",
    "built_dataset",
    "hub_server",
    "make_dataset_folder",
    "make_model_folder",
    "rewrite_manifest",
    "tree_bytes",
    "unique_repo",
]
