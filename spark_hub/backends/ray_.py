"""Ray backend: data-parallel generation over the GPUs (or CPU workers) of a Ray cluster.

Every replica is a Ray Data actor holding its own *local* backend (``inner_backend``: transformers,
vllm, openai, ...), built with `spark_hub.backends.base.load_backend`. A `generate` call turns its
requests into a Ray Data dataset, runs ``map_batches`` over an actor pool of replicas (one per GPU
by default) and returns the completions in request order. Nothing else changes: the cache in front
of the backend (`spark_hub.cache.CachedBackend`) stores every batch this backend returns, so a
multi-node build resumes exactly like a local one.

Options (``BackendConfig.extra``; every other key is handed to the inner backend's ``extra``):

- ``inner_backend``: the backend each replica runs (default ``transformers``).
- ``num_replicas``: how many replicas (default: cluster GPUs // ``num_gpus_per_replica``, or one
  per node on a CPU-only cluster).
- ``num_gpus_per_replica``: GPUs per replica (default ``tensor_parallel_size`` when given, else 1
  on a cluster with GPUs, 0 without).
- ``num_cpus_per_replica``: CPUs per replica (default 1). On CPU this is also the number of torch
  threads a replica uses (Ray sets ``OMP_NUM_THREADS`` from it).
- ``address``: the Ray cluster (default: ``$RAY_ADDRESS``, else a running cluster, else a new local
  instance; ``local`` always starts a new one). When Ray is already initialised in this process,
  that instance is used and left running on `close`.
- ``runtime_env``: Ray runtime environment (e.g. ``{"pip": [...], "env_vars": {...}}``).
- ``num_cpus``, ``num_gpus``, ``object_store_memory``: resources of a *local* instance started here.
- ``check_fingerprint``: every replica checks that it loaded the same model as the driver
  fingerprinted (default true; it hashes the model files once per replica start).
- ``keep_replicas``: keep the replicas alive between `generate` calls (default false, see below).

Costs to know: by default each `generate` call is one Ray Data job, and each job starts its own
actor pool, so every replica imports torch and loads the weights once per call. `CachedBackend`
calls `generate` once per ``batch_size`` requests (and build-dataset once per chunk of problems),
so either give a Ray role large ``batch_size`` and ``chunk_size`` values, or set
``keep_replicas: true``: the replicas then become long-lived Ray actors, started on the first
call and stopped by `close`, and later calls only ship requests and completions. Each call splits
its requests evenly over the replicas. Model paths must exist on every node (or use a Hub id), and
spark-hub must be installed on every node (or shipped with ``runtime_env``).

The fingerprint is computed on the driver without a cluster and without loading weights, the same
way the inner backend computes it (for transformers/vllm: content hash of a local folder or GGUF
file, or the Hub commit), so a build started locally can resume on Ray with the same cache.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import os
from typing import Any

from spark_hub.backends.base import BACKENDS, Backend, BackendConfig, Completion, GenerationRequest, load_backend
from spark_hub.errors import MissingExtraError, SparkHubError, require

logger = logging.getLogger(__name__)

RAY_OPTIONS = (
    "inner_backend",
    "num_replicas",
    "num_gpus_per_replica",
    "num_cpus_per_replica",
    "address",
    "runtime_env",
    "num_cpus",
    "num_gpus",
    "object_store_memory",
    "check_fingerprint",
    "keep_replicas",
)
"""Keys of ``BackendConfig.extra`` read by the Ray backend; all others go to the inner backend."""

WEIGHTS_BACKENDS = ("transformers", "vllm")
"""Inner backends that load weights when built: their fingerprint is computed from the model files
on the driver. Any other inner backend is built on the driver (cheap) and asked directly."""


def _import_ray():
    ray = require("ray", "ray", "the ray backend")
    require("ray.data", "ray", "the ray backend")
    return ray


# ---------------------------------------------------------------------------------------------
# Serialisation between the driver and the replicas (plain JSON strings in Ray Data rows)
# ---------------------------------------------------------------------------------------------


def request_to_json(request: GenerationRequest) -> str:
    """A `GenerationRequest` as a JSON string (messages as ``[role, content]`` lists)."""
    return json.dumps(dataclasses.asdict(request), ensure_ascii=False)


def request_from_json(text: str) -> GenerationRequest:
    """Inverse of `request_to_json`."""
    data = json.loads(text)
    data["messages"] = tuple((role, content) for role, content in data["messages"])
    return GenerationRequest(**data)


# ---------------------------------------------------------------------------------------------
# Fingerprints computed on the driver
# ---------------------------------------------------------------------------------------------


def model_provenance(config: BackendConfig) -> dict[str, Any]:
    """Fingerprint and provenance of a transformers/vllm model on the driver, without loading it
    (the rules of `spark_hub.backends.models`; the same folder must exist on every node).

    Returns:
        ``{"fingerprint", "revision", "file_hash", "source"}``.
    """
    from spark_hub.backends.models import resolve_model

    try:
        return resolve_model(config).provenance()
    except SparkHubError as e:
        raise SparkHubError(
            f"{e.message} on the driver",
            hint="the ray backend fingerprints the model on the driver: the same folder must exist here "
            "and on every node (or use a Hub model id)",
        ) from None


# ---------------------------------------------------------------------------------------------
# The replica
# ---------------------------------------------------------------------------------------------


class Replica:
    """One replica: builds a local backend once, then generates one batch per call.

    It runs as a Ray Data actor (the callable class of ``map_batches``), or as a long-lived Ray
    actor with ``keep_replicas``; in both cases batches are ``{"index", "request"}`` columns of
    request indices and `request_to_json` strings.

    Args:
        config: the inner backend's `BackendConfig`.
        expected_fingerprint: when set, the replica checks that its backend has this fingerprint,
            so a node holding a different copy of the model fails loudly instead of writing
            different outputs under the same cache keys.
    """

    def __init__(self, config: BackendConfig, expected_fingerprint: str | None = None):
        self.backend: Backend | None = None
        self.error: SparkHubError | None = None
        try:
            self.backend = load_backend(config)
            if expected_fingerprint is not None:
                found = self.backend.fingerprint()
                if found != expected_fingerprint:
                    import socket

                    raise SparkHubError(
                        f"replica on {socket.gethostname()} loaded model {config.model!r} with fingerprint "
                        f"{found}, but the driver computed {expected_fingerprint}",
                        hint="the model files differ between machines: sync them, or set "
                        "extra.check_fingerprint=false to skip this check",
                    )
        except SparkHubError as e:
            # Raised from the first call instead: Ray hands a task's exception back to the driver
            # as it was, while a failed actor constructor only comes back as text.
            self.error = e

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        """Ray Data entry point: ``{"index", "request"}`` columns in, ``{"index", "completions"}`` out."""
        return self.run(batch)

    def run(self, batch: dict[str, Any]) -> dict[str, list]:
        """Generate for one batch of JSON requests; completions come back as JSON strings."""
        if self.error is not None:
            raise self.error
        requests = [request_from_json(str(text)) for text in batch["request"]]
        outputs = self.backend.generate(requests)
        if len(outputs) != len(requests):
            raise RuntimeError(f"inner backend returned {len(outputs)} results for {len(requests)} requests")
        return {
            "index": [int(i) for i in batch["index"]],
            "completions": [json.dumps([c.to_dict() for c in out], ensure_ascii=False) for out in outputs],
        }


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------


class RayBackend:
    """Run an inner backend on every GPU (or CPU worker) of a Ray cluster, with Ray Data.

    Args:
        config: the `BackendConfig`. ``model``, ``revision``, ``dtype``, ``device``, ``batch_size``
            and the rest are handed to the inner backend; ``extra`` holds the Ray options listed in
            the module docstring (other keys go to the inner backend's ``extra``). ``batch_size`` is
            also the most requests a replica gets in one call.

    Attributes:
        model_id: ``config.model`` as given.
        inner_backend: the name of the backend each replica runs.

    Raises:
        MissingExtraError: ray is not installed (``pip install 'spark-hub[ray]'``).
        SparkHubError: invalid options.

    Example:
        ```python
        config = BackendConfig(backend="ray", model="Qwen/Qwen2.5-7B-Instruct", batch_size=4096,
                               extra={"inner_backend": "vllm", "num_gpus_per_replica": 1})
        backend = load_backend(config)
        completions = backend.generate(requests)
        ```
    """

    def __init__(self, config: BackendConfig):
        self.config = config
        self.model_id = config.model
        extra = dict(config.extra or {})
        self.inner_backend: str = extra.get("inner_backend") or "transformers"
        if self.inner_backend == "ray":
            raise SparkHubError("the ray backend cannot run itself as inner_backend",
                                hint="extra.inner_backend: transformers, vllm or openai")
        if self.inner_backend not in BACKENDS and ":" not in self.inner_backend:
            raise SparkHubError(
                f"unknown inner_backend {self.inner_backend!r}",
                hint=f"valid backends: {', '.join(b for b in BACKENDS if b != 'ray')}, or a 'module:Class' path",
            )
        if config.batch_size < 1:
            raise SparkHubError(f"batch_size must be >= 1, got {config.batch_size}")
        if importlib.util.find_spec("ray") is None:  # fail before any work, without importing ray
            raise MissingExtraError("ray", "ray", "the ray backend")
        self.num_replicas: int | None = _positive(extra, "num_replicas", int)
        self.num_gpus_per_replica: float | None = _positive(extra, "num_gpus_per_replica", float, allow_zero=True)
        self.num_cpus_per_replica: float = _positive(extra, "num_cpus_per_replica", float) or 1.0
        self.address: str | None = extra.get("address")
        self.runtime_env: dict[str, Any] | None = extra.get("runtime_env")
        self.check_fingerprint = bool(extra.get("check_fingerprint", True))
        self.keep_replicas = bool(extra.get("keep_replicas", False))
        self._local_resources = {
            key: extra[key] for key in ("num_cpus", "num_gpus", "object_store_memory") if extra.get(key) is not None
        }
        inner_extra = {key: value for key, value in extra.items() if key not in RAY_OPTIONS}
        self.inner_config = dataclasses.replace(config, backend=self.inner_backend, extra=inner_extra)

        self._provenance: dict[str, Any] | None = None
        self._driver_backend: Backend | None = None
        self._ray = None
        self._started_ray = False
        self._actors: list | None = None

    # -- provenance (no cluster, no weights) ---------------------------------------------------

    def _provenance_info(self) -> dict[str, Any]:
        if self._provenance is None:
            if self.inner_backend in WEIGHTS_BACKENDS:
                self._provenance = model_provenance(self.inner_config)
                if self._provenance["revision"]:  # every replica loads the commit fingerprinted here
                    self.inner_config = dataclasses.replace(self.inner_config, revision=self._provenance["revision"])
            else:
                self._driver_backend = load_backend(self.inner_config)
                info = self._driver_backend.describe()
                self._provenance = {key: info.get(key) for key in ("revision", "file_hash", "source")}
                self._provenance["fingerprint"] = self._driver_backend.fingerprint()
        return self._provenance

    def fingerprint(self) -> str:
        """The inner backend's fingerprint for this model, computed on the driver (no cluster needed)."""
        return self._provenance_info()["fingerprint"]

    def describe(self) -> dict[str, Any]:
        """Provenance for the manifest: the model (as the inner backend sees it) and the Ray layout."""
        info = self._provenance_info()
        return {
            "id": self.model_id,
            "backend": "ray",
            "inner_backend": self.inner_backend,
            "revision": info.get("revision"),
            "file_hash": info.get("file_hash"),
            "fingerprint": info["fingerprint"],
            "dtype": self.config.dtype,
            "source": info.get("source"),
            "num_replicas": self.num_replicas,
            "num_gpus_per_replica": self.num_gpus_per_replica,
            "num_cpus_per_replica": self.num_cpus_per_replica,
        }

    def count_tokens(self, request: GenerationRequest) -> int | None:
        """Counted by the inner backend when it runs on the driver (openai, scripted); else None,
        since the tokenizer only lives on the replicas."""
        self._provenance_info()
        return self._driver_backend.count_tokens(request) if self._driver_backend is not None else None

    # -- the cluster -----------------------------------------------------------------------------

    def _connect(self):
        """Initialise Ray once per backend (reusing an instance this process already has)."""
        if self._ray is not None:
            return self._ray
        ray = _import_ray()
        if ray.is_initialized():
            logger.info("ray backend: using the Ray instance already initialised in this process")
        else:
            common: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "logging_level": logging.WARNING,
            }
            if self.runtime_env:
                common["runtime_env"] = self.runtime_env
            address = self.address or os.environ.get("RAY_ADDRESS")
            if address and address != "local":
                ray.init(address=address, **common)
                logger.info("ray backend: connected to the cluster at %s", address)
            else:
                connected = False
                if address is None:
                    try:
                        ray.init(address="auto", **common)
                        connected = True
                        logger.info("ray backend: connected to the running cluster")
                    except ConnectionError:
                        pass
                if not connected:
                    ray.init(**self._local_resources, **common)
                    logger.info("ray backend: started a local Ray instance (%s)", _resources_text(ray))
            self._started_ray = True
        # spark-hub draws its own progress bars: no Ray Data bars, per-job summaries or notices
        data_context = ray.data.DataContext.get_current()
        data_context.enable_progress_bars = False
        data_context.print_on_execution_start = False
        data_context.enable_auto_log_stats = False
        data_context.raise_original_map_exception = True  # a replica's SparkHubError reaches the caller
        if not logger.isEnabledFor(logging.DEBUG):
            logging.getLogger("ray.data._internal.execution.streaming_executor").setLevel(logging.WARNING)
            logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        self._ray = ray
        return ray

    def _layout(self, ray) -> tuple[int, float]:
        """(replicas, GPUs per replica), filling in the defaults from the cluster's resources."""
        resources = ray.cluster_resources()
        cluster_gpus = int(resources.get("GPU", 0))
        gpus = self.num_gpus_per_replica
        if gpus is None:
            tp = self.inner_config.extra.get("tensor_parallel_size")
            gpus = float(tp or 1) if cluster_gpus else 0.0
        replicas = self.num_replicas
        if replicas is None:
            if gpus > 0:
                replicas = max(1, int(cluster_gpus // gpus))
            else:
                replicas = max(1, sum(1 for node in ray.nodes() if node.get("Alive")))
        if gpus > cluster_gpus and gpus > 0:
            raise SparkHubError(
                f"each replica needs {gpus:g} GPU(s) but the Ray cluster has {cluster_gpus}",
                hint="set extra.num_gpus_per_replica=0 to run on CPU, or connect to a cluster with GPUs",
            )
        return replicas, gpus

    # -- generation ------------------------------------------------------------------------------

    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        """Sample ``request.n`` completions per request on the replicas; same order as ``requests``.

        The requests are split evenly over the replicas, at most ``batch_size`` per replica call.
        By default the call is one Ray Data job whose actor pool builds the inner backend on each
        replica; with ``extra.keep_replicas`` the replicas of the first call serve every later one.
        """
        if not requests:
            return []
        fingerprint = self.fingerprint() if self.check_fingerprint else None
        inner_config = self.inner_config  # read after fingerprint(): Hub revisions are pinned to a commit
        ray = self._connect()
        replicas, gpus = self._layout(ray) if self._actors is None else (len(self._actors), 0.0)
        rows_per_batch = max(1, min(self.config.batch_size, math.ceil(len(requests) / replicas)))
        num_batches = math.ceil(len(requests) / rows_per_batch)
        logger.debug("ray backend: %d requests in %d batches over %d replicas", len(requests), num_batches,
                     replicas if self.keep_replicas else min(replicas, num_batches))
        try:
            if self.keep_replicas:
                rows = self._run_on_actors(ray, requests, rows_per_batch, replicas, gpus, inner_config, fingerprint)
            else:
                rows = self._run_with_ray_data(ray, requests, rows_per_batch, replicas, gpus, inner_config, fingerprint)
        except Exception as e:
            cause = _user_error(e)
            if cause is not None:
                raise cause from None
            raise

        results: list[list[Completion] | None] = [None] * len(requests)
        for index, completions in rows:
            results[index] = [Completion.from_dict(d) for d in json.loads(completions)]
        missing = sum(r is None for r in results)
        if missing:
            raise RuntimeError(f"ray backend: no result for {missing} of {len(requests)} requests")
        return results  # type: ignore[return-value]

    def _run_with_ray_data(self, ray, requests, rows_per_batch, replicas, gpus, inner_config, fingerprint):
        """One Ray Data job: ``map_batches`` over an actor pool that lives for this call only."""
        num_batches = math.ceil(len(requests) / rows_per_batch)
        items = [{"index": i, "request": request_to_json(r)} for i, r in enumerate(requests)]
        dataset = ray.data.from_items(items, override_num_blocks=num_batches)
        remote_args: dict[str, Any] = {}
        if self.runtime_env and not self._started_ray:  # Ray was set up by the caller: per-job env
            remote_args["runtime_env"] = self.runtime_env
        outputs = dataset.map_batches(
            Replica,
            fn_constructor_kwargs={"config": inner_config, "expected_fingerprint": fingerprint},
            batch_size=rows_per_batch,
            batch_format="numpy",
            # never start replicas that would get no work; one batch at a time per replica
            compute=ray.data.ActorPoolStrategy(size=min(replicas, num_batches), max_tasks_in_flight_per_actor=1),
            num_gpus=gpus,
            num_cpus=self.num_cpus_per_replica,
            **remote_args,
        )
        return [(int(row["index"]), row["completions"]) for row in outputs.take_all()]

    def _run_on_actors(self, ray, requests, rows_per_batch, replicas, gpus, inner_config, fingerprint):
        """Send the batches to long-lived replica actors (started on the first call)."""
        from ray.util import ActorPool

        if self._actors is None:
            options: dict[str, Any] = {"num_cpus": self.num_cpus_per_replica, "num_gpus": gpus,
                                       "max_restarts": -1, "max_task_retries": -1}
            if self.runtime_env and not self._started_ray:
                options["runtime_env"] = self.runtime_env
            actor_class = ray.remote(Replica).options(**options)
            self._actors = [actor_class.remote(inner_config, fingerprint) for _ in range(replicas)]
            logger.info("ray backend: started %d replicas of %s (%s)", replicas, self.inner_backend, self.model_id)
        batches = []
        for start in range(0, len(requests), rows_per_batch):
            chunk = range(start, min(start + rows_per_batch, len(requests)))
            batches.append({"index": list(chunk), "request": [request_to_json(requests[i]) for i in chunk]})
        rows = []
        for output in ActorPool(self._actors).map_unordered(lambda actor, batch: actor.run.remote(batch), batches):
            rows.extend(zip(output["index"], output["completions"]))
        return rows

    def close(self) -> None:
        """Stop the kept replicas, close a driver-side inner backend, and shut Ray down if this
        backend started it (a cluster it connected to keeps running)."""
        if self._actors is not None and self._ray is not None:
            for actor in self._actors:
                self._ray.kill(actor)
        self._actors = None
        if self._driver_backend is not None:
            self._driver_backend.close()
            self._driver_backend = None
        if self._ray is not None and self._started_ray:
            self._ray.shutdown()
        self._ray = None
        self._started_ray = False


def _positive(extra: dict[str, Any], key: str, kind: type, allow_zero: bool = False):
    value = extra.get(key)
    if value is None:
        return None
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number < 0 or (number == 0 and not allow_zero) or isinstance(value, bool):
        kind_text = "non-negative" if allow_zero else "positive"
        raise SparkHubError(f"extra.{key} must be a {kind_text} number, got {value!r}")
    return number


def _resources_text(ray) -> str:
    resources = ray.cluster_resources()
    return ", ".join(f"{key}={resources[key]:g}" for key in ("CPU", "GPU") if key in resources) or "no resources"


def _user_error(error: BaseException) -> SparkHubError | None:
    """The `SparkHubError` raised inside a replica, if that is what made the Ray job fail."""
    seen = set()
    stack = [error]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, SparkHubError):
            return SparkHubError(current.message, where=current.where, hint=current.hint)
        stack.extend([current.__cause__, current.__context__, getattr(current, "cause", None)])
    return None
