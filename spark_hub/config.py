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

from spark_hub.backends.base import BACKENDS, BackendConfig
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
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:  # BackendConfig's own checks, if it has them
            parent()
        if self.backend not in BACKENDS and ":" not in self.backend:
            raise invalid("backend", f"unknown backend {self.backend!r}",
                          hint=f"valid backends: {', '.join(BACKENDS)}, or a 'module:Class' path")
        if self.n < 1:
            raise invalid("n", f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise invalid("temperature", f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise invalid("top_p", f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise invalid("max_tokens", f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.batch_size < 1:
            raise invalid("batch_size", f"batch_size must be >= 1, got {self.batch_size}")

    def backend_config(self) -> BackendConfig:
        names = {f.name for f in dataclasses.fields(BackendConfig)}
        return BackendConfig(**{k: v for k, v in dataclasses.asdict(self).items() if k in names})

    def sampling(self) -> dict[str, Any]:
        """The request-level (cache-key) settings. ``logprobs`` and ``constrained`` appear only when
        set, so keys and manifests of builds without them stay as they were."""
        sampling: dict[str, Any] = {"n": self.n, "temperature": self.temperature, "top_p": self.top_p,
                                    "max_tokens": self.max_tokens}
        if getattr(self, "logprobs", False):
            sampling["logprobs"] = True
        if getattr(self, "constrained", False):
            sampling["constrained"] = True
        return sampling


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
    problems_config: str | None = field(default=None, metadata={"help": "Hub dataset config (subset) when `problems` is a Hub id; required when the repo has several, e.g. openai/gsm8k main/socratic."})
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
    source_datasets: list[str] = field(default_factory=list, metadata={"help": "Hub ids of the datasets the problems come from, e.g. [openai/gsm8k]; shown as source_datasets in the card."})
    push: bool = field(default=False, metadata={"help": "Push the dataset to the Hub when done."})
    hub_repo: str | None = field(default=None, metadata={"help": "Hub dataset repo id for --push."})
    hub_revision: str | None = field(default=None, metadata={"help": "Branch to push to (default: main; `auto` = a name derived from the config)."})

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise invalid("limit", f"limit must be >= 1, got {self.limit}")
        if self.chunk_size < 1:
            raise invalid("chunk_size", f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.push and not self.hub_repo:
            raise invalid("push", "push is set but hub_repo is empty", hint="--hub-repo ORG/NAME")
        if self.verifier.n > 1 and self.verifier.temperature == 0:
            logger.warning("verifier.n=%d with temperature 0: the N verifications will be identical", self.verifier.n)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def uses_references(self) -> bool:
        """Whether labels or solution selection see reference answers (flagged in manifest and card)."""
        return self.aggregation.method == "reference_guided" or self.balance.uses_references


# ----------------------------------------------------------------------------- loading
#
# A config is resolved from up to four layers: dataclass defaults < YAML recipe < ``--set key=value``
# < explicit CLI flags. `Sources` remembers which layer set each (dotted) key, so an error can name
# where the offending value came from: ``recipe.yaml:12``, ``--set verifier.n`` or ``--limit``.

#: The model roles; a value under one of these sections is reported with the role's name.
ROLES = ("generator", "verifier")
#: Top-level keys holding input paths that a recipe may write relative to itself (Stage I problems
#: and solutions, Stage II step records, Stage III problems, monitor set and PRM folder). A value is
#: rewritten only when it does not exist as given but does next to the recipe, so Hub ids stay.
RECIPE_RELATIVE_KEYS = ("problems", "solutions", "dataset", "monitor_problems", "prm")


class Sources(dict):
    """``{dotted key: where its value came from}`` (``"recipe.yaml:12"``, ``"--set verifier.n"``...)."""

    def label(self, key: str) -> str | None:
        """Where ``key`` (or the closest section above it) was set, or None for a default."""
        parts = key.split(".")
        for i in range(len(parts), 0, -1):
            found = self.get(".".join(parts[:i]))
            if found is not None:
                return found
        return None


def invalid(field_name: str, message: str, *, hint: str | None = None) -> SparkHubError:
    """A `SparkHubError` for one dataclass field; the loader adds the key's source and role."""
    error = SparkHubError(message, hint=hint)
    error.field = field_name  # type: ignore[attr-defined]
    return error


def _valid_keys(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _did_you_mean(key: str, valid: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, valid, n=1)
    return f"did you mean {close[0]}? " if close else ""


def _blamed_fields(error: BaseException, cls, given: dict[str, Any]) -> list[str]:
    """The fields a validation error is about, in this order of evidence:

    1. its ``field`` attribute (`invalid`);
    2. the given field its message starts with (``"n must be >= 1"``, ``"balance.by must be..."``);
    3. the given fields its message names (``"At most one of fp16 and bf16..."``; also when it starts
       with a field the user did not set, e.g. TRL's derived ``generation_batch_size``);
    4. the field its message starts with, even a default one;
    5. the given fields whose value it quotes (``"nope is not a valid SchedulerType"``).
    """
    import re

    name = getattr(error, "field", None)
    valid = _valid_keys(cls)
    if name in valid:
        return [name]
    message = getattr(error, "message", None) or str(error)
    first = message.split(" ", 1)[0].strip("`'\":,").rsplit(".", 1)[-1]
    if first in given:
        return [first]

    def word(text: str) -> str:
        return rf"(?<![\w.]){re.escape(text)}(?![\w])"

    named = [k for k in given if re.search(word(k), message)]
    if named:
        return named
    if first in valid:
        return [first]
    return [k for k, v in given.items()
            if isinstance(v, (str, int, float)) and not isinstance(v, bool) and str(v) and re.search(word(str(v)), message)]


def _with_source(error: BaseException, *, keys: list[str], sources: Sources, where: str) -> SparkHubError:
    """Re-raise a validation error as one line naming the values' sources and, under a role, the role."""
    labels = []
    for key in keys:
        label = sources.label(key) or f"{key} (default)"
        if label not in labels:
            labels.append(label)
    roles = sorted({key.split(".", 1)[0] for key in keys if key.split(".", 1)[0] in ROLES})
    message = getattr(error, "message", None) or " ".join(str(error).split())
    hint = "; ".join(h for h in (", ".join(roles), getattr(error, "hint", None)) if h) or None
    return SparkHubError(message, where=", ".join(labels) or where, hint=hint)


def from_dict(cls, data: dict[str, Any], *, where: str = "config", prefix: str = "",
              sources: Sources | None = None):
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys with the valid list.

    Errors name the source of the offending key (see `Sources`) and, inside a ``generator`` or
    ``verifier`` section, the role.
    """
    sources = sources if sources is not None else Sources()
    section = prefix.rstrip(".")
    if not isinstance(data, dict):
        raise SparkHubError(f"section {section or 'root'} must be a mapping, got {type(data).__name__}",
                            where=sources.label(section) or where)
    hints = typing.get_type_hints(cls)
    valid = _valid_keys(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in valid:
            raise SparkHubError(
                f"unknown key {prefix}{key!s}",
                where=sources.label(f"{prefix}{key}") or where,
                hint=f"{_did_you_mean(str(key), valid)}valid keys{' under ' + section if section else ''}: "
                     f"{', '.join(valid)}",
            )
        tp = hints[key]
        if _is_dataclass_type(tp):
            kwargs[key] = from_dict(tp, value or {}, where=where, prefix=f"{prefix}{key}.", sources=sources)
        else:
            try:
                kwargs[key] = _coerce(value, tp, f"{prefix}{key}")
            except SparkHubError as e:
                raise _with_source(e, keys=[f"{prefix}{key}"], sources=sources, where=where) from None
    try:
        return cls(**kwargs)
    except (SparkHubError, ValueError, TypeError) as e:
        if isinstance(e, TypeError) and not isinstance(e, SparkHubError) and "__init__" not in str(e):
            raise
        names = _blamed_fields(e, cls, {k: data[k] for k in kwargs if k in data})
        keys = [f"{prefix}{name}" for name in names] or ([section] if section else [])
        raise _with_source(e, keys=keys, sources=sources, where=where) from None


def _coerce(value: Any, tp, name: str):
    """Light type checking for scalars from YAML / --set (the dataclass does the rest)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        if len(non_none) != 1:
            return value  # e.g. `dict | str`: the dataclass decides
        tp = non_none[0]
    if typing.get_origin(tp) is list:
        item = (typing.get_args(tp) or (str,))[0]
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise SparkHubError(f"{name} must be a list, got {value!r}")
        if item is str and not all(isinstance(v, str) for v in value):
            raise SparkHubError(f"{name} must be a list of strings, got {value!r}")
        return value
    if typing.get_origin(tp) is dict and not isinstance(value, dict):
        raise SparkHubError(f"{name} must be a mapping, got {value!r}")
    if tp is bool and not isinstance(value, bool):
        raise SparkHubError(f"{name} must be true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise SparkHubError(f"{name} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-5` as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SparkHubError(f"{name} must be a number, got {value!r}")
        return float(value)
    if tp is str and not isinstance(value, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise SparkHubError(f"{name} must be a string, got {value!r}")
    return value


def _key_lines(text: str) -> dict[str, int]:
    """``{dotted key: 1-based line}`` of every mapping key in a YAML document."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}

    def walk(node, prefix: str) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            lines[key] = key_node.start_mark.line + 1
            walk(value_node, f"{key}.")

    walk(root, "")
    return lines


def find_recipe(path: str | Path) -> Path:
    """A recipe path, or the name of a built-in one (``demo-cpu``, ``spark-paper/single``)."""
    path = Path(path)
    if path.is_file():
        return path
    builtin = Path(__file__).parent / "pipelines" / f"{path}"
    for candidate in (builtin, builtin.with_suffix(".yaml")):
        if candidate.is_file():
            return candidate
    raise SparkHubError(f"config file not found: {path}", hint="`spark-hub recipes` lists the built-in ones")


def read_recipe(path: str | Path) -> tuple[dict[str, Any], Sources]:
    """Read a YAML recipe; returns the data and where each key is (``file:line``)."""
    path = find_recipe(path)
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise SparkHubError(f"invalid YAML ({getattr(e, 'problem', e)})", where=f"{path}{line}") from e
    if data is None:
        return {}, Sources()
    if not isinstance(data, dict):
        raise SparkHubError("a recipe must be a mapping of keys to values", where=str(path))
    sources = Sources({key: f"{path}:{line}" for key, line in _key_lines(text).items()})

    # Input paths in a recipe may be written relative to the recipe itself, and the recipe's folder
    # wins: the same recipe must read the same file from any working directory. A value that does
    # not exist next to the recipe stays as given (a path from the working directory, a Hub id).
    def relative_to_recipe(node, key) -> None:
        value = node[key] if isinstance(node, list) else node.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute() and (path.parent / value).exists():
            node[key] = str((path.parent / value).resolve())

    for key in RECIPE_RELATIVE_KEYS:
        relative_to_recipe(data, key)
    for role in ROLES:
        if isinstance(data.get(role), dict):
            relative_to_recipe(data[role], "model")
    benchmarks = (data.get("contamination") or {}).get("benchmarks")
    if isinstance(benchmarks, list):
        for i, _ in enumerate(benchmarks):
            relative_to_recipe(benchmarks, i)  # type: ignore[arg-type]
    return data, sources


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe; errors name the file and line."""
    return read_recipe(path)[0]


def apply_overrides(data: dict[str, Any], overrides: list[str], sources: Sources | None = None) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML scalars) to a nested dict."""
    data = _deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise SparkHubError(f"--set expects key=value, got {item!r}", hint="e.g. --set verifier.n=8")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SparkHubError(f"{part} is not a section", where=f"--set {key}")
        node[parts[-1]] = value
        if sources is not None:
            sources[key] = f"--set {key}"
    return data


def _deepcopy(d):
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in d.items()}


def _apply_flags(data: dict[str, Any], flags: dict[str, Any], sources: Sources,
                 flag_names: dict[str, str] | None = None) -> None:
    """Explicit CLI flags (None = not given); dotted keys address sections. A flag is named in errors
    as ``flag_names[key]``, else ``--`` + the key's last part with dashes (``limit`` -> ``--limit``)."""
    for key, value in flags.items():
        if value is None:
            continue
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        sources[key] = (flag_names or {}).get(key) or "--" + parts[-1].replace("_", "-")


def _looks_like_path(model: str) -> bool:
    """A model string that can only be a local path (a Hub id is ``name`` or ``org/name``)."""
    return model.startswith(("/", ".", "~")) or "\\" in model or model.count("/") > 1 or \
        model.endswith((".gguf", ".jsonl", ".json"))


def _check_model_paths(config: "BuildConfig", sources: Sources, where: str) -> None:
    """A missing local model path is an error naming the role and the source, before anything runs."""
    roles = ("verifier",) if config.solutions else ROLES
    for role in roles:
        rc: RoleConfig = getattr(config, role)
        if rc.backend == "openai" or rc.model == "embedded":
            continue  # a served model name, or the packaged GGUF
        path = Path(rc.model).expanduser()
        if not path.exists() and (rc.backend == "scripted" or _looks_like_path(rc.model)):
            error = SparkHubError(f"model path {rc.model!r} does not exist",
                                  hint="pass an existing folder written by save_pretrained, a Hub model id, or `embedded`")
            raise _with_source(error, keys=[f"{role}.model"], sources=sources, where=where)


def load_build_config(
    path: str | Path | None = None, overrides: list[str] | None = None, **flags: Any
) -> BuildConfig:
    """Resolve a `BuildConfig`: defaults < YAML < ``--set`` < explicit flags (non-None).

    Errors name the role (generator / verifier) and where the value came from::

        --set verifier.n: n must be >= 1, got 0 (verifier)
        pipelines/demo-cpu.yaml:17: temperature must be >= 0, got -1.0 (generator)
    """
    data, sources = read_recipe(path) if path else ({}, Sources())
    data = apply_overrides(data, list(overrides or []), sources)
    _apply_flags(data, flags, sources)
    where = str(path) if path else "config"
    config = from_dict(BuildConfig, data, where=where, sources=sources)
    _check_model_paths(config, sources, where)
    return config


# ----------------------------------------------------------------------------- several dataclasses, one YAML
#
# The training and evaluation stages combine spark-hub dataclasses with TRL's (`SFTConfig`,
# `GRPOConfig`, `ModelConfig`) in one recipe, open-r1 style. The rules are `trl.TrlParser`'s:
# the recipe is one flat mapping over the fields of all the dataclasses (a key that several of them
# declare, such as ``seed``, goes to each), an ``env:`` block sets environment variables, and keys no
# dataclass declares are an error. On top of TrlParser: ``--set`` and explicit flags with the same
# precedence as `load_build_config`, nested spark-hub sections (``verifier: {n: 4}``), errors that
# name the source of the value, and CPU-friendly defaults when there is no accelerator.

#: TrainingArguments values used when no accelerator is present and the user did not set them:
#: TRL defaults ``bf16`` to True, which a CPU-only machine cannot run.
CPU_DEFAULTS = {"use_cpu": True, "bf16": False}


def has_accelerator() -> bool:
    """Whether torch sees a GPU (or another accelerator); False when torch is not installed."""
    try:
        import torch
    except ImportError:
        return False
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    return torch.cuda.is_available()


def _is_training_arguments(cls) -> bool:
    return any(base.__name__ == "TrainingArguments" for base in cls.__mro__)


def parse_config(
    dataclass_types: typing.Sequence[type],
    path: str | Path | None = None,
    overrides: typing.Iterable[str] = (),
    flags: dict[str, Any] | None = None,
    *,
    accelerator: bool | None = None,
    flag_names: dict[str, str] | None = None,
) -> tuple:
    """Instantiate several dataclasses from ONE YAML recipe, ``--set`` overrides and CLI flags.

    Precedence: dataclass defaults < recipe < ``--set key=value`` < ``flags`` (None = not given).
    Unknown keys are rejected with the list of valid ones; every error names where the value came
    from (``recipe.yaml:7``, ``--set learning_rate``, ``--output-dir``) and, under a ``generator`` or
    ``verifier`` section, the role.

    Args:
        dataclass_types: e.g. ``(SparkSFTArgs, trl.SFTConfig, trl.ModelConfig)``.
        path: the recipe (a file, or the name of a built-in one); None for none.
        overrides: ``key=value`` strings (values parsed as YAML), dotted keys for nested sections.
        flags: explicit CLI flags by dataclass field name.
        accelerator: whether a GPU is present (default: ask torch). Without one, subclasses of
            `transformers.TrainingArguments` get `CPU_DEFAULTS` for the keys the user did not set.
        flag_names: how errors name a flag whose option differs from its key
            (``{"hub_private": "--private"}``).

    Returns:
        One instance per type, in order.

    Example:
        >>> from trl import ModelConfig, SFTConfig
        >>> training, model = parse_config((SFTConfig, ModelConfig), overrides=["learning_rate=1e-5",
        ...                                "model_name_or_path=my/model"], accelerator=False)
        >>> training.learning_rate, training.use_cpu, model.model_name_or_path
        (1e-05, True, 'my/model')
    """
    import os

    types_ = list(dataclass_types)
    data, sources = read_recipe(path) if path else ({}, Sources())
    where = str(path) if path else "config"
    declared = {f for cls in types_ for f in _valid_keys(cls)}
    if "env" in data and "env" not in declared:
        env = data.pop("env")
        if not isinstance(env, dict):
            raise SparkHubError("`env` must be a mapping of variable names to values", where=sources.label("env") or where)
        for key, value in env.items():
            os.environ[str(key)] = str(value)
    data = apply_overrides(data, list(overrides), sources)
    _apply_flags(data, dict(flags or {}), sources, flag_names)

    valid = sorted(declared)
    per_type: list[dict[str, Any]] = [{} for _ in types_]
    for key, value in data.items():
        owners = [i for i, cls in enumerate(types_) if key in _valid_keys(cls)]
        if not owners:
            raise SparkHubError(f"unknown key {key}", where=sources.label(str(key)) or where,
                                hint=f"{_did_you_mean(str(key), valid)}valid keys: {', '.join(valid)}")
        for i in owners:
            per_type[i][key] = value

    if accelerator is None:
        accelerator = has_accelerator()
    for cls, values in zip(types_, per_type):
        if not accelerator and _is_training_arguments(cls):
            for key, value in CPU_DEFAULTS.items():
                if key not in values:
                    values[key] = value
                    sources.setdefault(key, f"{key} (CPU default: no accelerator)")
    return tuple(from_dict(cls, values, where=where, sources=sources) for cls, values in zip(types_, per_type))


def dump_yaml(config) -> str:
    """The resolved config as YAML (written into every output)."""
    return yaml.safe_dump(dataclasses.asdict(config), sort_keys=False, allow_unicode=True)
