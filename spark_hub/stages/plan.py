"""``--dry-run`` and ``--pilot K``: see the cost and the label quality before spending a GPU-day.

- `dry_run` counts problems, solutions, verification samples and critique/merge calls, counts the
  prompt tokens with the real tokenizer (falling back to chars/4, and saying so, when the tokenizer
  is not available offline), estimates completion tokens from a pilot if one exists (else from
  ``max_tokens``, an upper bound) and turns them into GPU-hours at a throughput the user gives or the
  pilot measured. No model is called and nothing is written.
- `pilot` runs the first K problems for real into ``OUTPUT/.spark/pilot`` with the same call cache
  as the full build (so the full run reuses every pilot call) and reports verifier agreement, parse
  failures and, when problems carry references, how often the majority verdict agrees with
  math-verify. Its measurements are saved for later dry runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path
from typing import Any

from spark_hub.config import BuildConfig, RoleConfig
from spark_hub.errors import SparkHubError
from spark_hub.io import atomic_write_json
from spark_hub.prompts import critique_messages, generator_messages, merge_messages, verifier_messages
from spark_hub.stages.aggregate import META_METHODS

logger = logging.getLogger(__name__)

PILOT_DIR = Path(".spark") / "pilot"
PILOT_REPORT = Path(".spark") / "pilot.json"
PER_PROBLEMS = 1000  # the unit of the plan when the problem count is unknown


# ----------------------------------------------------------------------------- token counting


class TokenCounter:
    """Counts chat prompt tokens with the role's real tokenizer when it can be loaded offline."""

    def __init__(self, role: RoleConfig):
        self.tokenizer = None
        self.source = "chars/4 estimate"
        if role.backend == "scripted":
            self.source = "whitespace words (scripted backend)"
            self._words = True
            return
        self._words = False
        try:
            self.tokenizer = _load_tokenizer(role)
            self.source = "tokenizer"
        except Exception as e:  # offline and not in the HF cache, unknown format...
            logger.warning("tokenizer of %s not available offline (%s); estimating tokens as chars/4",
                           role.model, str(e).splitlines()[0][:120])

    def count(self, messages: list[dict[str, str]]) -> int:
        if self._words:
            return sum(len(m["content"].split()) for m in messages)
        if self.tokenizer is not None:
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "keys"):
                ids = ids["input_ids"]
            return len(ids)
        return math.ceil(sum(len(m["content"]) for m in messages) / 4)

    def count_text(self, text: str) -> int:
        if self._words:
            return len(text.split())
        if self.tokenizer is not None:
            return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return math.ceil(len(text) / 4)


class FolderTokenizer:
    """A model folder's fast tokenizer and chat template, without importing transformers.

    Reads ``tokenizer.json`` with `tokenizers` and renders the chat template (``chat_template.jinja``
    or ``tokenizer_config.json``) in a sandboxed jinja2 environment set up as transformers sets it
    up, then encodes without adding special tokens, as ``apply_chat_template`` does. Importing
    transformers (and torch) costs more than the whole dry run otherwise; a folder this cannot read
    (no ``tokenizer.json``, a template using transformers-only extensions) raises, and the caller
    falls back to ``AutoTokenizer``.
    """

    def __init__(self, folder: str | Path):
        import jinja2.ext
        from jinja2.sandbox import ImmutableSandboxedEnvironment
        from tokenizers import Tokenizer

        folder = Path(folder)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        template_file = folder / "chat_template.jinja"
        template = template_file.read_text(encoding="utf-8") if template_file.is_file() else config.get("chat_template")
        if not isinstance(template, str):
            raise ValueError(f"no single chat template in {folder}")

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        self.template = env.from_string(template)
        self.special = {}
        for name in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
            value = config.get(name)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                self.special[name] = value

    def apply_chat_template(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = True,
                            tokenize: bool = True) -> list[int] | str:
        text = self.template.render(messages=messages, add_generation_prompt=add_generation_prompt, **self.special)
        return self.tokenizer.encode(text, add_special_tokens=False).ids if tokenize else text

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids}


def converted_folder(gguf: Path) -> Path | None:
    """The folder a GGUF file was already converted into (`spark_hub.backends.models.convert_gguf`),
    or None when it has not been converted yet. Nothing is converted here."""
    from spark_hub.backends import models

    sha = models.sha256_file(str(gguf))
    stem = gguf.name[: -len(".gguf")]
    if stem.startswith(models.EMBEDDED_NAME):
        stem = models.EMBEDDED_NAME
    folder = Path(models.cache_root()) / "models" / f"{stem}-{sha[:12]}"
    try:
        source = json.loads((folder / models.SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return folder if isinstance(source, dict) and source.get("gguf_sha256") == sha else None


_TOKENIZERS: dict[tuple, Any] = {}
"""Tokenizers loaded by this process, by (model, revision): roles sharing a model load it once."""


def _load_tokenizer(role: RoleConfig):
    key = (role.model, role.revision)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = _read_tokenizer(role)
    return _TOKENIZERS[key]


def _folder_tokenizer(folder: Path, role: RoleConfig):
    """`FolderTokenizer` when it can read ``folder``, else transformers' ``AutoTokenizer``."""
    try:
        return FolderTokenizer(folder)
    except Exception as e:  # no tokenizer.json, template extensions...: the full tokenizer
        logger.debug("reading the tokenizer of %s with transformers (%s)", folder, e)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=role.trust_remote_code)


def _read_tokenizer(role: RoleConfig):
    path = Path(role.model).expanduser()
    if role.model == "embedded" or (path.suffix == ".gguf" and path.is_file()):
        if role.model == "embedded":
            from spark_hub.backends.models import find_embedded_gguf

            path = Path(find_embedded_gguf())
        folder = converted_folder(path)
        if folder is not None:  # the converted folder's tokenizer: no GGUF parsing (tens of seconds)
            return _folder_tokenizer(folder, role)
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if path.is_dir():
        return _folder_tokenizer(path, role)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(role.model, revision=role.revision, local_files_only=True,
                                         trust_remote_code=role.trust_remote_code)


# ----------------------------------------------------------------------------- dry run


def _read_pilot(config: BuildConfig) -> dict[str, Any] | None:
    if not config.output_dir:
        return None
    path = Path(config.output_dir) / PILOT_REPORT
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def dry_run(config: BuildConfig, *, throughput: float | None = None) -> dict[str, Any]:
    """The plan of a build: counts, tokens and GPU-hours, without model calls or writes."""
    from spark_hub.inputs import load_inputs

    method = config.aggregation.method
    problems_known = True
    try:
        inputs = load_inputs(config)
        problems = inputs.problems
        given = inputs.given
    except SparkHubError as e:
        if config.solutions or not config.problems or Path(config.problems).exists():
            raise
        logger.warning("cannot read problems %s here (%s); planning per %d problems", config.problems, e, PER_PROBLEMS)
        problems_known, problems, given = False, [], None
    if problems_known and config.contamination.benchmarks:
        from spark_hub.inputs import Inputs
        from spark_hub.stages.build import apply_contamination

        staged = Inputs(problems, given, {})
        report = apply_contamination(config, staged)
        problems = staged.problems
    else:
        report = None

    pilot = _read_pilot(config)
    gen_counter = TokenCounter(config.generator) if given is None else None
    ver_counter = TokenCounter(config.verifier)
    m, n = config.generator.n, config.verifier.n

    # ---- completion tokens per sample: pilot means when measured, else max_tokens (upper bound)
    def per_sample(role: str, max_tokens: int) -> tuple[float, str]:
        if pilot and pilot.get("mean_completion_tokens", {}).get(role):
            return float(pilot["mean_completion_tokens"][role]), "pilot"
        return float(max_tokens), "max_tokens (upper bound)"

    gen_completion, gen_src = per_sample("generator", config.generator.max_tokens)
    ver_completion, ver_src = per_sample("verifier", config.verifier.max_tokens)
    meta_completion, meta_src = per_sample("meta", config.aggregation.critique_max_tokens)
    with_reference = method == "reference_guided"

    # ---- counts
    if given is not None:
        n_problems = len(problems)
        n_solutions = sum(len(rows) for rows in given.values())
    elif problems_known:
        n_problems, n_solutions = len(problems), len(problems) * m
    else:
        n_problems, n_solutions = PER_PROBLEMS, PER_PROBLEMS * m
    meta = method in META_METHODS

    # ---- prompt tokens with the real tokenizer
    gen_prompt = 0
    ver_prompt = 0
    meta_prompt = 0
    fake_solution = ["x"]  # the template's own tokens; solution tokens are added from estimates

    def meta_tokens(text: str) -> float:
        """Critique + merge prompt tokens for one solution of problem ``text``."""
        return (ver_counter.count(critique_messages(text, fake_solution, None, ""))
                + ver_counter.count(merge_messages(text, fake_solution, None, "", ""))
                + 2 * (gen_completion + ver_completion) + meta_completion)

    # (problem text, reference shown to the verifier, given solutions, how many problems it stands for)
    if problems_known:
        items = [(p.problem, p.reference if with_reference else None,
                  given[p.id] if given is not None else None, 1) for p in problems]
    else:
        items = [("A typical competition math problem statement of moderate length. " * 3, None, None, n_problems)]
    for text, reference, rows, weight in items:
        if gen_counter is not None:
            gen_prompt += weight * gen_counter.count(generator_messages(text))
        if rows is not None:
            ver_prompt += sum(ver_counter.count(verifier_messages(text, r["steps"], r.get("final_answer"), reference))
                              for r in rows)
            solutions = len(rows)
        else:
            base = ver_counter.count(verifier_messages(text, fake_solution, None, reference))
            ver_prompt += weight * m * (base + gen_completion)
            solutions = weight * m
        if meta:
            meta_prompt += solutions * meta_tokens(text)

    calls = {
        "generator_requests": n_problems if given is None else 0,
        "solutions": n_solutions,
        "verification_requests": n_solutions,
        "verification_samples": n_solutions * n,
        "critique_calls": n_solutions if meta else 0,
        "merge_calls": n_solutions if meta else 0,
    }
    completion = {
        "generator": round(n_solutions * gen_completion) if given is None else 0,
        "verifier": round(n_solutions * n * ver_completion),
        "meta": round(2 * n_solutions * meta_completion) if meta else 0,
    }
    prompt = {
        "generator": round(gen_prompt),
        "verifier_prefilled": round(ver_prompt),
        "verifier_without_shared_prefill": round(ver_prompt * n),
        "meta": round(meta_prompt),
    }
    total_completion = sum(completion.values())
    rate, rate_src = (throughput, "--throughput") if throughput else (None, None)
    if rate is None and pilot and pilot.get("throughput_tokens_per_s"):
        rate, rate_src = pilot["throughput_tokens_per_s"], "pilot"
    plan = {
        "problems": n_problems,
        "problems_known": problems_known,
        "limit": config.limit,
        "method": method,
        "uses_references": config.uses_references,
        "m": m if given is None else None,
        "n": n,
        "calls": calls,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "completion_tokens_total": total_completion,
        "estimates": {"generator": gen_src, "verifier": ver_src, "meta": meta_src if meta else None,
                      "prompt_tokens": ver_counter.source},
        "throughput_tokens_per_s": rate,
        "throughput_source": rate_src,
        "gpu_hours": round(total_completion / rate / 3600, 3) if rate else None,
        "contamination": {"matched": report["matched"], "checked": report["checked"]} if report else None,
    }
    return plan


def format_plan(plan: dict[str, Any]) -> str:
    """A human-readable plan (what ``--dry-run`` prints)."""
    unit = "" if plan["problems_known"] else f" (per {PER_PROBLEMS} problems: the problem source is not readable here)"
    lines = [f"spark-hub build-dataset plan{unit}",
             f"  method: {plan['method']}" + ("  [labels or selection use reference answers]" if plan["uses_references"] else "")]
    c = plan["calls"]
    lines += [
        f"  problems:               {plan['problems']:,}",
        f"  solutions:              {c['solutions']:,}" + (f"  (M={plan['m']} per problem)" if plan["m"] else "  (given)"),
        f"  verification requests:  {c['verification_requests']:,}  (n={plan['n']} each, one shared prefill)",
        f"  verification samples:   {c['verification_samples']:,}",
    ]
    if c["critique_calls"]:
        lines.append(f"  critique + merge calls: {c['critique_calls']:,} + {c['merge_calls']:,}")
    p, t, e = plan["prompt_tokens"], plan["completion_tokens"], plan["estimates"]
    lines += [
        f"  prompt tokens ({e['prompt_tokens']}):",
        f"    generator             {p['generator']:,}",
        f"    verifier (prefilled)  {p['verifier_prefilled']:,}   vs {p['verifier_without_shared_prefill']:,} with N separate requests",
    ]
    if p["meta"]:
        lines.append(f"    critique + merge      {p['meta']:,}")
    lines += [
        "  completion tokens:",
        f"    generator             {t['generator']:,}   ({e['generator']})",
        f"    verifier              {t['verifier']:,}   ({e['verifier']})",
    ]
    if t["meta"]:
        lines.append(f"    critique + merge      {t['meta']:,}   ({e['meta']})")
    lines.append(f"    total                 {plan['completion_tokens_total']:,}")
    if plan["gpu_hours"] is not None:
        lines.append(f"  GPU-hours:              {plan['gpu_hours']:,} at {plan['throughput_tokens_per_s']:,.0f} tok/s ({plan['throughput_source']})")
    else:
        lines.append("  GPU-hours:              n/a (pass --throughput TOK/S or run --pilot K first)")
    if plan["contamination"]:
        lines.append(f"  contamination:          {plan['contamination']['matched']} of {plan['contamination']['checked']} problems match a benchmark")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- pilot


def pilot(config: BuildConfig, k: int, *, progress: bool = True) -> dict[str, Any]:
    """Run the first ``k`` problems for real and report label quality (see module docstring)."""
    from spark_hub.grading import answers_match_many
    from spark_hub.stages import build

    if k < 1:
        raise SparkHubError(f"--pilot needs K >= 1, got {k}")
    if not config.output_dir:
        raise SparkHubError("output_dir is not set", hint="--output-dir DIR (the pilot lives in DIR/.spark/pilot)")
    out = Path(config.output_dir)
    build.check_output_dir(out)
    limit = min(k, config.limit) if config.limit else k
    pilot_config = dataclasses.replace(
        config, limit=limit, output_dir=str(out / PILOT_DIR), push=False,
        cache=config.cache or str(out / ".spark" / "cache.sqlite"),
        balance=dataclasses.replace(config.balance, enabled=False),
    )
    result = build.main(pilot_config, progress=progress)
    stats = result.statistics

    # majority verdict vs math-verify, where references exist
    from spark_hub.storage import CONFIGS
    import pyarrow.parquet as pq

    agree = total = 0
    confusion = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    rows = [row for shard in sorted((out / PILOT_DIR / CONFIGS["default"]).glob("*.parquet"))
            for row in pq.read_table(shard, columns=["status", "final_label", "final_answer", "reference"]).to_pylist()
            if row["status"] == "ok" and row["reference"] is not None]
    truths = answers_match_many([(row["final_answer"], row["reference"]) for row in rows])  # one batch
    for row, truth in zip(rows, truths):
        if truth is None:
            continue
        total += 1
        agree += truth == row["final_label"]
        key = ("t" if truth == row["final_label"] else "f") + ("p" if row["final_label"] else "n")
        confusion[key] += 1

    previous = _read_pilot(config) or {}
    tokens = stats.get("completion_tokens", {})
    seconds = sum(stats.get("model_seconds", {}).values())
    samples = {"generator": stats["solutions"] if pilot_config.solutions is None else 0,
               "verifier": stats["verifications"]}
    meta_calls = sum((stats.get("meta_critique") or {}).get("calls", {}).values())
    report = {
        "problems": stats["problems"],
        "solutions": stats["solutions"],
        "verifications": stats["verifications"],
        "parse_failure_rate": stats["parse_failure_rate"],
        "mean_step_agreement": stats["mean_step_agreement"],
        "mean_votes_per_step": stats.get("mean_votes_per_step"),
        "warnings": stats.get("warnings", []),
        "unanimous_step_rate": stats["unanimous_step_rate"],
        "records_labelled": stats["records_labelled"],
        "majority_vs_math_verify": {"compared": total, "agreement": round(agree / total, 4) if total else None,
                                    **confusion},
        "mean_completion_tokens": {
            "generator": round(tokens.get("generator", 0) / samples["generator"], 1) if samples["generator"] else None,
            "verifier": round(tokens.get("verifier", 0) / samples["verifier"], 1) if samples["verifier"] else None,
            "meta": round(tokens.get("meta", 0) / meta_calls, 1) if meta_calls else None,
        },
        "throughput_tokens_per_s": (round(sum(tokens.values()) / seconds, 1) if seconds > 0 and sum(result.model_requests.values())
                                    else previous.get("throughput_tokens_per_s")),
        "pilot_dir": str(out / PILOT_DIR),
    }
    atomic_write_json(out / PILOT_REPORT, report)
    return report


def format_pilot(report: dict[str, Any]) -> str:
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    mv = report["majority_vs_math_verify"]
    lines = [
        f"spark-hub pilot: {report['problems']} problems, {report['solutions']} solutions, {report['verifications']} verifications",
        f"  parse failures:            {pct(report['parse_failure_rate'])}",
        f"  mean per-step agreement:   {pct(report['mean_step_agreement'])}"
        + (f"  ({report['mean_votes_per_step']:g} vote(s) per step)" if report.get("mean_votes_per_step") is not None else ""),
        f"  unanimous steps:           {pct(report['unanimous_step_rate'])}",
        f"  labelled solutions:        {report['records_labelled']}",
    ]
    if mv["compared"]:
        lines.append(f"  majority verdict vs math-verify: {pct(mv['agreement'])} of {mv['compared']} "
                     f"(TP {mv['tp']}, FP {mv['fp']}, TN {mv['tn']}, FN {mv['fn']})")
    else:
        lines.append("  majority verdict vs math-verify: n/a (problems carry no reference answers)")
    if report.get("throughput_tokens_per_s"):
        lines.append(f"  measured throughput:       {report['throughput_tokens_per_s']:,.0f} tok/s")
    lines.append(f"  pilot dataset:             {report['pilot_dir']}")
    lines += [f"  warning: {w}" for w in report.get("warnings") or []]
    return "\n".join(lines)
