"""Dataset and model cards, rendered from the manifest only.

A card is the Hub ``README.md``: YAML metadata (`huggingface_hub.DatasetCardData` /
`huggingface_hub.ModelCardData`) followed by a Markdown body rendered from a jinja2 template in
``spark_hub/cards/``. Templates run in a `jinja2.sandbox.SandboxedEnvironment` and only see values
derived from the manifest, so a card always matches the artifact it describes and can be rebuilt
from ``manifest.json`` alone. Secrets are redacted before and after rendering: config keys named
exactly like a secret (`SECRET_KEYS`: ``token``, ``api_key``, ``password``...; ``max_tokens`` is
not one) and every occurrence of a known secret value (the Hub token, API keys). Absolute local
paths are reduced to their names, and bundled models are named by their Hub repo.

Example:

```py
>>> from spark_hub.cards import render_dataset_card
>>> text = render_dataset_card(manifest, repo_id="my-org/spark-demo")  # doctest: +SKIP
>>> DatasetCard(text).data.configs[0]["config_name"]  # doctest: +SKIP
'default'
```
"""

from __future__ import annotations

import math
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from spark_hub.errors import SparkHubError

#: Where the Hub looks for the per-step agreement plot (write it there before the manifest).
AGREEMENT_PLOT_NAME = "assets/agreement_by_step.png"
PLOT_TITLE = "Mean per-step agreement between verifications"
DATASET_TAGS = ("spark-hub", "process-reward-model", "synthetic")
PRM_TAGS = ("spark-hub", "process-reward-model", "generative-prm")
POLICY_TAGS = ("spark-hub", "grpo", "reasoning", "math")
TEMPLATES = {"dataset": "dataset_card.md", "prm": "prm_card.md", "policy": "policy_card.md", "sft": "sft_card.md"}
SFT_TAGS = ("spark-hub", "process-reward-model", "synthetic", "sft")
DEFAULT_LICENSE = "other"
DEFAULT_TITLES = {
    "dataset": "SPARK step-verification data", "prm": "SPARK generative PRM", "policy": "SPARK GRPO policy",
    "sft": "SPARK reward-model SFT data",
}
#: Stands for the Hub repo in local cards rendered before it is known; `spark_hub.hub.push`
#: renders the pushed card again from the manifest with the target repo id.
REPO_PLACEHOLDER = "your-org/your-repo"
PROCESSBENCH_ID = "Qwen/ProcessBench"
#: Hub datasets behind the math benchmark names used by ``eval math`` (for model-index links).
MATH_BENCHMARK_IDS = {
    "math500": "HuggingFaceH4/MATH-500",
    "gsm8k": "openai/gsm8k",
}
CITATION = """@misc{rahman2025spark,
  title         = {SPARK: Stepwise Process-Aware Rewards for Reference-Free Reinforcement Learning},
  author        = {Rahman and others},
  year          = {2025},
  eprint        = {2512.03244},
  archivePrefix = {arXiv},
  url           = {https://arxiv.org/abs/2512.03244},
}"""

#: Shared by every card: the provenance tables (rendered in the same sandbox, passed as
#: ``provenance_md``).
PROVENANCE_TEMPLATE = """\
| | |
|---|---|
| spark-hub | {{ p.spark_hub_version | cell }} |
| git commit | {{ p.git_sha | cell }} |
| build key | {{ p.build_key | cell }} |
| created | {{ p.created_at | cell }} |
| manifest schema | v{{ p.schema_version | cell }} |

{% if p.models %}
**Models**

| role | model id | backend | revision | fingerprint / file hash |
|---|---|---|---|---|
{% for m in p.models %}
| {{ m.role | cell }} | {{ m.id | cell }} | {{ m.backend | cell }} | {{ m.revision | cell }} | {{ m.hash | cell }} |
{% endfor %}

{% endif %}
{% if p.prompts %}
**Prompt templates** (sha256 of the exact template text)

| template | sha256 |
|---|---|
{% for name, digest in p.prompts %}
| {{ name | cell }} | `{{ digest }}` |
{% endfor %}

{% endif %}
{% if p.seeds %}
**Seeds**

| stage | seed |
|---|---|
{% for name, seed in p.seeds %}
| {{ name | cell }} | {{ seed | cell }} |
{% endfor %}

{% endif %}
{% if p.inputs %}
**Inputs**

| input | source | sha256 | revision | rows |
|---|---|---|---|---|
{% for i in p.inputs %}
| {{ i.name | cell }} | {{ i.source | cell }} | {{ i.sha256 | short(16) }} | {{ i.revision | cell }} | {{ i.rows | cell }} |
{% endfor %}

{% endif %}
{% if p.packages %}
**Package versions**

| package | version |
|---|---|
{% for name, version in p.packages %}
| {{ name | cell }} | {{ version | cell }} |
{% endfor %}
{% endif %}
"""

#: Config keys whose values are secrets, compared exactly (case-insensitive, ``-`` = ``_``): a
#: substring rule would hide ``max_tokens``. Secret *values* (the Hub token, API keys from the
#: environment) are redacted wherever they appear, whatever the key.
SECRET_KEYS = frozenset({
    "token", "hf_token", "hub_token", "api_token", "access_token", "auth_token", "bearer_token",
    "api_key", "apikey", "openai_api_key", "hf_api_key", "secret", "secret_key", "client_secret",
    "private_key", "password", "passwd", "authorization", "credentials", "auth",
})
REDACTED = "<redacted>"
#: Model ids that name a bundled model rather than a Hub repo, with the repo they come from (used
#: when the manifest does not record ``model_name``).
KNOWN_MODEL_NAMES = {"embedded": "HuggingFaceTB/SmolLM2-135M-Instruct"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ------------------------------------------------------------------------------------------------
# Template environment
# ------------------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 4) -> str:
    """Numbers for tables: ints with thousands separators, floats with ``digits`` significant digits."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:.{digits}g}"
    return str(value)


def _cell(value: Any) -> str:
    """A value safe inside a Markdown table cell."""
    text = _fmt(value)
    return text.replace("|", "\\|").replace("\n", " ").strip() or "—"


def _short(value: Any, n: int = 12) -> str:
    return "—" if not value else str(value)[:n]


def environment():
    """The sandboxed jinja2 environment used for every card (strict: unknown names are errors)."""
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(
        autoescape=False, undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(fmt=_fmt, cell=_cell, short=_short)
    return env


def _template_text(name: str) -> str:
    return resources.files("spark_hub").joinpath("cards", name).read_text(encoding="utf-8")


def _render(template_name: str, context: dict[str, Any]) -> str:
    return environment().from_string(_template_text(template_name)).render(**context)


# ------------------------------------------------------------------------------------------------
# Context helpers (manifest -> plain values)
# ------------------------------------------------------------------------------------------------
def is_secret_key(key: Any) -> bool:
    """Whether a config key holds a secret: exact names only (``api_key`` yes, ``max_tokens`` no)."""
    return str(key).strip().lower().replace("-", "_") in SECRET_KEYS


def redact(obj: Any, secrets: tuple[str, ...] | list[str] = ()) -> Any:
    """Copy of ``obj`` with the values of secret keys (`SECRET_KEYS`) replaced by ``"<redacted>"``,
    and every occurrence of a value in ``secrets`` (e.g. the Hub token) in any string too."""
    if isinstance(obj, dict):
        return {k: REDACTED if is_secret_key(k) and v is not None else redact(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, secrets) for v in obj]
    if isinstance(obj, str):
        for secret in secrets:
            if secret and secret in obj:
                obj = obj.replace(secret, REDACTED)
    return obj


_ABSOLUTE = re.compile(r"^(/|~[/\\]|[A-Za-z]:[/\\]|file://)")


def public_path(value: str) -> str:
    """An absolute local path reduced to its file or folder name (a card never shows where a
    build ran: home folders, user names, cluster layouts); anything else unchanged."""
    if not _ABSOLUTE.match(value) or "\n" in value:
        return value
    name = re.split(r"[/\\]", value.rstrip("/\\"))[-1]
    return name or value


def _public(obj: Any) -> Any:
    """Copy of ``obj`` with every string that is an absolute local path reduced by `public_path`."""
    if isinstance(obj, dict):
        return {k: _public(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_public(v) for v in obj]
    if isinstance(obj, str):
        return public_path(obj)
    return obj


def card_secrets(manifest: dict[str, Any], secrets: Iterable[str] | None = None) -> tuple[str, ...]:
    """Values to redact from a card: ``secrets`` (default: the known Hub tokens and ``*_API_KEY``
    environment values) plus the values of the environment variables the config names in
    ``api_key_env``."""
    from spark_hub.hub.push import known_tokens

    found = set(known_tokens() if secrets is None else secrets)

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            for key, value in obj.items():
                if key == "api_key_env" and isinstance(value, str) and os.environ.get(value):
                    found.add(os.environ[value])
                walk(value)
        elif isinstance(obj, list):
            for value in obj:
                walk(value)

    walk(manifest.get("config") or {})
    # Longest first, so a secret that contains another is replaced whole.
    return tuple(sorted((s for s in found if s and len(s) >= 8), key=len, reverse=True))


def public_manifest(manifest: dict[str, Any], secrets: Iterable[str] | None = None) -> dict[str, Any]:
    """What a card may show of ``manifest``: secrets redacted (by key and by value), absolute local
    paths reduced to names."""
    return _public(redact(manifest, card_secrets(manifest, secrets)))


def model_name(model: dict[str, Any]) -> str | None:
    """The name to publish for a manifest ``models`` entry: its recorded ``model_name``, the Hub
    repo behind a bundled model (``embedded`` -> ``HuggingFaceTB/SmolLM2-135M-Instruct``), else its id."""
    name = model.get("model_name") or model.get("name")
    model_id = model.get("id")
    return str(name or KNOWN_MODEL_NAMES.get(str(model_id), model_id)) if (name or model_id) else None


def _find(config: dict[str, Any], *keys: str) -> Any:
    """First scalar value of any of ``keys`` in ``config`` or its nested sections (breadth first)."""
    queue = [config]
    while queue:
        section = queue.pop(0)
        for key in keys:
            value = section.get(key)
            if value is not None and not isinstance(value, (dict, list)):
                return value
        queue.extend(v for _, v in sorted(section.items()) if isinstance(v, dict))
    return None


def _role(config: dict[str, Any], role: str) -> dict[str, Any]:
    section = config.get(role)
    return section if isinstance(section, dict) else {}


def method_summary(config: dict[str, Any]) -> dict[str, Any]:
    """The few config values that name a Stage I run: aggregation, generator, verifier, M, N.

    Reads the ``build-dataset`` config shape (``aggregation.method``, ``generator.model`` /
    ``generator.n`` = M, ``verifier.model`` / ``verifier.n`` = N) and falls back to flat keys
    (``aggregation``, ``generator_model``, ``num_solutions``, ``num_verifications``...).
    Missing values are None.
    """
    generator, verifier = _role(config, "generator"), _role(config, "verifier")
    aggregation = _role(config, "aggregation").get("method") or config.get("aggregation")
    if isinstance(aggregation, dict):
        aggregation = None
    return {
        "aggregation": aggregation or _find(config, "aggregation_method"),
        "generator": generator.get("model") or _find(config, "generator_model"),
        "verifier": verifier.get("model") or _find(config, "verifier_model"),
        "m": generator.get("n") or _find(config, "num_solutions", "solutions_per_problem"),
        "n": verifier.get("n") or _find(config, "num_verifications", "verifications_per_solution"),
        "generator_temperature": generator.get("temperature"),
        "verifier_temperature": verifier.get("temperature"),
    }


def _yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, default_flow_style=False).rstrip()


def _flatten(stats: dict[str, Any], prefix: str = "", skip: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    """Statistics as ``(dotted.name, value)`` rows: nested dicts are flattened, short lists of
    scalars joined, long lists summarised by their length; keys in ``skip`` get their own table."""
    rows: list[tuple[str, Any]] = []
    for key, value in stats.items():
        name = f"{prefix}{key}"
        if key in skip:
            continue
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{name}."))
        elif isinstance(value, list):
            if len(value) <= 10 and all(not isinstance(v, (dict, list)) for v in value):
                rows.append((name, ", ".join(_fmt(v) for v in value) or "none"))
            else:
                rows.append((name, f"{len(value)} entries (see manifest.json)"))
        else:
            rows.append((name, value))
    return rows


def _license(manifest: dict[str, Any]) -> str:
    return str(_find(manifest.get("config") or {}, "license") or DEFAULT_LICENSE)


def _size_category(n: int | None) -> str | None:
    if n is None:
        return None
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                         (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return label
    return "n>10M"


def _hub_inputs(manifest: dict[str, Any]) -> list[str]:
    """Input sources that are Hub dataset ids (``org/name`` or ``hf://datasets/org/name``)."""
    out = []
    for entry in (manifest.get("inputs") or {}).values():
        source = str(entry.get("source", ""))
        if source.startswith("hf://datasets/"):
            source = source[len("hf://datasets/"):].split("@")[0]
            source = "/".join(source.split("/")[:2])
        is_file = source.endswith((".jsonl", ".json", ".parquet", ".csv"))
        if _HUB_ID.match(source) and not is_file and source not in out:
            out.append(source)
    return out


def source_datasets(manifest: dict[str, Any]) -> list[str]:
    """Where the problems come from: the config's ``source_datasets`` (Hub ids, for local copies of
    a Hub dataset such as the demo's GSM8K problems), then every Hub dataset read as input."""
    declared = _find_list(manifest.get("config") or {}, "source_datasets")
    out = [str(s) for s in declared]
    return out + [s for s in _hub_inputs(manifest) if s not in out]


def _find_list(config: dict[str, Any], key: str) -> list[Any]:
    value = config.get(key)
    if isinstance(value, str):
        return [value]
    return list(value) if isinstance(value, (list, tuple)) else []


#: Record types per dataset config, for the "Data fields" section: (config, records class, schema).
DATA_CONFIGS = (("default", "StepRecord", "step_record"), ("verifications", "Verification", "verification"))


def data_fields(config: str = "default") -> list[dict[str, str]]:
    """``[{"name", "type", "description"}]`` of the rows of a dataset config (``default``:
    step records, ``verifications``), from the record model in `spark_hub.records` (its JSON Schema
    when the model does not describe its columns)."""
    _, cls_name, schema_name = next(c for c in DATA_CONFIGS if c[0] == config)
    from spark_hub import records

    describe = getattr(records, "describe_columns", None)
    cls = getattr(records, cls_name, None)
    if describe is not None and cls is not None and hasattr(cls, "COLUMNS"):
        return [{k: str(v) for k, v in col.items()} for col in describe(cls)]
    from spark_hub.schema import load_schema

    out = []
    for name, prop in load_schema(schema_name).get("properties", {}).items():
        kind = prop.get("type") or ("enum" if "enum" in prop else "")
        kind = " | ".join(kind) if isinstance(kind, list) else str(kind)
        out.append({"name": name, "type": kind, "description": str(prop.get("description", ""))})
    return out


def _data_configs(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """``configs:`` entries for the dataset card: default -> data/, verifications -> verifications/.

    Splits come from the shard names in the manifest's file table (``data/{split}-00000-of-00001.parquet``);
    with one split (or no file table) the pattern is simply ``{folder}/*.parquet``.
    """
    files = manifest.get("files")
    configs = []
    for name, folder in (("default", "data"), ("verifications", "verifications")):
        if files is None:
            splits: list[str] = ["train"]
        else:
            shards = [p[len(folder) + 1:] for p in files if p.startswith(f"{folder}/") and p.endswith(".parquet")]
            if not shards:
                continue
            splits = sorted({re.split(r"-\d{5}-of-\d{5}", s)[0] if re.search(r"-\d{5}-of-\d{5}", s) else "train"
                             for s in shards})
        if len(splits) == 1:
            data_files = [{"split": splits[0], "path": f"{folder}/*.parquet"}]
        else:
            data_files = [{"split": s, "path": f"{folder}/{s}-*.parquet"} for s in splits]
        configs.append({"config_name": name, "data_files": data_files})
    return configs


def provenance(manifest: dict[str, Any]) -> dict[str, Any]:
    """Tables shared by every card: models, prompts, seeds, inputs, packages and build identity."""
    models = [
        {"role": role, "id": model_name(m), "backend": m.get("backend"), "revision": m.get("revision"),
         "hash": m.get("fingerprint") or m.get("file_hash")}
        for role, m in (manifest.get("models") or {}).items()
    ]
    inputs = [
        {"name": name, "source": i.get("source"), "sha256": i.get("sha256"), "revision": i.get("revision"),
         "rows": i.get("rows")}
        for name, i in (manifest.get("inputs") or {}).items()
    ]
    return {
        "models": models,
        "prompts": sorted((manifest.get("prompts") or {}).items()),
        "seeds": sorted((manifest.get("seeds") or {}).items()),
        "inputs": inputs,
        "packages": sorted((k, v) for k, v in (manifest.get("packages") or {}).items() if v),
        "spark_hub_version": manifest.get("spark_hub_version"),
        "git_sha": manifest.get("git_sha"),
        "build_key": manifest.get("build_key"),
        "created_at": manifest.get("created_at"),
        "schema_version": manifest.get("schema_version"),
    }


def _model_role(manifest: dict[str, Any], *roles: str) -> str | None:
    models = manifest.get("models") or {}
    for role in roles:
        if role in models and models[role].get("id"):
            return model_name(models[role])
    return None


def _base_model(manifest: dict[str, Any]) -> str | None:
    found = _model_role(manifest, "base_model", "base", "policy_base") or _find(
        manifest.get("config") or {}, "base_model", "model_name_or_path"
    )
    return str(found) if found else None


def _base_context(manifest: dict[str, Any], repo_id: str | None) -> dict[str, Any]:
    config = manifest.get("config") or {}
    repo = repo_id or _find(config, "hub_repo", "repo_id", "hub_model_id") or REPO_PLACEHOLDER
    prov = provenance(manifest)
    title = str(repo).split("/")[-1] if repo != REPO_PLACEHOLDER else DEFAULT_TITLES.get(manifest.get("kind"))
    return {
        "provenance_md": environment().from_string(PROVENANCE_TEMPLATE).render(p=prov).rstrip() + "\n",
        "repo_id": str(repo),
        "name": str(_find(config, "pretty_name") or title),
        "kind": manifest.get("kind"),
        "config_yaml": _yaml(config) if config else "{}",
        "provenance": prov,
        "uses_references": bool(manifest.get("uses_references")),
        "contamination": _flatten(manifest["contamination"]) if manifest.get("contamination") else [],
        "citation": CITATION,
        "license": _license(manifest),
    }


def _front_matter(card_data) -> str:
    return f"---\n{card_data.to_yaml()}\n---\n"


def _check(text: str, card_cls) -> str:
    """Parse the card back with huggingface_hub: invalid YAML metadata is a bug, not a user error."""
    try:
        card_cls(text)
    except ValueError as e:  # pragma: no cover - would be a template bug
        raise SparkHubError(f"rendered card has invalid metadata: {e}") from e
    return text


# ------------------------------------------------------------------------------------------------
# Dataset card
# ------------------------------------------------------------------------------------------------
def dataset_card_data(manifest: dict[str, Any], *, repo_id: str | None = None):
    """`huggingface_hub.DatasetCardData` for a dataset manifest (license, tags, configs, size...)."""
    from huggingface_hub import DatasetCardData

    config = manifest.get("config") or {}
    stats = manifest.get("statistics") or {}
    records = stats.get("records") if isinstance(stats.get("records"), int) else None
    aggregation = method_summary(config)["aggregation"]
    tags = list(DATASET_TAGS) + ([str(aggregation).replace("_", "-")] if aggregation else [])
    return DatasetCardData(
        license=_license(manifest),
        language=["en"],
        annotations_creators=["machine-generated"],
        language_creators=["machine-generated"],
        tags=tags,
        task_categories=["text-generation", "text-classification"],
        size_categories=[_size_category(records)] if records is not None else None,
        source_datasets=source_datasets(manifest) or None,
        pretty_name=str(_find(config, "pretty_name") or (repo_id or "SPARK verification data").split("/")[-1]),
        configs=_data_configs(manifest),
    )


def render_dataset_card(
    manifest: dict[str, Any], *, repo_id: str | None = None, agreement_plot: str | None = None,
    secrets: Iterable[str] | None = None,
) -> str:
    """The ``README.md`` of a dataset built by ``build-dataset``, from its manifest only.

    Args:
        manifest: a validated manifest of kind ``dataset``.
        repo_id: the Hub repo, used in the loading snippet (default from the config, else
            `REPO_PLACEHOLDER`; `spark_hub.hub.push` renders the card for its target repo).
        agreement_plot: path of the `write_agreement_plot` PNG relative to the dataset folder, to
            embed in the card; default `AGREEMENT_PLOT_NAME` when the manifest's file table lists it.
        secrets: values to redact wherever they appear (default: the known Hub tokens and API
            keys, see `card_secrets`); config keys in `SECRET_KEYS` are always redacted.

    Returns:
        Card text: YAML metadata (``configs:`` default -> ``data/*.parquet``, verifications ->
        ``verifications/*.parquet``) and the body from ``cards/dataset_card.md``.
    """
    from huggingface_hub import DatasetCard

    hidden = card_secrets(manifest, secrets)
    manifest = public_manifest(manifest, hidden)
    config = manifest.get("config") or {}
    stats = manifest.get("statistics") or {}
    card_data = dataset_card_data(manifest, repo_id=repo_id)
    agreement = [v for v in (stats.get("agreement_by_step") or [])]
    context = {
        **_base_context(manifest, repo_id),
        "card_data": card_data.to_yaml(),
        "method": {
            **method_summary(config),
            "generator": _model_role(manifest, "generator") or method_summary(config)["generator"],
            "verifier": _model_role(manifest, "verifier") or method_summary(config)["verifier"],
        },
        "statistics": _flatten(stats, skip=("agreement_by_step",)),
        "agreement_by_step": list(enumerate(agreement, start=1)),
        "agreement_plot": agreement_plot or (
            AGREEMENT_PLOT_NAME if AGREEMENT_PLOT_NAME in (manifest.get("files") or {}) else None
        ),
        "configs": [c["config_name"] for c in card_data.configs],
        "data_fields": {name: data_fields(name) for name, _, _ in DATA_CONFIGS},
    }
    return _check(redact(_render(TEMPLATES["dataset"], context), hidden), DatasetCard)


# ------------------------------------------------------------------------------------------------
# SFT data card (``spark-hub sft-data``: a dataset manifest with config.stage == "sft-data")
# ------------------------------------------------------------------------------------------------
SFT_TARGETS = {
    "orm": "the RM answers `Yes` or `No` (the aggregated final label)",
    "prm": "one `Step k: Correct|Incorrect` line per step, then "
           "`Verification: Is the answer correct (Yes/No)? X`",
    "prm_cot": "the selected verifier text: an analysis and a verdict per step, then the final verification line",
}
SFT_VARIANT_NAMES = {"orm": "outcome reward model (ORM)", "prm": "process reward model (PRM)",
                     "prm_cot": "process reward model with chain of thought (PRM-CoT)"}


def is_sft_data(manifest: dict[str, Any]) -> bool:
    """A dataset written by `spark_hub.train.sft_data.write_sft_dataset`."""
    return manifest.get("kind") == "dataset" and (manifest.get("config") or {}).get("stage") == "sft-data"


def _sft_data_files(manifest: dict[str, Any]) -> list[dict[str, str]]:
    files = manifest.get("files")
    splits = [s for s in ("train", "eval") if files is None or f"data/{s}.jsonl" in files]
    return [{"split": s, "path": f"data/{s}.jsonl"} for s in splits]


def sft_card_data(manifest: dict[str, Any], *, repo_id: str | None = None):
    """`huggingface_hub.DatasetCardData` for SFT data: one config, train/eval JSONL splits."""
    from huggingface_hub import DatasetCardData

    config = manifest.get("config") or {}
    stats = manifest.get("statistics") or {}
    variant = str(config.get("variant") or stats.get("variant") or "")
    examples = stats.get("examples") if isinstance(stats.get("examples"), int) else None
    return DatasetCardData(
        license=_license(manifest),
        language=["en"],
        annotations_creators=["machine-generated"],
        language_creators=["machine-generated"],
        tags=list(SFT_TAGS) + ([variant.replace("_", "-")] if variant else []),
        task_categories=["text-generation"],
        size_categories=[_size_category(examples)] if examples is not None else None,
        source_datasets=source_datasets(manifest) or None,
        pretty_name=str(_find(config, "pretty_name") or (repo_id or DEFAULT_TITLES["sft"]).split("/")[-1]),
        configs=[{"config_name": "default", "data_files": _sft_data_files(manifest)}],
    )


def render_sft_card(
    manifest: dict[str, Any], *, repo_id: str | None = None, secrets: Iterable[str] | None = None
) -> str:
    """The ``README.md`` of an SFT dataset (``cards/sft_card.md``): variant and target, source step
    records, split, label balance, skipped records and length percentiles, from the manifest only."""
    from huggingface_hub import DatasetCard

    hidden = card_secrets(manifest, secrets)
    manifest = public_manifest(manifest, hidden)
    config = manifest.get("config") or {}
    stats = manifest.get("statistics") or {}
    variant = str(config.get("variant") or stats.get("variant") or "")
    source = ((manifest.get("inputs") or {}).get("step_records") or {})
    card_data = sft_card_data(manifest, repo_id=repo_id)
    base = _base_context(manifest, repo_id)
    if not _find(config, "pretty_name") and base["repo_id"] == REPO_PLACEHOLDER:
        base["name"] = DEFAULT_TITLES["sft"]
    lengths = stats.get("lengths") or {}
    context = {
        **base,
        "card_data": card_data.to_yaml(),
        "variant": variant,
        "variant_name": SFT_VARIANT_NAMES.get(variant, variant or "reward model"),
        "target_description": SFT_TARGETS.get(variant, "—"),
        "source": source.get("source"),
        "source_revision": source.get("commit") or source.get("revision"),
        "examples": stats.get("examples"),
        "records": stats.get("records"),
        "train": stats.get("train") or {},
        "eval": stats.get("eval") or {},
        "balance": [(split, stats[split]) for split in ("train", "eval") if isinstance(stats.get(split), dict)],
        "skipped": sorted((stats.get("skipped") or {}).items()),
        "seed": stats.get("seed", config.get("seed")),
        "eval_fraction": stats.get("eval_fraction", config.get("eval_fraction")),
        "keep_inexact_cot": stats.get("keep_inexact_cot", config.get("keep_inexact_cot")),
        "lengths": [(part, lengths[part]) for part in ("prompt", "completion", "total") if lengths.get(part)],
        "length_unit": stats.get("length_unit") or "characters",
        "splits": [f["split"] for f in _sft_data_files(manifest)],
    }
    return _check(redact(_render(TEMPLATES["sft"], context), hidden), DatasetCard)


# ------------------------------------------------------------------------------------------------
# Model cards
# ------------------------------------------------------------------------------------------------
def _scores(section: Any, *metric_keys: str) -> dict[str, float]:
    """``{subset: value}`` from ``{subset: number}`` or ``{subset: {metric: number}}``."""
    out: dict[str, float] = {}
    if not isinstance(section, dict):
        return out
    for name, value in section.items():
        if isinstance(value, dict):
            value = next((value[k] for k in metric_keys if isinstance(value.get(k), (int, float))), None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[str(name)] = float(value)
    return out


def _results(manifest: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """``(processbench_f1_by_subset, math_accuracy_by_benchmark)`` from ``manifest["results"]``.

    Accepted shapes: ``{"processbench": {"gsm8k": {"f1": 70.1, ...}, ...}, "math": {"math500":
    {"accuracy": 47.4}, ...}}`` or the same with plain numbers. Average keys are dropped (the card
    recomputes the mean of the subsets).
    """
    results = manifest.get("results") or {}
    pb = _scores(results.get("processbench") or results.get("ProcessBench"), "f1", "F1")
    math_acc = _scores(results.get("math") or results.get("math_accuracy"), "accuracy", "acc", "pass@1")
    drop = {"average", "avg", "mean", "average_f1"}
    return ({k: v for k, v in pb.items() if k.lower() not in drop},
            {k: v for k, v in math_acc.items() if k.lower() not in drop})


def model_card_data(manifest: dict[str, Any], *, repo_id: str | None = None):
    """`huggingface_hub.ModelCardData` for a PRM or policy manifest, with model-index results."""
    from huggingface_hub import EvalResult, ModelCardData

    kind = manifest.get("kind")
    config = manifest.get("config") or {}
    base = _base_model(manifest)
    base = base if base and _HUB_ID.match(base) else None
    tags = list(PRM_TAGS if kind == "prm" else POLICY_TAGS)
    prm_format = _find(config, "prm_format", "format")
    if kind == "prm" and prm_format:
        tags.append(str(prm_format).replace("_", "-"))
    model_name = (repo_id or str(_find(config, "hub_model_id", "hub_repo") or f"spark-{kind}")).split("/")[-1]
    pb, math_acc = _results(manifest)
    evals = [
        EvalResult(task_type="text-classification", task_name="Process error identification",
                   dataset_type=PROCESSBENCH_ID, dataset_name="ProcessBench", dataset_split=subset,
                   metric_type="f1", metric_value=round(value, 2), metric_name=f"F1 ({subset})")
        for subset, value in pb.items()
    ]
    evals += [
        EvalResult(task_type="text-generation", task_name="Math reasoning",
                   dataset_type=MATH_BENCHMARK_IDS.get(name, name), dataset_name=name,
                   metric_type="accuracy", metric_value=round(value, 2), metric_name=f"accuracy ({name})")
        for name, value in math_acc.items()
    ]
    return ModelCardData(
        license=_license(manifest),
        language=["en"],
        library_name="transformers",
        pipeline_tag="text-generation",
        base_model=base,
        datasets=_hub_inputs(manifest) or None,
        tags=tags,
        model_name=model_name if evals else None,
        eval_results=evals or None,
    )


def render_model_card(
    manifest: dict[str, Any], *, repo_id: str | None = None, secrets: Iterable[str] | None = None
) -> str:
    """The ``README.md`` of a PRM (``cards/prm_card.md``) or policy (``cards/policy_card.md``)."""
    from huggingface_hub import ModelCard

    hidden = card_secrets(manifest, secrets)
    manifest = public_manifest(manifest, hidden)
    kind = manifest.get("kind")
    if kind not in ("prm", "policy"):
        raise SparkHubError(f"no model card for manifest kind {kind!r}", hint="use render_dataset_card")
    config = manifest.get("config") or {}
    pb, math_acc = _results(manifest)
    card_data = model_card_data(manifest, repo_id=repo_id)
    context = {
        **_base_context(manifest, repo_id),
        "card_data": card_data.to_yaml(),
        "base_model": _base_model(manifest),
        "reward_model": _model_role(manifest, "reward_model", "prm") or _find(config, "reward_model", "prm"),
        "prm_format": _find(config, "prm_format", "format"),
        "reward_design": config.get("reward_design"),
        "reward_model_revision": config.get("prm_revision"),
        "datasets": _hub_inputs(manifest),
        "processbench": sorted(pb.items()),
        "processbench_average": sum(pb.values()) / len(pb) if pb else None,
        "math": sorted(math_acc.items()),
        "math_average": sum(math_acc.values()) / len(math_acc) if math_acc else None,
    }
    return _check(redact(_render(TEMPLATES[kind], context), hidden), ModelCard)


def render_card(
    manifest: dict[str, Any], *, repo_id: str | None = None, secrets: Iterable[str] | None = None
) -> str:
    """Render the card that matches ``manifest["kind"]`` (dataset, prm or policy).

    `spark_hub.hub.push` calls this at push time with the target ``repo_id``: the pushed
    ``README.md`` is always rendered from the pushed ``manifest.json``.
    """
    if is_sft_data(manifest):
        return render_sft_card(manifest, repo_id=repo_id, secrets=secrets)
    if manifest.get("kind") == "dataset":
        return render_dataset_card(manifest, repo_id=repo_id, secrets=secrets)
    return render_model_card(manifest, repo_id=repo_id, secrets=secrets)


def write_card(folder: str | Path, manifest: dict[str, Any] | None = None, *, repo_id: str | None = None) -> Path:
    """Render the card of the artifact in ``folder`` (from ``manifest``, default its ``manifest.json``)
    and write it to ``folder/README.md`` atomically. Returns the path."""
    from spark_hub.io import atomic_write_text
    from spark_hub.manifest import CARD_NAME, read_manifest

    folder = Path(folder)
    manifest = manifest if manifest is not None else read_manifest(folder)
    path = folder / CARD_NAME
    atomic_write_text(path, render_card(manifest, repo_id=repo_id))
    return path


# ------------------------------------------------------------------------------------------------
# Plot
# ------------------------------------------------------------------------------------------------
def agreement_chart(statistics: dict[str, Any]):
    """The chart of `write_agreement_plot`, rendered (a `spark_hub.plots.Chart`: the image and where
    its title lies), or None when there is nothing to plot."""
    from spark_hub.plots import BLUE, render_bar_chart

    values = [float("nan") if v is None else float(v) for v in (statistics.get("agreement_by_step") or [])]
    if not values:
        return None
    finite = [v for v in values if not math.isnan(v)]
    return render_bar_chart([str(step) for step in range(1, len(values) + 1)], [("mean agreement", values, BLUE)],
                            title=PLOT_TITLE, xlabel="step index", ylabel="mean agreement",
                            ylim=(0.0, 1.0) if finite and 0.0 <= min(finite) and max(finite) <= 1.0 else None)


def write_agreement_plot(statistics: dict[str, Any], path: str | Path) -> Path | None:
    """Bar chart (PNG) of the mean per-step verifier agreement by step index.

    Uses ``statistics["agreement_by_step"]`` (a list of floats, step 1 first; None for steps with no
    data, drawn as no bar). Drawn with Pillow (`spark_hub.plots`) and written atomically; identical
    statistics give identical bytes.

    Returns:
        ``path``, or None when there is nothing to plot.
    """
    chart = agreement_chart(statistics)
    return None if chart is None else chart.save(path)


__all__ = [
    "AGREEMENT_PLOT_NAME",
    "CITATION",
    "agreement_chart",
    "SECRET_KEYS",
    "REPO_PLACEHOLDER",
    "dataset_card_data",
    "environment",
    "method_summary",
    "model_card_data",
    "provenance",
    "data_fields",
    "is_secret_key",
    "model_name",
    "public_manifest",
    "public_path",
    "redact",
    "source_datasets",
    "is_sft_data",
    "render_card",
    "render_dataset_card",
    "render_model_card",
    "render_sft_card",
    "sft_card_data",
    "write_agreement_plot",
    "write_card",
]
