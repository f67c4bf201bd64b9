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
from spark_hub.backends.base import load_backend
from spark_hub.cache import CachedBackend, CallCache
from spark_hub.config import BuildConfig, dump_yaml
from spark_hub.errors import SparkHubError
from spark_hub.inputs import load_problems, load_solutions
from spark_hub.io import atomic_write_text, sha256_file
from spark_hub.manifest import MANIFEST_NAME, new_manifest, write_manifest
from spark_hub.progress import StageProgress
from spark_hub.prompts import template_hash
from spark_hub.records import Problem, Solution, StepRecord
from spark_hub.schema import fast_check
from spark_hub.stages.aggregate import aggregate
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

    @staticmethod
    def _bump(d: dict[str, int], key: str) -> None:
        d[key] = d.get(key, 0) + 1

    def add_record(self, record: StepRecord) -> None:
        self.solutions += 1
        self._bump(self.solution_status, record.solution_status)
        self._bump(self.record_status, record.status)
        if record.labels is not None:
            n_ok = sum(record.labels)
            self.steps_correct += n_ok
            self.steps_incorrect += len(record.labels) - n_ok
            if record.final_label:
                self.final_yes += 1
            else:
                self.final_no += 1
            for i, a in enumerate(record.agreement):
                if a is None:
                    continue
                self.agreement_sum += a
                self.agreement_n += 1
                self.unanimous += a == 1.0
                if i < AGREEMENT_STEPS:
                    self.by_step_sum[i] += a
                    self.by_step_n[i] += 1
            if record.cot_target is not None:
                self.cot_targets += 1
                self.cot_exact += bool(record.cot_exact_match)

    def add_verification_status(self, status: str) -> None:
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
        "seed": config.seed,
        "prompts": prompt_hashes(),
        "shard_rows": config.shard_rows,
    }
    return hashlib.sha256(json.dumps(semantic, sort_keys=True).encode()).hexdigest()


def prompt_hashes() -> dict[str, str]:
    return {name: template_hash(name) for name in ("generator", "verifier")}


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


def _check_output_dir(output_dir: Path) -> None:
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


def main(config: BuildConfig, *, progress: bool = True) -> BuildResult:
    """Run Stage I end to end (resumable). Returns a `BuildResult`."""
    t0 = time.monotonic()
    if not config.output_dir:
        raise SparkHubError("output_dir is not set", hint="--output-dir DIR")
    output_dir = Path(config.output_dir)
    _check_output_dir(output_dir)

    # ---- inputs (validated before anything is written)
    inputs = load_inputs(config)

    # ---- models (weights load lazily: a finished build never loads them)
    verifier_backend = load_backend(config.verifier.backend_config())
    generator_backend = None if inputs.given is not None else load_backend(config.generator.backend_config())
    fingerprints = {"verifier": verifier_backend.fingerprint()}
    if generator_backend is not None:
        fingerprints["generator"] = generator_backend.fingerprint()
    key = build_key(config, inputs, fingerprints)

    # ---- finished build? then there is nothing to do
    done = finished_build(output_dir, key)
    if done is not None:
        logger.info("%s already holds this build (key %s); nothing to do", output_dir, key[:12])
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
    record_is_valid = fast_check("step_record")
    verification_is_valid = fast_check("verification")
    gen_sampling = config.generator.sampling()
    ver_sampling = config.verifier.sampling()
    problems = inputs.problems
    stats.problems = len(problems)

    with StageProgress(enabled=progress) as bar:
        if generator is not None:
            bar.add("generate", len(problems))
        bar.add("verify", len(problems) * (config.generator.n if generator is not None else 1))
        n_solutions_seen = 0
        for start in range(0, len(problems), config.chunk_size):
            chunk = problems[start : start + config.chunk_size]

            # ---- solutions
            if generator is not None:
                requests = [solution_request(p, gen_sampling, config.seed) for p in chunk]
                outputs = generator.generate(
                    requests,
                    on_batch=lambda rs, outs: bar.advance(
                        "generate", len(rs), sum(c.completion_tokens for o in outs for c in o)),
                )
                solutions = {p.id: parse_solutions(p, out) for p, out in zip(chunk, outputs)}
                stats.tokens["generator"] += sum(c.completion_tokens for o in outputs for c in o)
            else:
                solutions = {p.id: given_solutions(p, inputs.given[p.id]) for p in chunk}
                n_solutions_seen += sum(len(s) for s in solutions.values())
                bar.add("verify", n_solutions_seen + (len(problems) - start - len(chunk)))

            # ---- verifications: one request with n=N per solution that has steps
            pairs: list[tuple[Problem, Solution]] = [
                (p, s) for p in chunk for s in solutions[p.id] if s.steps
            ]
            requests = [verification_request(p, s, ver_sampling, config.seed) for p, s in pairs]
            skipped = sum(1 for p in chunk for s in solutions[p.id] if not s.steps)
            if skipped:
                bar.advance("verify", skipped)
            outputs = verifier.generate(
                requests,
                on_batch=lambda rs, outs: bar.advance(
                    "verify", len(rs), sum(c.completion_tokens for o in outs for c in o)),
            )
            by_solution = {(p.id, s.index): out for (p, s), out in zip(pairs, outputs)}

            # ---- parse, aggregate, validate, write
            record_rows, verification_rows = [], []
            for p in chunk:
                for s in solutions[p.id]:
                    completions = by_solution.get((p.id, s.index), [])
                    verifications = parse_verifications(s, completions, verifier.model_id)
                    stats.tokens["verifier"] += sum(c.completion_tokens for c in completions)
                    agg = aggregate(verifications, len(s.steps), config.aggregation)
                    record = StepRecord(
                        problem_id=p.id, problem=p.problem, reference=p.reference,
                        solution_index=s.index, solution=s.text, steps=s.steps,
                        final_answer=s.final_answer, solution_status=s.status,
                        generator=generator.model_id if generator is not None else "given",
                        verifier=verifier.model_id, method=config.aggregation.method,
                        labels=agg.labels, final_label=agg.final_label,
                        votes_correct=agg.votes_correct, votes_incorrect=agg.votes_incorrect,
                        agreement=agg.agreement, final_votes_yes=agg.final_votes_yes,
                        final_votes_no=agg.final_votes_no, n_verifications=len(verifications),
                        n_parsed=agg.n_parsed, status=agg.status,
                        cot_target=verifications[agg.selected].text if agg.selected is not None else None,
                        cot_verification_index=agg.selected, cot_exact_match=agg.exact_match,
                    )
                    row = record.to_dict()
                    if not record_is_valid(row):
                        _raise_invalid("step_record", row)
                    record_rows.append(row)
                    stats.add_record(record)
                    for v in verifications:
                        vrow = v.to_dict()
                        if not verification_is_valid(vrow):
                            _raise_invalid("verification", vrow)
                        verification_rows.append(vrow)
                        stats.add_verification_status(v.parse_status)
            records_out.write(record_rows)
            verifs_out.write(verification_rows)

    statistics = stats.to_dict()
    model_requests = {"generator": generator.model_requests if generator else 0,
                      "verifier": verifier.model_requests}
    statistics["model_requests"] = model_requests
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
        prompts=prompt_hashes(),
        seeds={"sampling": config.seed},
        inputs=inputs.provenance,
        statistics=statistics,
        uses_references=False,
        build_key=key,
    )
    _write_card(output_dir, manifest)
    manifest = json.loads(write_manifest(output_dir, manifest).read_text())
    cache.close()
    for backend in (generator_backend, verifier_backend):
        if backend is not None:
            backend.close()
    result = BuildResult(output_dir, manifest, statistics, reused=False,
                         model_requests=model_requests, seconds=time.monotonic() - t0)
    logger.info("wrote %s (%d records, %d verifications) in %.1fs", output_dir,
                statistics["records"], statistics["verifications"], result.seconds)
    return result


def _write_card(output_dir: Path, manifest: dict[str, Any]) -> None:
    from spark_hub.cards import render_dataset_card, write_agreement_plot

    stats = manifest.get("statistics", {})
    if stats.get("agreement_by_step"):
        write_agreement_plot(stats, output_dir / "agreement.png")
    atomic_write_text(output_dir / "README.md", render_dataset_card(manifest))


def _raise_invalid(schema_name: str, row: dict[str, Any]) -> None:
    """A record we built does not match its schema: that is a spark-hub bug, with the path."""
    from spark_hub.schema import iter_errors

    path, message = next(iter_errors(schema_name, row), ("$", "invalid"))
    raise RuntimeError(f"internal error: {schema_name} {row.get('id')}: {path}: {message}")
