"""Stage I: ``spark-hub build-dataset``.

problems -> M solutions per problem -> N verifications per solution (one request, n=N) -> parse
-> aggregate -> step records + raw verifications (Parquet) -> config, card, manifest.

Every model call goes through the cache (`spark_hub.cache`), so a killed run resumes where it
stopped and a finished build re-runs with zero model calls. Output files are staged under
``.spark/`` and moved into place at the end, the manifest last: a folder whose manifest matches
the current build key, and whose files all have the sha256 the manifest records, is complete; any
other folder is rebuilt from the call cache (saying which file differed).

Integrity rules: inputs, references and model folders are checked before anything is written; one
build at a time writes an output folder and a call cache (`spark_hub.io.BuildLock`; a second one
fails at once naming the first one's pid); temp files a killed writer left are removed at start; a
build that fails before caching any model call leaves no ``.spark/`` behind. The build key hashes
input contents, not their paths (the path is recorded in the manifest).

Stage modules: `generate`, `verify`, `critique` (meta-critique calls), `aggregate`, `balance`,
`contamination`, `stats` (the statistics and the labelling warning); inputs come from
`spark_hub.inputs`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spark_hub import __version__
from spark_hub.backends.base import load_backend
from spark_hub.cache import CachedBackend, CallCache
from spark_hub.config import BuildConfig, dump_yaml
from spark_hub.errors import SparkHubError
from spark_hub.inputs import HUB_ID_RE, Inputs, load_inputs  # noqa: F401 (re-exported for older imports)
from spark_hub.io import BuildLock, atomic_write_text, clean_stale_temps, is_temp_name, sha256_file
from spark_hub.manifest import MANIFEST_NAME, new_manifest, write_manifest
from spark_hub.prompts import template_hash
from spark_hub.records import Problem, Solution, StepRecord, Verification
from spark_hub.stages.aggregate import META_METHODS, Aggregate, aggregate
from spark_hub.stages.balance import balance_problem
from spark_hub.stages.stats import AGREEMENT_STEPS, LabelStats, labelling_warning  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from spark_hub.progress import StageProgress

logger = logging.getLogger(__name__)

# The chunk loop's modules (progress bars, verification, critique, generation, storage) are imported
# by `_build` once the finished-build check has failed: a re-run of a finished build only hashes
# its inputs and files. Their names stay importable from here (`__getattr__`).
_LOOP_IMPORTS = {
    "StageProgress": "spark_hub.progress",
    "critique_verification": "spark_hub.stages.critique", "meta_critique": "spark_hub.stages.critique",
    "given_solutions": "spark_hub.stages.generate", "parse_solutions": "spark_hub.stages.generate",
    "solution_request": "spark_hub.stages.generate",
    "parse_verifications": "spark_hub.stages.verify", "verification_request": "spark_hub.stages.verify",
    "ShardWriter": "spark_hub.storage", "finalize_shards": "spark_hub.storage",
}


def __getattr__(name: str) -> Any:
    if name == "_unparsed":  # the critique row (moved to stages/critique.py)
        name = "critique_verification"
    if name in _LOOP_IMPORTS:
        import importlib

        return getattr(importlib.import_module(_LOOP_IMPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")



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


# ----------------------------------------------------------------------------- build key


def _input_identity(provenance: dict[str, Any]) -> dict[str, Any]:
    """What identifies an input in the build key: its content hash, or its Hub source and commit.

    A local file is keyed by content only, so the same file reached by another path (another
    working directory, a copy) is the same build; the path is recorded in the manifest, not keyed.
    """
    if provenance.get("sha256"):
        return {"sha256": provenance["sha256"]}
    return {"source": provenance.get("source"), "revision": provenance.get("revision")}


def build_key(config: BuildConfig, inputs: Inputs, fingerprints: dict[str, str]) -> str:
    """Hash of everything that determines the output; engine settings and paths are left out."""
    contamination = dataclasses.asdict(config.contamination)
    contamination["benchmarks"] = [sha256_file(b) if Path(b).is_file() else b for b in config.contamination.benchmarks]
    semantic = {
        "spark_hub": __version__,
        "inputs": {k: _input_identity(v) for k, v in inputs.provenance.items()},
        "fields": [config.problem_field, config.answer_field, config.id_field, config.limit,
                   config.problems_split if not Path(config.problems or "").exists() else None],
        "models": fingerprints,
        "generator": config.generator.sampling() if not config.solutions else None,
        "verifier": config.verifier.sampling(),
        "aggregation": dataclasses.asdict(config.aggregation),
        "balance": dataclasses.asdict(config.balance),
        "contamination": contamination,
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
    """The manifest of a complete, intact build with this key in ``output_dir``, else None.

    Intact means every file of the manifest's file table has its recorded sha256. A build with this
    key whose files differ is logged (naming the file) and treated as unfinished: the outputs are
    rebuilt from the call cache.
    """
    path = output_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        logger.warning("%s is not readable JSON; rebuilding the outputs from the call cache", path)
        return None
    if not isinstance(manifest, dict) or manifest.get("build_key") != key:
        return None
    problem = changed_files(output_dir, manifest)
    if problem is not None:
        logger.warning("%s holds this build but %s; rebuilding the outputs from the call cache "
                       "(cached model calls are not repeated)", output_dir, problem)
        return None
    return manifest


def changed_files(output_dir: Path, manifest: dict[str, Any]) -> str | None:
    """Why the files in ``output_dir`` do not match ``manifest["files"]`` (the first difference), or None."""
    from spark_hub.manifest import LOCAL_STATE_DIRS

    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "the manifest has no file table"
    for rel, info in files.items():
        f = output_dir / rel
        if not f.is_file():
            return f"{rel} is missing"
        if not isinstance(info, dict) or f.stat().st_size != info.get("size"):
            return f"{rel} has another size than the manifest records"
        if sha256_file(f) != info.get("sha256"):
            return f"{rel} has another sha256 than the manifest records"
    for sub in ("data", "verifications"):  # a shard the manifest does not list would be loaded too
        for f in sorted((output_dir / sub).rglob("*")) if (output_dir / sub).is_dir() else []:
            rel = f.relative_to(output_dir).as_posix()
            if f.is_file() and rel not in files and not is_temp_name(f.name) and rel.split("/")[0] not in LOCAL_STATE_DIRS:
                return f"{rel} is not in the manifest"
    return None


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
    # per-request settings (they travel in each request) do not make another engine either
    for knob in ("batch_size", "max_concurrency", "max_retries", "timeout", "constrained", "logprobs"):
        d.pop(knob, None)
    return d


def _load_role(role: str, role_config) -> Any:
    """`load_backend` for one role; a user error names the role."""
    try:
        return load_backend(role_config.backend_config())
    except SparkHubError as e:
        if e.message.startswith(f"{role}"):
            raise
        raise SparkHubError(f"{role}: {e.message}", where=e.where, hint=e.hint) from None


def load_backends(config: BuildConfig, *, need_generator: bool):
    """The verifier backend and, when needed, the generator backend (one instance if identical)."""
    verifier = _load_role("verifier", config.verifier)
    generator = None
    if need_generator:
        same = _engine_free(config.generator) == _engine_free(config.verifier)
        generator = verifier if same else _load_role("generator", config.generator)
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


_MODEL_JSON_FILES = ("config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json")


def check_models(config: BuildConfig, *, need_generator: bool) -> None:
    """What can be checked about the models without loading them, before anything is written.

    For a local model folder: its config, generation config and tokenizer config parse as JSON
    objects, and ``config.json`` names a ``model_type``; a ``.gguf`` file starts with the GGUF magic.
    Errors name the role, the file and line.
    """
    roles = [("verifier", config.verifier)] + ([("generator", config.generator)] if need_generator else [])
    for role, role_config in roles:
        folder = Path(role_config.model).expanduser()
        if folder.suffix == ".gguf" and folder.is_file():
            with open(folder, "rb") as f:
                magic = f.read(4)
            if magic != b"GGUF":
                raise SparkHubError(f"{role} model: {folder.name} is not a GGUF file (it starts with {magic!r}, not b'GGUF')",
                                    where=str(folder), hint="pass the .gguf file itself, not a partial download")
            continue
        if not folder.is_dir():
            continue
        for name in _MODEL_JSON_FILES:
            path = folder / name
            if not path.is_file():
                continue
            try:
                value = json.loads(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError as e:
                raise SparkHubError(f"{role} model: {name} is not UTF-8 text (byte offset {e.start})",
                                    where=str(path)) from None
            except json.JSONDecodeError as e:
                raise SparkHubError(f"{role} model: {name} is not valid JSON ({e.msg})",
                                    where=f"{path}:{e.lineno}:{e.colno}",
                                    hint="restore the file, e.g. save_pretrained the model again") from None
            except OSError as e:
                raise SparkHubError(f"{role} model: cannot read {name} ({e.strerror})", where=str(path)) from None
            if not isinstance(value, dict):
                raise SparkHubError(f"{role} model: {name} must hold a JSON object, got {type(value).__name__}",
                                    where=str(path))
            if name == "config.json" and not value.get("model_type"):
                raise SparkHubError(f"{role} model: config.json has no 'model_type'", where=str(path),
                                    hint="a folder written by save_pretrained has one")


def cache_path(config: BuildConfig) -> Path:
    """The call cache of a build: ``cache`` when set (may be shared), else ``OUTPUT/.spark/cache.sqlite``."""
    return Path(config.cache) if config.cache else Path(config.output_dir) / ".spark" / "cache.sqlite"


def main(config: BuildConfig, *, progress: bool = True) -> BuildResult:
    """Run Stage I end to end (resumable). Returns a `BuildResult`.

    Everything that can be checked (inputs, references, model folders) is checked before anything
    is written. The build then holds an exclusive lock on its output folder and on its call cache
    (`spark_hub.io.BuildLock`): a second build on either fails at once, naming the first one's pid.
    """
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
    check_models(config, need_generator=inputs.given is None)
    generator_backend, verifier_backend = load_backends(config, need_generator=inputs.given is None)
    try:
        fingerprints = {"verifier": verifier_backend.fingerprint()}
        if generator_backend is not None:
            fingerprints["generator"] = generator_backend.fingerprint()
        key = build_key(config, inputs, fingerprints)

        # ---- from here on this build writes: one writer per output folder and per cache
        cache_file = cache_path(config)
        spark_dir = output_dir / ".spark"
        created = [p for p in (output_dir, spark_dir) if not p.exists()]
        with BuildLock(spark_dir / "build.lock", output_dir), \
                BuildLock(cache_file.with_name(cache_file.name + ".lock"), cache_file):
            clean_stale_temps(output_dir)
            try:
                with contextlib.ExitStack() as stack:
                    return _build(config, inputs, contamination, key, generator_backend, verifier_backend,
                                  progress=progress, t0=t0, stack=stack)
            except BaseException:
                _remove_if_untouched(created, spark_dir, cache_file)
                raise
    finally:
        _close(generator_backend, verifier_backend)


def _remove_if_untouched(created: list[Path], spark_dir: Path, cache_file: Path) -> None:
    """After a failed build: remove the ``.spark`` folder (and the output folder) this run created
    when nothing worth keeping is in it (no cached model call, no staged rows)."""
    if spark_dir not in created:
        return
    own = {"build.lock", cache_file.name, f"{cache_file.name}-wal", f"{cache_file.name}-shm",
           f"{cache_file.name}-journal", f"{cache_file.name}.lock"}
    if any(p.is_file() and not (p.parent == spark_dir and p.name in own) for p in spark_dir.rglob("*")):
        return
    if cache_file.parent == spark_dir and cache_file.exists():
        try:
            with contextlib.closing(sqlite3.connect(f"file:{cache_file}?mode=ro", uri=True)) as db:
                if db.execute("SELECT COUNT(*) FROM calls").fetchone()[0]:
                    return
        except sqlite3.Error:
            return
    shutil.rmtree(spark_dir, ignore_errors=True)
    if spark_dir.parent in created:
        with contextlib.suppress(OSError):
            spark_dir.parent.rmdir()


def _build(config: BuildConfig, inputs: Inputs, contamination: dict[str, Any] | None, key: str,
           generator_backend, verifier_backend, *, progress: bool, t0: float,
           stack: contextlib.ExitStack) -> BuildResult:
    """The build proper, under the locks taken by `main` (``stack`` closes the cache)."""
    output_dir = Path(config.output_dir)
    method = config.aggregation.method

    # ---- finished build? then there is nothing to do
    done = finished_build(output_dir, key)
    if done is not None:
        logger.info("%s already holds this build (key %s); nothing to do", output_dir, key[:12])
        for warning in (done.get("statistics") or {}).get("warnings") or []:
            logger.warning("%s: %s", output_dir, warning)
        return BuildResult(output_dir, done, done.get("statistics", {}), reused=True,
                           model_requests={"generator": 0, "verifier": 0}, seconds=time.monotonic() - t0)

    from spark_hub.progress import StageProgress
    from spark_hub.stages.generate import given_solutions, parse_solutions, solution_request
    from spark_hub.stages.verify import parse_verifications, verification_request
    from spark_hub.storage import ShardWriter, finalize_shards

    # ---- resume from the call cache
    cache = stack.enter_context(contextlib.closing(CallCache(cache_path(config))))
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

    stack.enter_context(_bulk_gc())
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
                                             with_reference=method == "reference_guided",
                                             constrained=bool(getattr(config.verifier, "constrained", False)))
                        for p, s in with_steps]
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
            record_rows, verification_records = labeller.rows(labelled)
            if config.balance.enabled:
                record_rows = balance_rows(record_rows, config)
            for row in record_rows:
                stats.add_record_row(row)
            for v in verification_records:
                stats.add_verification_status(v.parse_status, v.kind)
            records_out.write(record_rows)
            verifs_out.write_records(verification_records)

    loop_seconds = time.monotonic() - loop_started
    statistics = stats.to_dict()
    statistics["problems_dropped_unbalanced"] = stats.problems - len(stats.kept_problems) if config.balance.enabled else 0
    model_requests = {"generator": generator.model_requests if generator else 0,
                      "verifier": verifier.model_requests}
    statistics["model_requests"] = model_requests
    statistics["model_seconds"] = {"generator": round(generator.model_seconds, 3) if generator else 0.0,
                                   "verifier": round(verifier.model_seconds, 3)}
    statistics["cache_hits"] = (generator.hits if generator else 0) + verifier.hits
    statistics["inputs"] = {"duplicate_solution_rows_dropped": getattr(inputs, "duplicates_dropped", 0)}
    statistics["invalid_unicode_completions"] = (generator.invalid_unicode if generator else 0) + verifier.invalid_unicode
    if statistics["invalid_unicode_completions"]:
        logger.warning("%d completion(s) held invalid Unicode (lone surrogates); stored verbatim in the call cache, "
                       "replaced by U+FFFD in the dataset", statistics["invalid_unicode_completions"])
    warning = labelling_warning(statistics, constrained=bool(getattr(config.verifier, "constrained", False)))
    statistics["warnings"] = [warning] if warning else []

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
    result = BuildResult(output_dir, manifest, statistics, reused=False, model_requests=model_requests,
                         seconds=time.monotonic() - t0, loop_seconds=loop_seconds)
    logger.info("wrote %s (%d records, %d verifications) in %.1fs", output_dir,
                statistics["records"], statistics["verifications"], result.seconds)
    if warning:
        logger.warning("%s: %s", output_dir, warning)
    return result


@contextlib.contextmanager
def _bulk_gc(gen0: int = 20_000):
    """Cyclic GC settings for the chunk loop and the finalize, restored on exit.

    Objects alive at the start (imported modules, inputs) are frozen out of the collections, and
    generation 0 is collected every ``gen0`` allocations instead of 700: full collections over the
    imported modules otherwise cost ~10% of a large build. Chunk data is freed by reference
    counting (it holds no cycles), so memory stays flat."""
    threshold = gc.get_threshold()
    froze = gc.get_freeze_count() == 0  # leave a caller's own frozen objects alone
    if froze:
        gc.freeze()
    ours = (max(gen0, threshold[0]), *threshold[1:])
    gc.set_threshold(*ours)
    try:
        yield
    finally:
        if gc.get_threshold() == ours:  # builds in threads may end in any order: the first restores
            gc.set_threshold(*threshold)
        if froze:
            gc.unfreeze()


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

    def aggregate(self, pairs, verifications) -> list[Labelled]:
        out = []
        for p, s in pairs:
            vs = verifications.get((s.problem_id, s.index), [])
            out.append(Labelled(p, s, vs, aggregate(vs, len(s.steps), self.config.aggregation)))
        return out

    def meta_critique(self, labelled: list[Labelled], verifier: CachedBackend, bar: StageProgress,
                      stats: LabelStats) -> list[Labelled]:
        """Critique, then merge, the selected verification of every labelled solution (T=0, n=1)."""
        role = self.config.verifier
        from spark_hub.stages.critique import meta_critique

        tokens = meta_critique(labelled, verifier, self.config.aggregation, self.config.seed,
                               verifier_id=self.verifier_id, bar=bar, constrained=bool(getattr(role, "constrained", False)),
                               logprobs=bool(getattr(role, "logprobs", False)))
        stats.tokens["meta"] = stats.tokens.get("meta", 0) + tokens
        return labelled

    def rows(self, labelled: list[Labelled]) -> tuple[list[dict], list[Verification]]:
        """Validated step-record rows and verification records (samples, critiques, merges).

        The label columns come from the `Aggregate` as they are (`StepRecord.from_labels`); the
        rows are the records' own `to_dict`. Every record is checked against its schema
        (`Record.is_valid`); verifications stay records, written column by column
        (`spark_hub.records.to_table`).
        """
        from spark_hub.parsing import locate_steps

        method = self.config.aggregation.method
        record_rows, verification_rows = [], []
        for item in labelled:
            p, s, agg = item.problem, item.solution, item.aggregate
            cot = None  # the verification whose text is the PRM-CoT target
            if agg.status == "ok":
                cot = item.merged if item.merged is not None else (
                    item.verifications[agg.selected] if agg.selected is not None else None)
            record = StepRecord.from_labels(
                agg, problem_id=p.id, problem=p.problem, reference=p.reference,
                solution_index=s.index, solution=s.text, steps=s.steps,
                step_spans=s.step_spans if s.step_spans is not None else locate_steps(s.text, s.steps),
                final_answer=s.final_answer, solution_status=s.status,
                generator=self.generator_id, verifier=self.verifier_id, method=method,
                n_verifications=len(item.verifications),
                cot_target=cot.text if cot is not None else None,
                cot_verification_index=agg.selected if cot is not None else None,
                cot_verification_id=cot.id if cot is not None else None,
                cot_exact_match=agg.exact_match if cot is not None else None,
            )
            if not record.is_valid():
                _raise_invalid("step_record", record.to_dict())
            record_rows.append(record.to_dict())
            for v in [*item.verifications, *(x for x in (item.critique, item.merged) if x is not None)]:
                if not v.is_valid():
                    _raise_invalid("verification", v.to_dict())
                verification_rows.append(v)
        return record_rows, verification_rows




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
