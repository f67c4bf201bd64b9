"""Stage I: ``spark-hub build-dataset``.

problems -> M solutions per problem -> N verifications per solution (one request, n=N) -> parse
-> aggregate -> step records + raw verifications (Parquet) -> config, card, manifest.

Every model call goes through the cache (`spark_hub.cache`), so a killed run resumes where it
stopped and a finished build re-runs with zero model calls. Output files are staged under
``.spark/`` and moved into place at the end, the manifest last: a folder whose manifest matches
the current build key is complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spark_hub import __version__
from spark_hub.backends.base import GenerationRequest, load_backend
from spark_hub.cache import CachedBackend, CallCache
from spark_hub.config import BuildConfig, dump_yaml
from spark_hub.errors import SparkHubError
from spark_hub.inputs import load_problems, load_solutions
from spark_hub.io import atomic_write_text, sha256_file
from spark_hub.manifest import MANIFEST_NAME, new_manifest, write_manifest
from spark_hub.progress import StageProgress
from spark_hub.parsing import strip_think
from spark_hub.prompts import critique_messages, merge_messages, template_hash
from spark_hub.records import Problem, Solution, StepRecord, Verification
from spark_hub.schema import fast_check
from spark_hub.stages.aggregate import META_METHODS, Aggregate, aggregate, apply_merged
from spark_hub.stages.balance import balance_problem
from spark_hub.stages.generate import given_solutions, parse_solutions, solution_request
from spark_hub.stages.verify import parse_verifications, verification_request
from spark_hub.storage import ShardWriter, finalize_shards

logger = logging.getLogger(__name__)

HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
AGREEMENT_STEPS = 30  # agreement_by_step covers steps 1..30


@dataclass
class BuildResult:
    """What `main` returns: where the dataset is, its statistics, and how much work was done."""

    output_dir: Path
    manifest: dict[str, Any]
    statistics: dict[str, Any]
    reused: bool = False
    """True when the folder already held this exact build (nothing was recomputed)."""
    model_requests: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    loop_seconds: float = 0.0
    """Time spent in the per-chunk loop (model calls, parse, aggregate, validate, write)."""


# ----------------------------------------------------------------------------- statistics


class LabelStats:
    """Streaming statistics over step records and verifications (constant memory)."""

    def __init__(self):
        self.problems = 0
        self.solutions = 0
        self.solution_status: dict[str, int] = {}
        self.verifications = 0
        self.verification_status: dict[str, int] = {}
        self.record_status: dict[str, int] = {}
        self.steps_correct = 0
        self.steps_incorrect = 0
        self.final_yes = 0
        self.final_no = 0
        self.agreement_sum = 0.0
        self.agreement_n = 0
        self.unanimous = 0
        self.by_step_sum = [0.0] * AGREEMENT_STEPS
        self.by_step_n = [0] * AGREEMENT_STEPS
        self.cot_exact = 0
        self.cot_targets = 0
        self.tokens: dict[str, int] = {"generator": 0, "verifier": 0}
        self.kept_problems: set[str] = set()
        self.meta_calls: dict[str, int] = {}
        self.merge_status: dict[str, int] = {}

    @staticmethod
    def _bump(d: dict[str, int], key: str) -> None:
        d[key] = d.get(key, 0) + 1

    def add_record_row(self, record: dict[str, Any]) -> None:
        self.solutions += 1
        self.kept_problems.add(record["problem_id"])
        self._bump(self.solution_status, record["solution_status"])
        self._bump(self.record_status, record["status"])
        labels = record["labels"]
        if labels is not None:
            n_ok = sum(labels)
            self.steps_correct += n_ok
            self.steps_incorrect += len(labels) - n_ok
            if record["final_label"]:
                self.final_yes += 1
            else:
                self.final_no += 1
            for i, a in enumerate(record["agreement"]):
                if a is None:
                    continue
                self.agreement_sum += a
                self.agreement_n += 1
                self.unanimous += a == 1.0
                if i < AGREEMENT_STEPS:
                    self.by_step_sum[i] += a
                    self.by_step_n[i] += 1
            if record["cot_target"] is not None:
                self.cot_targets += 1
                self.cot_exact += bool(record["cot_exact_match"])

    def add_verification_status(self, status: str, kind: str = "sample") -> None:
        if kind != "sample":
            self._bump(self.meta_calls, kind)
            if kind == "merged":
                self._bump(self.merge_status, status)
            return
        self.verifications += 1
        self._bump(self.verification_status, status)

    def to_dict(self) -> dict[str, Any]:
        labelled = self.record_status.get("ok", 0)
        steps = self.steps_correct + self.steps_incorrect
        failures = self.verifications - self.verification_status.get("ok", 0)
        by_step = [round(s / n, 4) for s, n in zip(self.by_step_sum, self.by_step_n) if n]
        return {
            "problems": self.problems,
            "solutions": self.solutions,
            "solution_status": dict(sorted(self.solution_status.items())),
            "verifications": self.verifications,
            "verification_status": dict(sorted(self.verification_status.items())),
            "parse_failure_rate": round(failures / self.verifications, 4) if self.verifications else 0.0,
            "records": self.solutions,
            "records_labelled": labelled,
            "record_status": dict(sorted(self.record_status.items())),
            "steps_labelled": steps,
            "steps_correct": self.steps_correct,
            "steps_incorrect": self.steps_incorrect,
            "step_label_balance": round(self.steps_correct / steps, 4) if steps else None,
            "final_yes": self.final_yes,
            "final_no": self.final_no,
            "final_label_balance": round(self.final_yes / labelled, 4) if labelled else None,
            "mean_step_agreement": round(self.agreement_sum / self.agreement_n, 4) if self.agreement_n else None,
            "unanimous_step_rate": round(self.unanimous / self.agreement_n, 4) if self.agreement_n else None,
            "agreement_by_step": by_step,
            "cot_exact_match_rate": round(self.cot_exact / self.cot_targets, 4) if self.cot_targets else None,
            "completion_tokens": dict(self.tokens),
            "meta_critique": {"calls": dict(sorted(self.meta_calls.items())),
                              "merge_status": dict(sorted(self.merge_status.items()))} if self.meta_calls else None,
        }


# ----------------------------------------------------------------------------- inputs


@dataclass
class Inputs:
    problems: list[Problem]
    given: dict[str, list[dict[str, Any]]] | None
    provenance: dict[str, dict[str, Any]]


def _resolve_problem_source(config: BuildConfig) -> tuple[Path, dict[str, Any]]:
    path = Path(config.problems)
    if path.exists():
        return path, {"source": str(path), "sha256": sha256_file(path) if path.is_file() else _folder_hash(path)}
    if HUB_ID_RE.match(config.problems):
        from spark_hub.hub import resolve_hub_dataset

        folder, sha = resolve_hub_dataset(config.problems, revision=config.problems_revision)
        folder = Path(folder)
        split_files = [p for p in folder.rglob("*") if p.suffix in (".jsonl", ".parquet") and config.problems_split in p.name]
        if split_files:
            folder = split_files[0] if len(split_files) == 1 else folder
        return folder, {"source": f"hf://datasets/{config.problems}", "revision": sha, "sha256": None}
    raise SparkHubError(f"problems file not found: {config.problems}", hint="pass a .jsonl/.parquet path or a Hub dataset id ORG/NAME")


def _folder_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and ".spark" not in p.parts:
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(sha256_file(p).encode())
    return h.hexdigest()


def load_inputs(config: BuildConfig) -> Inputs:
    """Read and validate all inputs (before any output is written)."""
    fields = dict(problem_field=config.problem_field, answer_field=config.answer_field,
                  id_field=config.id_field, limit=config.limit)
    if config.solutions:
        path = Path(config.solutions)
        if not path.exists():
            raise SparkHubError(f"solutions file not found: {path}")
        grouped = load_solutions(path, **fields)
        problems = [p for p, _ in grouped]
        given = {p.id: rows for p, rows in grouped}
        prov = {"solutions": {"source": str(path), "sha256": sha256_file(path), "rows": sum(len(r) for r in given.values())}}
        return Inputs(problems, given, prov)
    if not config.problems:
        raise SparkHubError("no input: set `problems` (or `solutions`)", hint="--problems FILE.jsonl")
    path, prov = _resolve_problem_source(config)
    problems = load_problems(path, **fields)
    prov["rows"] = len(problems)
    return Inputs(problems, None, {"problems": prov})


# ----------------------------------------------------------------------------- build key


def build_key(config: BuildConfig, inputs: Inputs, fingerprints: dict[str, str]) -> str:
    """Hash of everything that determines the output; engine settings are left out."""
    semantic = {
        "spark_hub": __version__,
        "inputs": {k: {kk: v.get(kk) for kk in ("sha256", "revision", "source")} for k, v in inputs.provenance.items()},
        "fields": [config.problem_field, config.answer_field, config.id_field, config.limit,
                   config.problems_split if not Path(config.problems or "").exists() else None],
        "models": fingerprints,
        "generator": config.generator.sampling() if not config.solutions else None,
        "verifier": config.verifier.sampling(),
        "aggregation": dataclasses.asdict(config.aggregation),
        "balance": dataclasses.asdict(config.balance),
        "contamination": {**dataclasses.asdict(config.contamination),
                          "hashes": [sha256_file(b) for b in config.contamination.benchmarks if Path(b).is_file()]},
        "seed": config.seed,
        "prompts": prompt_hashes(config),
        "shard_rows": config.shard_rows,
    }
    return hashlib.sha256(json.dumps(semantic, sort_keys=True).encode()).hexdigest()


def prompt_hashes(config: BuildConfig) -> dict[str, str]:
    """sha256 of every template this build uses."""
    names = ["verifier" if config.aggregation.method != "reference_guided" else "reference_verifier"]
    if not config.solutions:
        names.insert(0, "generator")
    if config.aggregation.method in META_METHODS:
        names += ["critique", "merge"]
    return {name: template_hash(name) for name in names}


def finished_build(output_dir: Path, key: str) -> dict[str, Any] | None:
    """The manifest of a complete build with this key in ``output_dir``, else None."""
    path = output_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("build_key") != key:
        return None
    for rel, info in (manifest.get("files") or {}).items():
        f = output_dir / rel
        if not f.is_file() or f.stat().st_size != info.get("size"):
            return None
    return manifest


def check_output_dir(output_dir: Path) -> None:
    """Refuse a path that is a file, or a non-empty folder that is not a spark-hub build."""
    if output_dir.exists() and not output_dir.is_dir():
        raise SparkHubError(f"output path exists and is not a folder: {output_dir}")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        ours = (output_dir / MANIFEST_NAME).exists() or (output_dir / ".spark").exists()
        if not ours:
            raise SparkHubError(
                f"output folder {output_dir} is not empty and is not a spark-hub build",
                hint="choose a new --output-dir; spark-hub never overwrites other files",
            )


# ----------------------------------------------------------------------------- main


def _engine_free(config) -> dict[str, Any]:
    """A role's backend settings without the engine knobs (to decide whether roles share a model)."""
    d = dataclasses.asdict(config.backend_config())
    for knob in ("batch_size", "max_concurrency", "max_retries", "timeout"):
        d.pop(knob, None)
    return d


def load_backends(config: BuildConfig, *, need_generator: bool):
    """The verifier backend and, when needed, the generator backend (one instance if identical)."""
    verifier = load_backend(config.verifier.backend_config())
    generator = None
    if need_generator:
        same = _engine_free(config.generator) == _engine_free(config.verifier)
        generator = verifier if same else load_backend(config.generator.backend_config())
    return generator, verifier


def apply_contamination(config: BuildConfig, inputs: Inputs) -> dict[str, Any] | None:
    """Run the contamination check (if configured) and drop matches when asked; returns the report."""
    if not config.contamination.benchmarks:
        return None
    from spark_hub.stages.contamination import check

    report = check(inputs.problems, config.contamination)
    if report["matched"]:
        logger.warning("%d of %d problems overlap with benchmarks (%s)%s", report["matched"], report["checked"],
                       ", ".join(f"{k}: {v['matched']}" for k, v in report["benchmarks"].items() if v["matched"]),
                       "; dropping them" if config.contamination.decontaminate else "")
    if config.contamination.decontaminate and report["matched"]:
        drop = set(report["matched_ids"])
        inputs.problems = [p for p in inputs.problems if p.id not in drop]
        if not inputs.problems:
            raise SparkHubError("every problem matched a benchmark; nothing left after decontamination")
    return report


def main(config: BuildConfig, *, progress: bool = True) -> BuildResult:
    """Run Stage I end to end (resumable). Returns a `BuildResult`."""
    t0 = time.monotonic()
    if not config.output_dir:
        raise SparkHubError("output_dir is not set", hint="--output-dir DIR")
    output_dir = Path(config.output_dir)
    check_output_dir(output_dir)
    method = config.aggregation.method

    # ---- inputs (validated before anything is written), contamination check
    inputs = load_inputs(config)
    if method == "reference_guided":
        missing = next((p for p in inputs.problems if not p.reference), None)
        if missing is not None:
            raise SparkHubError(f"aggregation.method=reference_guided needs a reference answer for every problem; "
                                f"problem {missing.id!r} has none", where=missing.source,
                                hint="set --set answer_field=NAME")
    contamination = apply_contamination(config, inputs)

    # ---- models (weights load lazily: a finished build never loads them)
    generator_backend, verifier_backend = load_backends(config, need_generator=inputs.given is None)
    fingerprints = {"verifier": verifier_backend.fingerprint()}
    if generator_backend is not None:
        fingerprints["generator"] = generator_backend.fingerprint()
    key = build_key(config, inputs, fingerprints)

    # ---- finished build? then there is nothing to do
    done = finished_build(output_dir, key)
    if done is not None:
        logger.info("%s already holds this build (key %s); nothing to do", output_dir, key[:12])
        _close(generator_backend, verifier_backend)
        return BuildResult(output_dir, done, done.get("statistics", {}), reused=True,
                           model_requests={"generator": 0, "verifier": 0}, seconds=time.monotonic() - t0)

    # ---- resume from the call cache
    output_dir.mkdir(parents=True, exist_ok=True)
    cache = CallCache(config.cache or output_dir / ".spark" / "cache.sqlite")
    verifier = CachedBackend(verifier_backend, cache, batch_size=config.verifier.batch_size)
    generator = (CachedBackend(generator_backend, cache, batch_size=config.generator.batch_size)
                 if generator_backend is not None else None)
    if len(cache):
        logger.info("resuming: %d model calls already cached in %s", len(cache), cache.path)

    stats = LabelStats()
    records_out = ShardWriter(output_dir, "default", config.shard_rows)
    verifs_out = ShardWriter(output_dir, "verifications", config.shard_rows)
    problems = inputs.problems
    stats.problems = len(problems)
    labeller = Labeller(config, verifier.model_id, generator.model_id if generator is not None else "given")

    loop_started = time.monotonic()
    with StageProgress(enabled=progress) as bar:
        per_problem = config.generator.n if generator is not None else 1
        if generator is not None:
            bar.add("generate", len(problems))
        bar.add("verify", len(problems) * per_problem)
        if method in META_METHODS:
            bar.add("critique", len(problems) * per_problem)
            bar.add("merge", len(problems) * per_problem)

        for start in range(0, len(problems), config.chunk_size):
            chunk = problems[start : start + config.chunk_size]

            # ---- solutions: one request with n=M per problem (or the given ones)
            if generator is not None:
                requests = [solution_request(p, config.generator.sampling(), config.seed) for p in chunk]
                outputs = generator.generate(requests, on_batch=bar.on_batch("generate"))
                solutions = {p.id: parse_solutions(p, out) for p, out in zip(chunk, outputs)}
                stats.tokens["generator"] += sum(c.completion_tokens for o in outputs for c in o)
            else:
                solutions = {p.id: given_solutions(p, inputs.given[p.id]) for p in chunk}
            pairs = [(p, s) for p in chunk for s in solutions[p.id]]
            with_steps = [(p, s) for p, s in pairs if s.steps]
            bar.advance("verify", len(pairs) - len(with_steps))  # solutions without steps are not verified

            # ---- N verifications: one request with n=N per solution
            requests = [verification_request(p, s, config.verifier.sampling(), config.seed,
                                             with_reference=method == "reference_guided") for p, s in with_steps]
            outputs = verifier.generate(requests, on_batch=bar.on_batch("verify"))
            verifications = {
                (s.problem_id, s.index): parse_verifications(s, out, verifier.model_id)
                for (_, s), out in zip(with_steps, outputs)
            }
            stats.tokens["verifier"] += sum(c.completion_tokens for o in outputs for c in o)

            # ---- aggregate (+ meta-critique: critique, then merge, on the selected verification)
            labelled = labeller.aggregate(pairs, verifications)
            if method in META_METHODS:
                labelled = labeller.meta_critique(labelled, verifier, bar, stats)

            # ---- records, balancing, validation, write
            record_rows, verification_rows = labeller.rows(labelled)
            if config.balance.enabled:
                record_rows = balance_rows(record_rows, config)
            for row in record_rows:
                stats.add_record_row(row)
            for row in verification_rows:
                stats.add_verification_status(row["parse_status"], row["kind"])
            records_out.write(record_rows)
            verifs_out.write(verification_rows)

    loop_seconds = time.monotonic() - loop_started
    statistics = stats.to_dict()
    statistics["problems_dropped_unbalanced"] = stats.problems - len(stats.kept_problems) if config.balance.enabled else 0
    model_requests = {"generator": generator.model_requests if generator else 0,
                      "verifier": verifier.model_requests}
    statistics["model_requests"] = model_requests
    statistics["model_seconds"] = {"generator": round(generator.model_seconds, 3) if generator else 0.0,
                                   "verifier": round(verifier.model_seconds, 3)}
    statistics["cache_hits"] = (generator.hits if generator else 0) + verifier.hits

    # ---- finalize: manifest removed first, written last
    manifest_path = output_dir / MANIFEST_NAME
    if manifest_path.exists():
        manifest_path.unlink()
    finalize_shards(output_dir, "default", records_out.close())
    finalize_shards(output_dir, "verifications", verifs_out.close())
    atomic_write_text(output_dir / "config.yaml", dump_yaml(config))
    models = {"verifier": verifier_backend.describe()}
    if generator_backend is not None:
        models["generator"] = generator_backend.describe()
    manifest = new_manifest(
        "dataset",
        config=config.to_dict(),
        models=models,
        prompts=prompt_hashes(config),
        seeds={"sampling": config.seed, "balance": config.seed if config.balance.enabled else None},
        inputs=inputs.provenance,
        statistics=statistics,
        contamination=contamination,
        uses_references=config.uses_references,
        build_key=key,
    )
    _write_card(output_dir, manifest, config.hub_repo)
    manifest = json.loads(write_manifest(output_dir, manifest).read_text())
    cache.close()
    _close(generator_backend, verifier_backend)
    result = BuildResult(output_dir, manifest, statistics, reused=False, model_requests=model_requests,
                         seconds=time.monotonic() - t0, loop_seconds=loop_seconds)
    logger.info("wrote %s (%d records, %d verifications) in %.1fs", output_dir,
                statistics["records"], statistics["verifications"], result.seconds)
    return result


@dataclass
class Labelled:
    """One solution on its way to a step record."""

    problem: Problem
    solution: Solution
    verifications: list[Verification]
    aggregate: Aggregate
    critique: Verification | None = None
    merged: Verification | None = None


class Labeller:
    """Aggregation, meta-critique and row building for one build (pure apart from model calls)."""

    def __init__(self, config: BuildConfig, verifier_id: str, generator_id: str):
        self.config = config
        self.verifier_id = verifier_id
        self.generator_id = generator_id
        self.record_is_valid = fast_check("step_record")
        self.verification_is_valid = fast_check("verification")

    def aggregate(self, pairs, verifications) -> list[Labelled]:
        out = []
        for p, s in pairs:
            vs = verifications.get((s.problem_id, s.index), [])
            out.append(Labelled(p, s, vs, aggregate(vs, len(s.steps), self.config.aggregation)))
        return out

    def meta_critique(self, labelled: list[Labelled], verifier: CachedBackend, bar: StageProgress,
                      stats: LabelStats) -> list[Labelled]:
        """Critique, then merge, the selected verification of every labelled solution (T=0, n=1)."""
        agg_cfg = self.config.aggregation
        sampling = {"n": 1, "temperature": agg_cfg.critique_temperature, "top_p": 1.0,
                    "max_tokens": agg_cfg.critique_max_tokens}
        todo = [item for item in labelled if item.aggregate.status == "ok" and item.aggregate.selected is not None]
        for task in ("critique", "merge"):  # unlabelled solutions have nothing to critique
            bar.advance(task, len(labelled) - len(todo))

        base_texts = [item.verifications[item.aggregate.selected].text for item in todo]
        requests = [GenerationRequest.from_chat(
            critique_messages(item.problem.problem, item.solution.steps, item.solution.final_answer, text),
            seed=self.config.seed, **sampling) for item, text in zip(todo, base_texts)]
        critiques = verifier.generate(requests, on_batch=bar.on_batch("critique"))
        requests = [GenerationRequest.from_chat(
            merge_messages(item.problem.problem, item.solution.steps, item.solution.final_answer, text,
                           strip_think(out[0].text)),
            seed=self.config.seed, **sampling) for item, text, out in zip(todo, base_texts, critiques)]
        merges = verifier.generate(requests, on_batch=bar.on_batch("merge"))
        for item, crit, merged in zip(todo, critiques, merges):
            stats.tokens["meta"] = stats.tokens.get("meta", 0) + crit[0].completion_tokens + merged[0].completion_tokens
            item.critique = _unparsed(item.solution, crit[0], self.verifier_id)
            item.merged = parse_verifications(item.solution, merged, self.verifier_id, kind="merged")[0]
            item.aggregate = apply_merged(item.aggregate, item.merged, len(item.solution.steps))
        return labelled

    def rows(self, labelled: list[Labelled]) -> tuple[list[dict], list[dict]]:
        """Validated step-record rows and verification rows (samples, critiques, merges)."""
        config = self.config
        record_rows, verification_rows = [], []
        for item in labelled:
            p, s, agg = item.problem, item.solution, item.aggregate
            if item.merged is not None and agg.status == "ok":
                cot_text, cot_id = item.merged.text, item.merged.id
            elif agg.selected is not None and agg.status == "ok":
                cot_text, cot_id = item.verifications[agg.selected].text, item.verifications[agg.selected].id
            else:
                cot_text = cot_id = None
            record = StepRecord(
                problem_id=p.id, problem=p.problem, reference=p.reference,
                solution_index=s.index, solution=s.text, steps=s.steps,
                final_answer=s.final_answer, solution_status=s.status,
                generator=self.generator_id, verifier=self.verifier_id, method=config.aggregation.method,
                labels=agg.labels, final_label=agg.final_label,
                votes_correct=agg.votes_correct, votes_incorrect=agg.votes_incorrect,
                agreement=agg.agreement, final_votes_yes=agg.final_votes_yes,
                final_votes_no=agg.final_votes_no, n_verifications=len(item.verifications),
                n_parsed=agg.n_parsed, status=agg.status, cot_target=cot_text,
                cot_verification_index=agg.selected if cot_text is not None else None,
                cot_verification_id=cot_id, cot_exact_match=agg.exact_match if cot_text is not None else None,
            )
            row = record.to_dict()
            if not self.record_is_valid(row):
                _raise_invalid("step_record", row)
            record_rows.append(row)
            for v in [*item.verifications, *(x for x in (item.critique, item.merged) if x is not None)]:
                vrow = v.to_dict()
                if not self.verification_is_valid(vrow):
                    _raise_invalid("verification", vrow)
                verification_rows.append(vrow)
        return record_rows, verification_rows


def _unparsed(solution: Solution, completion, verifier_id: str) -> Verification:
    """A critique: kept verbatim, not parsed into verdicts."""
    return Verification(
        problem_id=solution.problem_id, solution_index=solution.index, index=0, verifier=verifier_id,
        raw_text=completion.text, text=strip_think(completion.text), step_verdicts=[], final_verdict=None,
        parse_status="not_parsed", expected_steps=len(solution.steps), finish_reason=completion.finish_reason,
        completion_tokens=completion.completion_tokens, kind="critique",
    )


def balance_rows(rows: list[dict[str, Any]], config: BuildConfig) -> list[dict[str, Any]]:
    """Apply per-problem balancing to the step records of whole problems (a chunk)."""
    by_problem: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_problem.setdefault(row["problem_id"], []).append(row)
    kept = []
    for group in by_problem.values():
        kept.extend(balance_problem(group, config.balance, config.seed))
    return kept


def _close(*backends) -> None:
    """Close each distinct backend once (roles may share one)."""
    for backend in {id(b): b for b in backends if b is not None}.values():
        backend.close()


def _write_card(output_dir: Path, manifest: dict[str, Any], repo_id: str | None = None) -> None:
    from spark_hub.cards import AGREEMENT_PLOT_NAME, render_dataset_card, write_agreement_plot

    plot = output_dir / AGREEMENT_PLOT_NAME
    if plot.exists():
        plot.unlink()
    written = write_agreement_plot(manifest.get("statistics", {}), plot)
    card = render_dataset_card(manifest, repo_id=repo_id, agreement_plot=AGREEMENT_PLOT_NAME if written else None)
    atomic_write_text(output_dir / "README.md", card)


def _raise_invalid(schema_name: str, row: dict[str, Any]) -> None:
    """A record we built does not match its schema: that is a spark-hub bug, with the path."""
    from spark_hub.schema import iter_errors

    path, message = next(iter_errors(schema_name, row), ("$", "invalid"))
    raise RuntimeError(f"internal error: {schema_name} {row.get('id')}: {path}: {message}")
