"""Stage configs: one dataclass per stage, help text in field metadata.

Precedence: dataclass defaults < YAML recipe (``--config``) < ``--set key=value`` < explicit CLI
flags. Unknown keys are rejected with the list of valid ones. Nested sections (``generator``,
``verifier``, ``aggregation``) are addressed with dots: ``--set verifier.n=8``.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from spark_hub.backends.base import BackendConfig
from spark_hub.errors import SparkHubError
from spark_hub.stages.aggregate import AggregationConfig
from spark_hub.stages.balance import BalanceConfig
from spark_hub.stages.contamination import ContaminationConfig

logger = logging.getLogger(__name__)


@dataclass
class RoleConfig(BackendConfig):
    """A model role (generator or verifier): how to reach the model and how to sample from it.

    > Sampling (part of the cache key): ``n``, ``temperature``, ``top_p``, ``max_tokens``.
    > Engine (not part of the cache key): ``batch_size``, ``max_concurrency``, ``device``, ``extra``.
    """

    n: int = field(default=4, metadata={"help": "Samples per prompt: M solutions per problem, or N verifications per solution."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (0 = greedy)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling threshold in (0, 1]."})
    max_tokens: int = field(default=512, metadata={"help": "Maximum new tokens per completion."})

    def __post_init__(self):
        if self.n < 1:
            raise SparkHubError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise SparkHubError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise SparkHubError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise SparkHubError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.batch_size < 1:
            raise SparkHubError(f"batch_size must be >= 1, got {self.batch_size}")

    def backend_config(self) -> BackendConfig:
        names = {f.name for f in dataclasses.fields(BackendConfig)}
        return BackendConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})

    def sampling(self) -> dict[str, Any]:
        return {"n": self.n, "temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens}


def _generator_default() -> RoleConfig:
    return RoleConfig(n=4, temperature=0.7, top_p=0.95, max_tokens=512)


def _verifier_default() -> RoleConfig:
    return RoleConfig(n=4, temperature=0.8, top_p=0.95, max_tokens=1024)


@dataclass
class BuildConfig:
    """Stage I: ``spark-hub build-dataset``.

    > Inputs: ``problems`` (JSONL, Parquet or a Hub dataset id) with a configurable field mapping,
    > or ``solutions`` (existing step-split solutions to relabel; generation is skipped).
    > Models: ``generator`` and ``verifier`` sections (backend, model, sampling).
    > Labels: ``aggregation`` section. Output: ``output_dir``.
    """

    problems: str | None = field(default=None, metadata={"help": "Problems file (.jsonl/.parquet) or Hub dataset id."})
    problems_revision: str | None = field(default=None, metadata={"help": "Hub revision when `problems` is a Hub dataset id."})
    problems_split: str = field(default="train", metadata={"help": "Split to read when `problems` is a Hub dataset id."})
    problem_field: str = field(default="problem", metadata={"help": "Field holding the problem text."})
    answer_field: str | None = field(default="answer", metadata={"help": "Field holding the reference answer (optional; never shown to the verifier)."})
    id_field: str | None = field(default=None, metadata={"help": "Field holding a unique problem id (default: `id` if present, else the row number)."})
    limit: int | None = field(default=None, metadata={"help": "Use only the first N problems."})
    solutions: str | None = field(default=None, metadata={"help": "JSONL of existing solutions (`problem` + `steps`): skip generation and only verify."})
    generator: RoleConfig = field(default_factory=_generator_default, metadata={"help": "Generator model and sampling (n = M solutions per problem)."})
    verifier: RoleConfig = field(default_factory=_verifier_default, metadata={"help": "Verifier model and sampling (n = N verifications per solution)."})
    aggregation: AggregationConfig = field(default_factory=AggregationConfig, metadata={"help": "How N verifications become step labels."})
    balance: BalanceConfig = field(default_factory=BalanceConfig, metadata={"help": "Per-problem balancing of correct/incorrect solutions."})
    contamination: ContaminationConfig = field(default_factory=ContaminationConfig, metadata={"help": "N-gram overlap check against benchmarks."})
    seed: int = field(default=42, metadata={"help": "Sampling seed (part of every request)."})
    output_dir: str | None = field(default=None, metadata={"help": "Output folder, laid out like a Hub dataset repo."})
    cache: str | None = field(default=None, metadata={"help": "Model-call cache (SQLite). Default: OUTPUT_DIR/.spark/cache.sqlite."})
    chunk_size: int = field(default=64, metadata={"help": "Problems processed per chunk (memory bound; not in the cache key)."})
    shard_rows: int = field(default=50000, metadata={"help": "Rows per Parquet shard."})
    license: str = field(default="other", metadata={"help": "License of the dataset (card metadata), e.g. mit, apache-2.0."})
    push: bool = field(default=False, metadata={"help": "Push the dataset to the Hub when done."})
    hub_repo: str | None = field(default=None, metadata={"help": "Hub dataset repo id for --push."})
    hub_revision: str | None = field(default=None, metadata={"help": "Branch to push to (default: main; `auto` = a name derived from the config)."})

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise SparkHubError(f"limit must be >= 1, got {self.limit}")
        if self.chunk_size < 1:
            raise SparkHubError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.push and not self.hub_repo:
            raise SparkHubError("push is set but hub_repo is empty", hint="--hub-repo ORG/NAME")
        if self.verifier.n > 1 and self.verifier.temperature == 0:
            logger.warning("verifier.n=%d with temperature 0: the N verifications will be identical", self.verifier.n)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def uses_references(self) -> bool:
        """Whether labels or solution selection see reference answers (flagged in manifest and card)."""
        return self.aggregation.method == "reference_guided" or self.balance.uses_references


# ----------------------------------------------------------------------------- loading


def _valid_keys(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def from_dict(cls, data: dict[str, Any], *, where: str = "config", prefix: str = ""):
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys with the valid list."""
    if not isinstance(data, dict):
        raise SparkHubError(f"section {prefix.rstrip('.') or 'root'} must be a mapping, got {type(data).__name__}", where=where)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in hints or key not in _valid_keys(cls):
            raise SparkHubError(
                f"unknown key {prefix}{key!s}",
                where=where,
                hint=f"valid keys{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(_valid_keys(cls))}",
            )
        tp = hints[key]
        if _is_dataclass_type(tp):
            kwargs[key] = from_dict(tp, value or {}, where=where, prefix=f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}", where)
    try:
        return cls(**kwargs)
    except SparkHubError as e:
        if e.where is None:
            e.where = where
            e.args = (e.one_line(),)
        raise


def _coerce(value: Any, tp, name: str, where: str):
    """Light type checking for scalars from YAML / --set (the dataclass does the rest)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        tp = non_none[0] if len(non_none) == 1 else tp
    if typing.get_origin(tp) is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SparkHubError(f"{name} must be a list of strings, got {value!r}", where=where)
        return value
    if typing.get_origin(tp) is dict and not isinstance(value, dict):
        raise SparkHubError(f"{name} must be a mapping, got {value!r}", where=where)
    if tp is bool and not isinstance(value, bool):
        raise SparkHubError(f"{name} must be true or false, got {value!r}", where=where)
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise SparkHubError(f"{name} must be an integer, got {value!r}", where=where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SparkHubError(f"{name} must be a number, got {value!r}", where=where)
        return float(value)
    if tp is str and not isinstance(value, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise SparkHubError(f"{name} must be a string, got {value!r}", where=where)
    return value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        builtin = Path(__file__).parent / "pipelines" / f"{path}"
        for candidate in (builtin, builtin.with_suffix(".yaml")):
            if candidate.is_file():
                path = candidate
                break
        else:
            raise SparkHubError(f"config file not found: {path}", hint="see pipelines/ for recipes")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise SparkHubError(f"invalid YAML ({getattr(e, 'problem', e)})", where=f"{path}{line}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SparkHubError("a recipe must be a mapping of keys to values", where=str(path))
    # Input paths in a recipe may be written relative to the recipe itself.
    def relative_to_recipe(node, key) -> None:
        value = node[key] if isinstance(node, list) else node.get(key)
        if isinstance(value, str) and not Path(value).exists() and (path.parent / value).exists():
            node[key] = str((path.parent / value).resolve())

    for key in ("problems", "solutions"):
        relative_to_recipe(data, key)
    for role in ("generator", "verifier"):
        if isinstance(data.get(role), dict):
            relative_to_recipe(data[role], "model")
    benchmarks = (data.get("contamination") or {}).get("benchmarks")
    if isinstance(benchmarks, list):
        for i, _ in enumerate(benchmarks):
            relative_to_recipe(benchmarks, i)  # type: ignore[arg-type]
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML scalars) to a nested dict."""
    data = _deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise SparkHubError(f"--set expects key=value, got {item!r}", hint="e.g. --set verifier.n=8")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SparkHubError(f"--set {key}: {part} is not a section")
        node[parts[-1]] = value
    return data


def _deepcopy(d):
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in d.items()}


def load_build_config(
    path: str | Path | None = None, overrides: list[str] | None = None, **flags: Any
) -> BuildConfig:
    """Resolve a `BuildConfig`: defaults < YAML < ``--set`` < explicit flags (non-None)."""
    data = read_yaml(path) if path else {}
    data = apply_overrides(data, list(overrides or []))
    for key, value in flags.items():
        if value is not None:
            data[key] = value
    where = str(path) if path else "config"
    return from_dict(BuildConfig, data, where=where)


def dump_yaml(config) -> str:
    """The resolved config as YAML (written into every output)."""
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False, allow_unicode=True)
