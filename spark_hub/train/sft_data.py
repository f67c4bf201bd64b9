"""SFT data for SPARK's generative reward models, from Stage I step records (SPARK.md §2).

Three variants, each a conversational prompt/completion pair as TRL's ``SFTTrainer`` takes them
(loss on the completion only, its default for this format):

- ``orm``: the ORM prompt; target ``Yes`` or ``No`` (the record's aggregated final label).
- ``prm``: the PRM prompt; target one ``Step k: Correct|Incorrect`` line per step (the aggregated
  step labels), then ``Verification: Is the answer correct (Yes/No)? X``.
- ``prm_cot``: the PRM prompt; target the record's ``cot_target`` (the selected verifier text).
  Records whose CoT target disagrees with the aggregated labels (``cot_exact_match: false``) are kept
  unless ``keep_inexact_cot=False``.

Only labelled records (``status == "ok"`` with labels and a final label) become examples. The
train/eval split is by ``problem_id`` (every solution of a problem lands on the same side) with a
seeded shuffle of the sorted problem ids, so the same records and seed give the same split.

Prompts come from `spark_hub.rm_prompts`, the module `spark_hub.prm` also asks the trained model
with, so training and scoring use the same words.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from spark_hub import rm_prompts
from spark_hub.errors import SparkHubError

logger = logging.getLogger(__name__)

VARIANTS = rm_prompts.VARIANTS

# Why a record yields no example.
UNLABELLED = "unlabelled"
NO_FINAL_LABEL = "no_final_label"
NO_STEPS = "no_steps"
LABEL_COUNT_MISMATCH = "label_count_mismatch"
NO_COT_TARGET = "no_cot_target"
COT_INEXACT = "cot_inexact"


def as_row(record: Any, *, where: str = "record") -> dict[str, Any]:
    """A step record as a dict at the current schema version.

    Accepts a `spark_hub.records.StepRecord` (or anything with ``to_dict``) or a row dict; dicts go
    through ``StepRecord.from_dict`` (migration + validation), or are validated as they are when the
    records module has no ``from_dict``.
    """
    if hasattr(record, "to_dict") and not isinstance(record, Mapping):
        return record.to_dict()
    if not isinstance(record, Mapping):
        raise SparkHubError(f"expected a step record or a dict, got {type(record).__name__}", where=where)
    from spark_hub import records

    from_dict = getattr(records.StepRecord, "from_dict", None)
    if from_dict is not None:
        return from_dict(dict(record), where=where).to_dict()
    from spark_hub.schema import validate

    validate("step_record", dict(record), where=where)
    return dict(record)


def skip_reason(row: Mapping[str, Any], variant: str, *, keep_inexact_cot: bool = True) -> str | None:
    """Why ``row`` gives no ``variant`` example, or None when it gives one."""
    labels, steps = row.get("labels"), row.get("steps") or []
    if row.get("status", "ok") != "ok" or labels is None:
        return UNLABELLED
    if row.get("final_label") is None:
        return NO_FINAL_LABEL
    if not steps:
        return NO_STEPS
    if len(labels) != len(steps):
        return LABEL_COUNT_MISMATCH
    if variant == "prm_cot":
        if not (row.get("cot_target") or "").strip():
            return NO_COT_TARGET
        if row.get("cot_exact_match") is False and not keep_inexact_cot:
            return COT_INEXACT
    return None


def prompt_text(row: Mapping[str, Any], variant: str, *, include_answer: bool = True) -> str:
    """The user message of ``variant`` for a record (problem, numbered steps, optional answer line)."""
    answer = row.get("final_answer") if include_answer else None
    return rm_prompts.rm_prompt(variant, row["problem"], row["steps"], answer)


def target_text(row: Mapping[str, Any], variant: str) -> str:
    """What the RM must write for a record."""
    if variant == "orm":
        return rm_prompts.orm_target(row["final_label"])
    if variant == "prm":
        return rm_prompts.prm_target(row["labels"], row["final_label"])
    return row["cot_target"].strip()


def make_example(
    record: Any,
    variant: str,
    *,
    keep_inexact_cot: bool = True,
    include_answer: bool = True,
    system: str | None = None,
) -> dict[str, Any] | None:
    """One conversational example, or None when the record is not usable for ``variant``.

    Returns:
        ``{"prompt": [messages], "completion": [{"role": "assistant", ...}], "id", "problem_id",
        "variant", "final_label", "labels", "first_error_step"}`` (the extra columns are provenance
        and label statistics; TRL ignores them).
    """
    _check_variant(variant)
    row = as_row(record)
    if skip_reason(row, variant, keep_inexact_cot=keep_inexact_cot) is not None:
        return None
    prompt = [{"role": "system", "content": system}] if system else []
    prompt.append({"role": "user", "content": prompt_text(row, variant, include_answer=include_answer)})
    labels = list(row["labels"])
    return {
        "prompt": prompt,
        "completion": [{"role": "assistant", "content": target_text(row, variant)}],
        "id": row.get("id") or f"{row['problem_id']}/s{row.get('solution_index', 0)}",
        "problem_id": row["problem_id"],
        "variant": variant,
        "final_label": row["final_label"],
        "labels": labels,
        "first_error_step": next((i for i, ok in enumerate(labels) if not ok), -1),
    }


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise SparkHubError(f"unknown SFT variant {variant!r}", hint=f"valid: {', '.join(VARIANTS)}")


def build_examples(
    records: Iterable[Any],
    variant: str,
    *,
    keep_inexact_cot: bool = True,
    include_answer: bool = True,
    system: str | None = None,
) -> tuple[list[dict[str, Any]], Counter]:
    """Examples of ``variant`` from step records, and a count of skipped records by reason."""
    _check_variant(variant)
    examples: list[dict[str, Any]] = []
    skipped: Counter = Counter()
    for i, record in enumerate(records):
        row = as_row(record, where=f"record {i}")
        reason = skip_reason(row, variant, keep_inexact_cot=keep_inexact_cot)
        if reason is not None:
            skipped[reason] += 1
            continue
        examples.append(make_example(row, variant, keep_inexact_cot=keep_inexact_cot,
                                     include_answer=include_answer, system=system))
    return examples, skipped


def split_by_problem(
    examples: Sequence[dict[str, Any]], *, eval_fraction: float = 0.1, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split examples into train and eval by ``problem_id`` (no problem on both sides).

    The sorted problem ids are shuffled with ``random.Random(seed)``; the first
    ``round(eval_fraction * n_problems)`` go to eval (at least one, and at least one left for train,
    when ``eval_fraction > 0`` and there are two or more problems). Example order is kept.
    """
    if not 0 <= eval_fraction < 1:
        raise SparkHubError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    problems = sorted({e["problem_id"] for e in examples})
    random.Random(seed).shuffle(problems)
    n_eval = round(eval_fraction * len(problems))
    if eval_fraction > 0 and len(problems) >= 2:
        n_eval = min(max(n_eval, 1), len(problems) - 1)
    eval_ids = set(problems[:n_eval])
    train = [e for e in examples if e["problem_id"] not in eval_ids]
    evaluation = [e for e in examples if e["problem_id"] in eval_ids]
    return train, evaluation


def label_balance(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts of final verdicts and step labels (what a card shows as label balance)."""
    final_yes = sum(1 for e in examples if e["final_label"])
    steps_correct = sum(sum(1 for ok in e["labels"] if ok) for e in examples)
    steps_total = sum(len(e["labels"]) for e in examples)
    return {
        "examples": len(examples),
        "problems": len({e["problem_id"] for e in examples}),
        "final_yes": final_yes,
        "final_no": len(examples) - final_yes,
        "steps_correct": steps_correct,
        "steps_incorrect": steps_total - steps_correct,
        "all_steps_correct": sum(1 for e in examples if e["first_error_step"] == -1),
    }


def percentiles(values: Sequence[float], points: Sequence[int] = (50, 90, 95, 99, 100)) -> dict[str, float]:
    """Nearest-rank percentiles (``p50``...), {} for no values."""
    if not values:
        return {}
    ordered = sorted(values)
    out = {}
    for p in points:
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        out[f"p{p}"] = ordered[rank - 1]
    return out


def length_percentiles(
    examples: Sequence[dict[str, Any]], count: Callable[[str], int] | None = None
) -> dict[str, dict[str, float]]:
    """Percentiles of prompt and completion lengths; ``count`` maps text to a length (a tokenizer's
    token count, e.g. ``lambda t: len(tok(t).input_ids)``; default: characters)."""
    count = count or len
    prompts = [sum(count(m["content"]) for m in e["prompt"]) for e in examples]
    completions = [count(e["completion"][0]["content"]) for e in examples]
    return {"prompt": percentiles(prompts), "completion": percentiles(completions),
            "total": percentiles([a + b for a, b in zip(prompts, completions)])}


@dataclass
class SFTData:
    """Train and eval examples of one variant, with the statistics a manifest records."""

    variant: str
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    statistics: dict[str, Any] = field(default_factory=dict)


def make_sft_data(
    records: Iterable[Any],
    variant: str,
    *,
    eval_fraction: float = 0.1,
    seed: int = 0,
    keep_inexact_cot: bool = True,
    include_answer: bool = True,
    system: str | None = None,
    count_tokens: Callable[[str], int] | None = None,
) -> SFTData:
    """Examples of ``variant`` from step records, split by problem, with statistics.

    Raises:
        `SparkHubError`: an unknown variant, an invalid record, or no usable record at all (the
            message lists why records were skipped).
    """
    records = list(records)
    examples, skipped = build_examples(records, variant, keep_inexact_cot=keep_inexact_cot,
                                       include_answer=include_answer, system=system)
    if not examples:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())) or "no records"
        raise SparkHubError(f"no usable {variant} examples in {len(records)} records ({reasons})",
                            hint="SFT data needs labelled step records (status ok)")
    train, evaluation = split_by_problem(examples, eval_fraction=eval_fraction, seed=seed)
    statistics = {
        "variant": variant,
        "records": len(records),
        "examples": len(examples),
        "skipped": dict(sorted(skipped.items())),
        "eval_fraction": eval_fraction,
        "seed": seed,
        "keep_inexact_cot": keep_inexact_cot,
        "include_answer": include_answer,
        "template_sha256": rm_prompts.template_hash(variant),
        "train": label_balance(train),
        "eval": label_balance(evaluation),
        "lengths": length_percentiles(examples, count_tokens),
        "length_unit": "tokens" if count_tokens else "characters",
    }
    logger.info("%s SFT data: %d train / %d eval examples from %d records (skipped %s)",
                variant, len(train), len(evaluation), len(records), dict(skipped) or "none")
    return SFTData(variant=variant, train=train, eval=evaluation, statistics=statistics)


def write_jsonl(folder: str | Path, data: SFTData) -> dict[str, Path]:
    """Write ``data/train.jsonl`` and ``data/eval.jsonl`` (atomically) under ``folder``."""
    import json

    from spark_hub.io import atomic_write_text

    paths = {}
    for split, rows in (("train", data.train), ("eval", data.eval)):
        path = Path(folder) / "data" / f"{split}.jsonl"
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        paths[split] = path
    return paths


def write_sft_dataset(
    folder: str | Path,
    data: SFTData,
    *,
    source: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    uses_references: bool | None = None,
) -> Path:
    """Write an SFT dataset folder: ``data/{train,eval}.jsonl`` and a ``manifest.json`` (kind
    ``dataset``) with the source Stage I dataset, variant, counts, label balance and lengths.

    Args:
        source: provenance of the step records, e.g. ``{"source": "org/name", "revision": sha}`` or
            ``{"source": path, "sha256": folder_hash}``; recorded as ``inputs.step_records``.
        config: the resolved ``sft-data`` options (default: the ones in ``data.statistics``).
        uses_references: whether the step records' labels used reference answers (default: read
            from the source dataset's manifest when ``source["source"]`` is a local dataset folder).

    Writes the card (``README.md``, `spark_hub.cards.render_sft_card`) next to the manifest.

    Returns:
        The manifest path. The folder pushes like any spark-hub dataset (`spark_hub.hub.push`).
    """
    from spark_hub.manifest import new_manifest, write_manifest

    write_jsonl(folder, data)
    stats = data.statistics
    options = dict(config) if config is not None else {
        k: stats.get(k) for k in ("variant", "eval_fraction", "seed", "keep_inexact_cot", "include_answer")
    }
    manifest = new_manifest(
        "dataset",
        config={"stage": "sft-data", **options},
        prompts={data.variant: stats.get("template_sha256") or rm_prompts.template_hash(data.variant)},
        seeds={"split": stats.get("seed")},
        inputs={"step_records": dict(source)},
        statistics=stats,
        uses_references=bool(uses_references if uses_references is not None else _source_uses_references(source)),
    )
    path = write_manifest(folder, manifest)
    from spark_hub.cards import write_card

    write_card(folder)
    return path


def _source_uses_references(source: Mapping[str, Any]) -> bool:
    """``uses_references`` of the Stage I dataset when ``source`` is a local folder with a manifest."""
    import json

    manifest = Path(str(source.get("source") or "")) / "manifest.json"
    try:
        return bool(json.loads(manifest.read_text()).get("uses_references"))
    except (OSError, ValueError):
        return False


__all__ = [
    "SFTData",
    "VARIANTS",
    "as_row",
    "build_examples",
    "label_balance",
    "length_percentiles",
    "make_example",
    "make_sft_data",
    "percentiles",
    "prompt_text",
    "skip_reason",
    "split_by_problem",
    "target_text",
    "write_jsonl",
    "write_sft_dataset",
]
