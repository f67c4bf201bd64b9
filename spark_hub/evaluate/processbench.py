"""ProcessBench: find the earliest erroneous step of a solution (Zheng et al., 2024).

Each case is a problem, a solution split into steps ("paragraphs") and a label: the 0-based index of
the earliest erroneous step, or -1 when every step is correct. A scorer predicts an index the same
way; the official metric (QwenLM/ProcessBench ``code/run_eval.py``) is reproduced exactly:

- a prediction matches when it equals the label; no prediction (None) or an index outside the
  solution never matches;
- cases are split by label only (label -1 = "correct" cases, others = "error" cases);
- ``acc_error`` and ``acc_correct`` are the match rates x 100 of the two groups, and
  ``f1 = 2 * acc_error * acc_correct / (acc_error + acc_correct)`` from the UNROUNDED accuracies;
- the reported average is the mean of the per-split F1s (rounded to one decimal only for display).

Three ways to get predictions, all ending in `compute_metrics`:

- `score_with_prm`: a PRM from `spark_hub.prm.load_prm`; the prediction is the first step it judges
  incorrect, -1 when it judges none incorrect, None when its output cannot be read.
- `score_with_critic`: any chat model with the official critic prompt (`critic_messages`: steps in
  ``<paragraph_i>`` tags, earliest error index in ``\\boxed{}``); greedy, or majority over K samples.
- `read_predictions`: a JSONL file of ``{"id", "prediction"}`` rows made anywhere.

`run` does the whole evaluation (load, score, metrics, JSON + bar chart) and `record_results` writes
the F1s into a PRM's manifest, from which its card's ``model-index`` is rendered.

Data: a folder of ``<split>.jsonl`` files with the official fields ``id``, ``problem``, ``steps``,
``label`` (``generator`` and ``final_answer_correct`` are kept but unused). When a ``MANIFEST.json``
in the folder or its parent lists a file's sha256, the file is checked against it.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from spark_hub.errors import SparkHubError
from spark_hub.evaluate.data import manifest_entries, read_checked_jsonl
from spark_hub.inputs import iter_jsonl
from spark_hub.io import sha256_file, sha256_text

logger = logging.getLogger(__name__)

#: The official ProcessBench critic prompt (``code/templates/critique_template.txt``), verbatim.
CRITIC_TEMPLATE = """\
The following is a math problem and a solution (split into paragraphs, enclosed with tags and indexed from 0):

[Math Problem]

{problem}

[Solution]

{tagged_response}

Your task is to review and critique the solution paragraph by paragraph. Once you identify an error in a paragraph, return the index of the paragraph where the earliest error occurs. Otherwise, return the index of -1 (which typically denotes "not found").

Please put your final answer (i.e., the index) in \\boxed{{}}."""

CRITIC_TEMPLATE_SHA256 = sha256_text(CRITIC_TEMPLATE)

#: The four official splits, in the order the paper reports them.
OFFICIAL_SPLITS = ("gsm8k", "math", "olympiadbench", "omnimath")

# Official extraction: the LAST \boxed{...} without nested braces.
_BOXED_RE = re.compile(r"\\boxed\{([^}]*)\}")


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One ProcessBench case."""

    id: str
    split: str
    problem: str
    steps: tuple[str, ...]
    label: int
    """Index of the earliest erroneous step, or -1 when all steps are correct."""
    generator: str | None = None
    final_answer_correct: bool | None = None


@dataclass
class ProcessBenchData:
    """The splits of a ProcessBench folder, with provenance of every file read."""

    splits: dict[str, list[Case]]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``{split: {"path", "sha256", "rows", "used", "manifest_checked"}}``."""

    def cases(self) -> list[Case]:
        return [case for cases in self.splits.values() for case in cases]


def _read_case(row: Any, split: str, where: str) -> Case:
    if not isinstance(row, dict):
        raise SparkHubError("each line must be a JSON object", where=where)
    for name in ("id", "problem"):
        if not isinstance(row.get(name), str) or not row[name]:
            raise SparkHubError(f"field '{name}' must be a non-empty string", where=where)
    steps = row.get("steps")
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
        raise SparkHubError("field 'steps' must be a non-empty list of strings", where=where)
    label = row.get("label")
    if isinstance(label, bool) or not isinstance(label, int) or not -1 <= label < len(steps):
        raise SparkHubError(
            f"field 'label' must be -1 or a step index below {len(steps)}, got {label!r}", where=where
        )
    final = row.get("final_answer_correct")
    return Case(
        id=row["id"], split=split, problem=row["problem"], steps=tuple(steps), label=label,
        generator=row.get("generator"), final_answer_correct=final if isinstance(final, bool) else None,
    )


def load_processbench(
    data_dir: str | Path,
    splits: Sequence[str] | None = None,
    *,
    limit: int | None = None,
    verify: bool = True,
) -> ProcessBenchData:
    """Read ProcessBench splits from a folder of ``<split>.jsonl`` files.

    Args:
        data_dir: the folder (e.g. ``../shared/data/processbench``).
        splits: split names to read, in this order; default every ``*.jsonl`` in the folder, official
            splits first.
        limit: use ``limit`` cases of each split, balanced: the first ``ceil(limit/2)`` error cases
            and the first ``floor(limit/2)`` correct ones, in file order (topped up from the other
            group when one runs short). ProcessBench files list every error case before the correct
            ones, so the first ``limit`` rows alone would leave acc_correct, and so F1, undefined.
        verify: check each file against the sha256 of a ``MANIFEST.json`` that lists it.

    Raises:
        `SparkHubError`: missing folder or split, a malformed row (file:line and field), a duplicate
            id, or a file whose sha256 differs from the manifest.
    """
    folder = Path(data_dir)
    if not folder.is_dir():
        raise SparkHubError(f"ProcessBench data folder not found: {folder}", hint="pass --data DIR")
    available = {p.stem: p for p in folder.glob("*.jsonl")}
    if not available:
        raise SparkHubError(f"no *.jsonl split files in {folder}", hint="expected e.g. gsm8k.jsonl, math.jsonl")
    if splits is None:
        names = [s for s in OFFICIAL_SPLITS if s in available] + sorted(set(available) - set(OFFICIAL_SPLITS))
    else:
        names = list(dict.fromkeys(splits))
        missing = [s for s in names if s not in available]
        if missing:
            raise SparkHubError(
                f"split(s) {', '.join(missing)} not found in {folder}", hint=f"available: {', '.join(sorted(available))}"
            )
    if limit is not None and limit < 1:
        raise SparkHubError(f"limit must be >= 1, got {limit}")

    manifest = manifest_entries(folder)
    data = ProcessBenchData(splits={})
    for name in names:
        cases, data.files[name] = read_checked_jsonl(
            available[name], lambda row, where, name=name: _read_case(row, name, where), verify=verify,
            entry=manifest.get(available[name].name) or {},
        )
        if limit is not None:
            cases = balanced_subset(cases, limit)
            data.files[name]["used"] = len(cases)
        data.splits[name] = cases
    return data


def balanced_subset(cases: Sequence[Case], limit: int) -> list[Case]:
    """``limit`` cases, half with an error and half correct (first ones of each, in file order).

    >>> cases = [Case(id=str(i), split="s", problem="p", steps=("a",), label=0 if i < 6 else -1) for i in range(8)]
    >>> [c.id for c in balanced_subset(cases, 5)]
    ['0', '1', '2', '6', '7']
    """
    errors = [c for c in cases if c.label != -1]
    correct = [c for c in cases if c.label == -1]
    take_correct = min(len(correct), limit // 2)
    take_errors = min(len(errors), limit - take_correct)
    take_correct = min(len(correct), limit - take_errors)
    chosen = {id(c) for c in errors[:take_errors] + correct[:take_correct]}
    return [c for c in cases if id(c) in chosen]


# ------------------------------------------------------------------------------------------------
# Metric
# ------------------------------------------------------------------------------------------------


def as_prediction(value: Any) -> int | None:
    """An int prediction, or None for anything else (bools included: True is not step 1)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def f1_score(acc_error: float | None, acc_correct: float | None) -> float | None:
    """Harmonic mean of the two accuracies; 0 when both are 0; None when either group is empty."""
    if acc_error is None or acc_correct is None:
        return None
    if acc_error + acc_correct == 0:
        return 0.0
    return 2 * acc_error * acc_correct / (acc_error + acc_correct)


def split_metrics(cases: Iterable[Case], predictions: Mapping[str, Any]) -> dict[str, Any]:
    """The official metric for one split (accuracies in percent, unrounded)."""
    error_hits, correct_hits = [], []
    missing = no_prediction = 0
    for case in cases:
        if case.id not in predictions:
            missing += 1
        prediction = as_prediction(predictions.get(case.id))
        if prediction is None:
            no_prediction += 1
        hit = prediction is not None and prediction == case.label
        (correct_hits if case.label == -1 else error_hits).append(hit)
    acc_error = 100.0 * sum(error_hits) / len(error_hits) if error_hits else None
    acc_correct = 100.0 * sum(correct_hits) / len(correct_hits) if correct_hits else None
    return {
        "n": len(error_hits) + len(correct_hits),
        "n_error": len(error_hits),
        "n_correct": len(correct_hits),
        "acc_error": acc_error,
        "acc_correct": acc_correct,
        "f1": f1_score(acc_error, acc_correct),
        "no_prediction": no_prediction,
        "missing": missing,
    }


def compute_metrics(
    data: ProcessBenchData | Mapping[str, Sequence[Case]], predictions: Mapping[str, Any]
) -> dict[str, Any]:
    """Per-split accuracies and F1, and their average (the paper's "Average").

    Args:
        data: a `ProcessBenchData` or ``{split: [Case, ...]}``.
        predictions: ``{case_id: index or None}``; ids not in it count as no prediction.

    Returns:
        ``{"splits": {split: {"n", "n_error", "n_correct", "acc_error", "acc_correct", "f1",
        "no_prediction", "missing"}}, "average_f1": mean of split F1s (None if none defined)}``.
        Accuracies and F1 are percentages, unrounded.
    """
    splits = data.splits if isinstance(data, ProcessBenchData) else data
    per_split = {name: split_metrics(cases, predictions) for name, cases in splits.items()}
    f1s = [m["f1"] for m in per_split.values() if m["f1"] is not None]
    return {"splits": per_split, "average_f1": sum(f1s) / len(f1s) if f1s else None}


def format_table(metrics: Mapping[str, Any]) -> str:
    """A plain-text table of the metrics, one decimal, as the paper prints them."""

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = [f"{'split':<16}{'n':>6}{'acc_err':>10}{'acc_corr':>10}{'F1':>8}"]
    for name, m in metrics["splits"].items():
        lines.append(f"{name:<16}{m['n']:>6}{fmt(m['acc_error']):>10}{fmt(m['acc_correct']):>10}{fmt(m['f1']):>8}")
    lines.append(f"{'average':<16}{'':>6}{'':>10}{'':>10}{fmt(metrics['average_f1']):>8}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Predictions from a file
# ------------------------------------------------------------------------------------------------


def read_predictions(path: str | Path) -> dict[str, int | None]:
    """Read ``{"id": ..., "prediction": int | null}`` JSONL rows (other keys are ignored).

    Raises:
        `SparkHubError`: a missing file, invalid JSON, a missing/invalid field or a duplicate id,
            naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise SparkHubError(f"predictions file not found: {path}")
    predictions: dict[str, int | None] = {}
    for where, row in iter_jsonl(path):
        case_id = row.get("id")
        if not isinstance(case_id, str) or not case_id:
            raise SparkHubError("field 'id' must be a non-empty string", where=where)
        if "prediction" not in row:
            raise SparkHubError("field 'prediction' is missing (use null for no prediction)", where=where)
        value = row["prediction"]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise SparkHubError(
                f"field 'prediction' must be an integer step index (-1 = no error) or null, got {value!r}",
                where=where,
            )
        if case_id in predictions:
            raise SparkHubError(f"duplicate id {case_id!r}", where=where)
        predictions[case_id] = value
    return predictions


def write_predictions(path: str | Path, predictions: Mapping[str, int | None]) -> None:
    """Write predictions in the format `read_predictions` reads."""
    from spark_hub.io import atomic_write_text

    lines = [json.dumps({"id": k, "prediction": v}) for k, v in predictions.items()]
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))


# ------------------------------------------------------------------------------------------------
# Critic (prompted model) predictions
# ------------------------------------------------------------------------------------------------


def tagged_response(steps: Sequence[str]) -> str:
    """Steps wrapped ``<paragraph_i>\\n{step}\\n</paragraph_i>``, 0-based, blank line between."""
    return "\n\n".join(f"<paragraph_{i}>\n{step}\n</paragraph_{i}>" for i, step in enumerate(steps))


def critic_messages(problem: str, steps: Sequence[str]) -> list[dict[str, str]]:
    """The official critic prompt as one user message."""
    text = CRITIC_TEMPLATE.format(problem=problem, tagged_response=tagged_response(steps))
    return [{"role": "user", "content": text}]


def extract_boxed(text: str | None) -> str | None:
    """The stripped content of the last ``\\boxed{...}`` (no nested braces), or None."""
    matches = _BOXED_RE.findall(text or "")
    return matches[-1].strip() if matches else None


def _to_int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def critic_prediction(texts: Sequence[str]) -> int | None:
    """The official reading of one or K critic outputs.

    One output: ``int`` of its last boxed content, None if absent or not an int. K outputs: the
    majority over the extracted strings of the outputs that have one (first seen wins a tie), then
    ``int`` of it (None if it is not an int), as ``run_eval.py`` does with ``--use_voting``.
    """
    if len(texts) == 1:
        return _to_int(extract_boxed(texts[0]))
    extracted = [e for e in (extract_boxed(t) for t in texts) if e is not None]
    if not extracted:
        return None
    return _to_int(Counter(extracted).most_common(1)[0][0])


def critic_requests(
    cases: Sequence[Case], *, voting: int = 1, max_tokens: int = 8192, seed: int | None = 42,
    temperature: float | None = None, top_p: float | None = None,
):
    """One `GenerationRequest` per case: greedy for ``voting == 1``, else K samples at T=1, top_p 0.9
    (the official settings; ``temperature``/``top_p`` override them)."""
    from spark_hub.backends.base import GenerationRequest

    if voting < 1:
        raise SparkHubError(f"voting must be >= 1, got {voting}")
    if voting == 1:
        sampling = {"n": 1, "temperature": 0.0 if temperature is None else temperature,
                    "top_p": 1.0 if top_p is None else top_p}
    else:
        sampling = {"n": voting, "temperature": 1.0 if temperature is None else temperature,
                    "top_p": 0.9 if top_p is None else top_p}
    return [
        GenerationRequest.from_chat(critic_messages(c.problem, c.steps), max_tokens=max_tokens, seed=seed, **sampling)
        for c in cases
    ]


def score_with_critic(
    backend: Any,
    cases: Sequence[Case],
    *,
    voting: int = 1,
    max_tokens: int = 8192,
    seed: int | None = 42,
    temperature: float | None = None,
    top_p: float | None = None,
    chunk_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, int | None], dict[str, list[str]]]:
    """Predict with a prompted critic through a backend (wrap it in a `CachedBackend` to resume).

    Returns:
        ``(predictions, texts)``: ``{case_id: index or None}`` and the raw outputs per case.
    """
    requests = critic_requests(
        cases, voting=voting, max_tokens=max_tokens, seed=seed, temperature=temperature, top_p=top_p
    )
    predictions: dict[str, int | None] = {}
    texts: dict[str, list[str]] = {}
    for start in range(0, len(cases), max(1, chunk_size)):
        batch = list(range(start, min(start + chunk_size, len(cases))))
        outputs = backend.generate([requests[i] for i in batch])
        for i, completions in zip(batch, outputs):
            outs = [c.text for c in completions]
            texts[cases[i].id] = outs
            predictions[cases[i].id] = critic_prediction(outs)
        if progress is not None:
            progress(batch[-1] + 1, len(cases))
    return predictions, texts


# ------------------------------------------------------------------------------------------------
# PRM predictions
# ------------------------------------------------------------------------------------------------


def case_final_answer(steps: Sequence[str]) -> str | None:
    """The final answer a PRM is shown for a case: the content of the last ``\\boxed{...}`` in the
    LAST step (nested braces kept), or None (the prompt then has no ``Answer:`` line).

    SFT prompts (`spark_hub.train.sft_data`, ``include_answer=True``) show the record's final answer,
    so ProcessBench asks the PRM with the answer its solution ends on, in the same words.
    """
    from spark_hub.rewards import boxed_contents

    found = boxed_contents(steps[-1]) if steps else []
    return found[-1] if found and found[-1] else None


def prm_items(cases: Sequence[Case]) -> list[tuple[str, list[str], str | None]]:
    """``(problem, steps, final_answer)`` per case, as `score_with_prm` passes them to ``score_batch``."""
    return [(c.problem, list(c.steps), case_final_answer(c.steps)) for c in cases]


def score_with_prm(
    prm: Any,
    cases: Sequence[Case],
    *,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, int | None], dict[str, Any]]:
    """Predict with a PRM (`spark_hub.prm.load_prm`): ``prm.score_batch`` once per ``batch_size`` cases.

    The prediction is ``StepScores.first_error``: the first step judged incorrect, -1 when every
    step is judged correct, None when the PRM's output cannot be read for every step.
    Each case is scored as ``(problem, steps, case_final_answer(steps))`` (`prm_items`): a generative
    PRM sees the ``Answer:`` line its SFT prompt had; discriminative PRMs ignore the answer.

    Returns:
        ``(predictions, scores)``: ``{case_id: index or None}`` and ``{case_id: StepScores}``.
    """
    if batch_size < 1:
        raise SparkHubError(f"batch_size must be >= 1, got {batch_size}")
    predictions: dict[str, int | None] = {}
    scores: dict[str, Any] = {}
    for start in range(0, len(cases), batch_size):
        batch = cases[start : start + batch_size]
        results = prm.score_batch(prm_items(batch))
        for case, result in zip(batch, results):
            scores[case.id] = result
            predictions[case.id] = result.first_error
        if progress is not None:
            progress(start + len(batch), len(cases))
    return predictions, scores


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------


def build_results(
    data: ProcessBenchData,
    predictions: Mapping[str, Any],
    *,
    scorer: Mapping[str, Any],
    per_case: bool = False,
) -> dict[str, Any]:
    """A JSON-able results document: metrics, the scorer, the data files, optionally every case.

    Args:
        scorer: how predictions were made, e.g. ``{"kind": "prm", "model": ..., "revision": ...}``,
            ``{"kind": "critic", "model": ..., "voting": 8, "template_sha256": ...}`` or
            ``{"kind": "predictions", "file": ..., "sha256": ...}``.
    """
    results: dict[str, Any] = {
        "benchmark": "processbench",
        "scorer": dict(scorer),
        "data": data.files,
        **compute_metrics(data, predictions),
    }
    if per_case:
        results["cases"] = [
            {"id": c.id, "split": c.split, "label": c.label, "prediction": as_prediction(predictions.get(c.id)),
             "match": as_prediction(predictions.get(c.id)) == c.label}
            for c in data.cases()
        ]
    return results


def model_index(results: Mapping[str, Any], model_name: str) -> list[dict[str, Any]]:
    """The ``model-index`` card metadata for these results: one entry per split, F1 in percent."""
    entries = []
    for split, m in results["splits"].items():
        if m["f1"] is None:
            continue
        entries.append({
            "task": {"type": "process-reward-modeling", "name": "Earliest error identification"},
            "dataset": {"name": f"ProcessBench ({split})", "type": "Qwen/ProcessBench", "split": split},
            "metrics": [
                {"type": "f1", "name": "F1", "value": round(m["f1"], 1)},
                {"type": "accuracy", "name": "Error accuracy", "value": round(m["acc_error"], 1)},
                {"type": "accuracy", "name": "Correct accuracy", "value": round(m["acc_correct"], 1)},
            ],
        })
    return [{"name": model_name, "results": entries}]


def plot_results(results: Mapping[str, Any], path: str | Path, *, title: str | None = None) -> Path:
    """A per-split bar chart (error accuracy, correct accuracy, F1, each value printed above its
    bar; an undefined one reads n/a) written atomically as PNG (`spark_hub.plots.bar_chart`)."""
    from spark_hub.plots import BLUE, GREEN, ORANGE, bar_chart

    splits = list(results["splits"])
    series = [(label, [results["splits"][s][key] for s in splits], color) for key, label, color in
              [("acc_error", "error acc.", BLUE), ("acc_correct", "correct acc.", ORANGE), ("f1", "F1", GREEN)]]
    average = results.get("average_f1")
    suffix = f"average F1 {average:.1f}" if average is not None else "average F1 -"
    return bar_chart(path, splits, series, title=f"{title} \u00b7 {suffix}" if title else f"ProcessBench, {suffix}",
                     ylabel="%", ylim=(0, 110), value_labels=True, legend=True)


def manifest_results(results: Mapping[str, Any]) -> dict[str, Any]:
    """The ``results["processbench"]`` section of a PRM manifest (what its card's model-index reads):
    ``{split: {"f1", "acc_error", "acc_correct", "n"}, "average": mean F1}``, one decimal."""

    def r(value: float | None) -> float | None:
        return None if value is None else round(value, 1)

    section: dict[str, Any] = {
        split: {"f1": r(m["f1"]), "acc_error": r(m["acc_error"]), "acc_correct": r(m["acc_correct"]), "n": m["n"]}
        for split, m in results["splits"].items()
    }
    section["average"] = r(results.get("average_f1"))
    return section


def record_results(folder: str | Path, results: Mapping[str, Any]) -> Path:
    """Write the ProcessBench results into the ``manifest.json`` of a PRM folder (file table refreshed)
    and re-render its ``README.md``, whose ``model-index`` then lists the F1 of every split."""
    from spark_hub.manifest import read_manifest, write_manifest

    manifest = read_manifest(folder)
    if manifest.get("kind") != "prm":
        raise SparkHubError(f"{folder} holds a {manifest.get('kind')!r} artifact, not a PRM",
                            hint="record ProcessBench results into a PRM folder")
    manifest = {k: v for k, v in manifest.items() if k != "files"}
    manifest["results"] = {**(manifest.get("results") or {}), "processbench": manifest_results(results)}
    path = write_manifest(folder, manifest)
    from spark_hub.cards import write_card

    write_card(folder)  # the local card shows the F1s (model-index) too; a push renders it again
    return path


def run(
    data_dir: str | Path,
    *,
    prm: Any = None,
    critic: Any = None,
    predictions: str | Path | None = None,
    splits: Sequence[str] | None = None,
    limit: int | None = None,
    voting: int = 1,
    max_tokens: int = 8192,
    seed: int | None = 42,
    batch_size: int = 16,
    output: str | Path | None = None,
    plot: str | Path | None = None,
    per_case: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate one scorer on ProcessBench and write the results (what ``spark-hub eval processbench`` runs).

    Exactly one scorer:
        prm: a PRM object or a path / Hub id for `spark_hub.prm.load_prm`.
        critic: a backend (wrap it in a `spark_hub.cache.CachedBackend` to resume) prompted with the
            official critic template, greedy or majority over ``voting`` samples.
        predictions: a JSONL file of ``{"id", "prediction"}``.

    Args:
        output: JSON file for the results (default: not written); ``plot``: PNG bar chart (default:
            next to ``output`` with a ``.png`` suffix when ``output`` is given).

    Returns:
        The results document of `build_results`.
    """
    given = [name for name, value in (("prm", prm), ("critic", critic), ("predictions", predictions)) if value is not None]
    if len(given) != 1:
        raise SparkHubError(
            "give exactly one of a PRM, a critic model or a predictions file"
            + (f" (got {', '.join(given)})" if given else ""),
            hint="--prm PATH_OR_REPO, --critic MODEL or --predictions FILE",
        )
    data = load_processbench(data_dir, splits, limit=limit)
    cases = data.cases()
    if predictions is not None:
        preds = read_predictions(predictions)
        scorer = {"kind": "predictions", "file": str(predictions), "sha256": sha256_file(predictions)}
        unknown = set(preds) - {c.id for c in cases}
        if unknown and len(unknown) == len(preds):
            raise SparkHubError(f"no id in {predictions} matches a case of the chosen splits",
                                hint="ids look like gsm8k-0, math-12")
    elif critic is not None:
        preds, _ = score_with_critic(critic, cases, voting=voting, max_tokens=max_tokens, seed=seed, progress=progress)
        scorer = {"kind": "critic", "model": getattr(critic, "model_id", None), "voting": voting,
                  "max_tokens": max_tokens, "seed": seed, "template_sha256": CRITIC_TEMPLATE_SHA256}
        describe = getattr(critic, "describe", None) or getattr(getattr(critic, "backend", None), "describe", None)
        if describe is not None:
            scorer["provenance"] = describe()
    else:
        if isinstance(prm, (str, Path)):
            from spark_hub.prm import load_prm

            prm = load_prm(prm)
        preds, _ = score_with_prm(prm, cases, batch_size=batch_size, progress=progress)
        scorer = {"kind": "prm", **prm.describe()}
    results = build_results(data, preds, scorer=scorer, per_case=per_case)
    if limit is not None:
        results["limit"] = limit
    logger.info("ProcessBench\n%s", format_table(results))
    if output is not None:
        from spark_hub.io import atomic_write_json

        atomic_write_json(output, results)
        if plot is None:
            plot = Path(output).with_suffix(".png")
    if plot is not None:
        plot_results(results, plot, title=str(scorer.get("name") or scorer.get("model") or scorer["kind"]))
    return results


__all__ = [
    "CRITIC_TEMPLATE",
    "CRITIC_TEMPLATE_SHA256",
    "Case",
    "OFFICIAL_SPLITS",
    "ProcessBenchData",
    "as_prediction",
    "build_results",
    "case_final_answer",
    "compute_metrics",
    "critic_messages",
    "critic_prediction",
    "critic_requests",
    "extract_boxed",
    "f1_score",
    "format_table",
    "load_processbench",
    "manifest_results",
    "model_index",
    "plot_results",
    "prm_items",
    "read_predictions",
    "record_results",
    "run",
    "score_with_critic",
    "score_with_prm",
    "split_metrics",
    "tagged_response",
    "write_predictions",
]
