"""Stage II/III commands: ``spark-hub sft-data`` (SFT pairs from step records), ``spark-hub train
prm`` (a generative PRM with TRL's SFTTrainer), ``spark-hub train grpo`` (a policy with TRL's
GRPOTrainer and a PRM reward), ``spark-hub eval processbench`` (a PRM, a prompted critic or a
predictions file on ProcessBench) and ``spark-hub eval math`` (a policy on six math benchmarks).

The commands only map options onto `spark_hub.train.sft_data`, `spark_hub.train.prm`,
`spark_hub.train.grpo`, `spark_hub.evaluate.processbench` and `spark_hub.evaluate.math`; the work, its checks and its errors are
there. ``train prm`` / ``train grpo`` read ONE recipe for spark-hub's fields, the TRL config
(`trl.SFTConfig` / `trl.GRPOConfig`) and `trl.ModelConfig` with `spark_hub.config.parse_config` (the
same parser as ``python -m spark_hub.train.prm`` / ``.grpo`` under ``accelerate launch``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import click

from spark_hub.cli import options
from spark_hub.cli.app import setup_logging, user_errors
from spark_hub.errors import SparkHubError


def _records_source(dataset: str, revision: str | None, endpoint: str | None) -> tuple[str | Path, dict[str, Any]]:
    """Where to read step records from, and their provenance for the SFT manifest: a local dataset
    folder or file (content hash), or a Hub dataset downloaded and checked through `spark_hub.hub`."""
    path = Path(dataset)
    if path.exists():
        manifest = path / "manifest.json"
        if path.is_dir() and manifest.is_file():
            # the manifest lists the sha256 of every file: its own hash stands for the whole dataset
            digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
            build_key = json.loads(manifest.read_text()).get("build_key")
            return path, {"source": str(path.resolve()), "sha256": digest, "build_key": build_key}
        if path.is_file():
            from spark_hub.io import sha256_file

            return path, {"source": str(path.resolve()), "sha256": sha256_file(path)}
        raise SparkHubError(f"{dataset} has no manifest.json", hint="pass a spark-hub dataset folder, a records file or a Hub id")
    parts = dataset.split("/")
    if len(parts) != 2 or not all(parts) or dataset.startswith((".", "~")):
        raise SparkHubError(f"no such file or folder: {dataset}", hint="pass a spark-hub dataset folder, a records file or a Hub id ORG/NAME")
    from spark_hub import hub

    folder = Path(hub.download(dataset, revision=revision, repo_type="dataset", endpoint=endpoint))
    manifest = json.loads((folder / "manifest.json").read_text())
    return folder, {"source": f"hf://datasets/{dataset}", "revision": revision or "main",
                    "commit": folder.name if len(folder.name) == 40 else None,
                    "sha256": hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest(),
                    "build_key": manifest.get("build_key")}


@click.command("sft-data")
@click.argument("dataset", metavar="DATASET")
@click.option("--variant", type=click.Choice(["orm", "prm", "prm_cot"]), default="prm", show_default=True,
              help="orm: Yes/No target; prm: one Correct/Incorrect line per step, then the final verdict; "
                   "prm_cot: the record's chain-of-thought verification.")
@click.option("--revision", metavar="REV",
              help="With a Hub dataset id: its branch, tag or commit (default main).")
@options.output_dir(required=True, help="Output folder (a Hub-style dataset: data/train.jsonl, data/eval.jsonl, manifest).")
@click.option("--eval-fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Share of PROBLEMS held out for evaluation (no problem is in both splits).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the train/eval split.")
@click.option("--drop-inexact-cot", is_flag=True,
              help="prm_cot: drop records whose CoT target does not match the aggregated labels exactly.")
@options.hub_endpoint()
@options.verbose()
@user_errors
def sft_data(dataset, variant, revision, output_dir, eval_fraction, seed, drop_inexact_cot, hub_endpoint, verbose):
    """Make SFT pairs (conversational prompt/completion) for a generative RM from step records.

    DATASET is a spark-hub dataset folder, a records file, or a Hub dataset id ORG/NAME. Only
    labelled records are used; the statistics say how many were skipped and why. Publish the
    result with `spark-hub push`.
    """
    setup_logging(verbose)
    from spark_hub.records import read_records
    from spark_hub.train.sft_data import make_sft_data, write_sft_dataset

    out = Path(output_dir)
    if out.exists() and any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise SparkHubError(f"output folder {out} is not empty and is not a spark-hub dataset",
                            hint="choose a new --output-dir; spark-hub never overwrites other files")
    where, source = _records_source(dataset, revision, hub_endpoint)
    records = read_records(where)
    data = make_sft_data(records, variant, eval_fraction=eval_fraction, seed=seed,
                         keep_inexact_cot=not drop_inexact_cot)
    write_sft_dataset(out, data, source=source)
    click.echo(f"{variant}: {len(data.train)} train / {len(data.eval)} eval examples from {len(records)} "
               f"records -> {out}")


@click.group("train")
def train_group():
    """Train reward models on Stage I data."""


@train_group.command("prm")
@options.config(required=True, help="YAML recipe: spark-hub's train-prm keys (dataset, variant...), "
                                    "trl.SFTConfig and trl.ModelConfig keys in one flat mapping.")
@options.set_(help="Override a recipe key, e.g. --set learning_rate=1e-5 (repeatable).")
@options.output_dir(help="The PRM folder (overrides the recipe's output_dir).")
@options.hub_push
@options.verbose()
@user_errors
def train_prm(config_path, overrides, output_dir, push, hub_repo, hub_revision, private, overwrite, hub_endpoint,
              verbose):
    """Fine-tune a chat model into a generative PRM (SFT, loss on the completion only).

    Resumable: run the same command again after an interruption; it continues from the last
    checkpoint, and a finished run re-runs as a no-op. Without a GPU, use_cpu is set and bf16 off
    unless the recipe says otherwise. Multi-GPU: accelerate launch -m spark_hub.train.prm --config ...
    """
    setup_logging(verbose)
    from trl import ModelConfig, SFTConfig

    from spark_hub.config import parse_config
    from spark_hub.train import prm as prm_training

    if push and not hub_repo:
        raise SparkHubError("--push needs --hub-repo ORG/NAME")
    args, training, model_args = parse_config((prm_training.PRMTrainArgs, SFTConfig, ModelConfig), config_path,
                                              list(overrides), {"output_dir": output_dir})
    # with --push, every checkpoint also goes to a step-NNNNNN branch in the background while training
    out = prm_training.train_from_config(args, training, model_args, push_checkpoints_to=hub_repo if push else None,
                                         hub_endpoint=hub_endpoint)
    click.echo(f"PRM: {out}", err=True)
    if push:
        from spark_hub import hub

        revision = hub_revision or "main"
        if revision == "auto":
            from spark_hub.manifest import read_manifest

            revision = hub.default_revision(read_manifest(out)["config"])
        pushed = hub.push(out, hub_repo, revision=revision, private=private, overwrite=overwrite, endpoint=hub_endpoint)
        click.echo(pushed.summary() + (f": {pushed.commit_url}" if pushed.commit_url else ""), err=True)


@train_group.command("grpo")
@options.config(required=True, help="YAML recipe: spark-hub's train-grpo keys (problems, reward, prm...), "
                                    "trl.GRPOConfig and trl.ModelConfig keys in one flat mapping.")
@options.set_(help="Override a recipe key, e.g. --set reward=prm_step_augmented (repeatable).")
@options.output_dir(help="The policy folder (overrides the recipe's output_dir).")
@options.hub_push
@options.verbose()
@user_errors
def train_grpo(config_path, overrides, output_dir, push, hub_repo, hub_revision, private, overwrite, hub_endpoint,
               verbose):
    """Stage III: GRPO of a policy rewarded by a PRM (or another reward design), TRL's GRPOTrainer.

    Resumable from the last checkpoint; a finished run re-runs as a no-op. With --push, checkpoints
    go to step-NNNNNN branches while training and the final policy to --hub-revision. Multi-GPU:
    accelerate launch -m spark_hub.train.grpo --config ...
    """
    import os

    setup_logging(verbose)
    from trl import GRPOConfig, ModelConfig

    from spark_hub.config import parse_config
    from spark_hub.train import grpo as grpo_training

    # the publishing flags are recipe keys of GRPOTrainArgs (push, hub_repo, ...): a flag wins over the recipe
    flags = {"output_dir": output_dir, "push": push, "hub_repo": hub_repo, "hub_revision": hub_revision,
             "hub_private": private or None, "hub_overwrite": overwrite or None}
    args, training, model_args = parse_config((grpo_training.GRPOTrainArgs, GRPOConfig, ModelConfig), config_path,
                                              list(overrides), flags,
                                              flag_names={"hub_private": "--private", "hub_overwrite": "--overwrite"})
    previous = os.environ.get("HF_ENDPOINT")
    if hub_endpoint:  # the PRM download and the pushes read it at call time
        os.environ["HF_ENDPOINT"] = hub_endpoint
    try:
        out = grpo_training.train_grpo(args, training, model_args)
    finally:
        if hub_endpoint:
            if previous is None:
                os.environ.pop("HF_ENDPOINT", None)
            else:
                os.environ["HF_ENDPOINT"] = previous
    click.echo(f"policy: {out}", err=True)


@click.group("eval")
def eval_group():
    """Evaluate PRMs and critics."""


class _DropTableLog(logging.Filter):
    """The evaluation modules log their results table at INFO; the command prints it on stdout, once."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


@contextlib.contextmanager
def _table_printed_once(logger_name: str, prefix: str):
    log, drop = logging.getLogger(logger_name), _DropTableLog(prefix)
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


def _split_list(ctx, param, values):
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    return names or None


@eval_group.command("processbench")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False), required=True,
              help="Folder of ProcessBench split files (<split>.jsonl with id, problem, steps, label).")
@click.option("--prm", metavar="PATH_OR_REPO", help="A PRM folder or Hub repo (spark_hub.load_prm).")
@click.option("--critic", metavar="MODEL", help="A chat model prompted with the official critic template.")
@click.option("--predictions", type=click.Path(exists=True, dir_okay=False),
              help="A JSONL file of {\"id\", \"prediction\"} rows made anywhere.")
@click.option("--prm-revision", "revision", metavar="REV", help="With --prm ORG/NAME: its branch, tag or commit.")
@click.option("--critic-backend", default="transformers", show_default=True,
              help="Backend for --critic: transformers, vllm, openai (see build-dataset's roles).")
@click.option("--base-url", metavar="URL", help="openai backend: the server URL.")
@click.option("--voting", type=click.IntRange(min=1), default=1, show_default=True,
              help="--critic: majority over K samples (1 = greedy).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=8192, show_default=True, help="--critic: tokens per answer.")
@click.option("--seed", type=int, default=42, show_default=True, help="--critic: sampling seed.")
@click.option("--splits", multiple=True, callback=_split_list, metavar="NAMES",
              help="Splits to run, e.g. --splits gsm8k,math (default: every split in --data).")
@options.limit(help="Use only the first N cases of each split.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Cases per engine call.")
@click.option("--output", type=click.Path(dir_okay=False), help="Results JSON (and a bar chart next to it, .png).")
@click.option("--cache", type=click.Path(dir_okay=False),
              help="--critic: call cache to resume from (default: OUTPUT with .cache.sqlite, if --output).")
@options.hub_endpoint()
@click.option("--no-progress", is_flag=True, help="No live progress display.")
@options.verbose()
@user_errors
def processbench(data_dir, prm, critic, predictions, revision, critic_backend, base_url, voting, max_tokens, seed,
                 splits, limit, batch_size, output, cache, hub_endpoint, no_progress, verbose):
    """ProcessBench: find the earliest wrong step; F1 per split (official metric) and their mean.

    Give exactly one scorer: --prm, --critic or --predictions. With --prm a local PRM folder, the
    results are also recorded in its manifest (and so in its card's model-index on the next push).
    """
    setup_logging(verbose)
    from spark_hub.evaluate import processbench as pb
    from spark_hub.progress import StageProgress

    given = [name for name, value in (("--prm", prm), ("--critic", critic), ("--predictions", predictions)) if value]
    if len(given) != 1:
        raise SparkHubError("give exactly one of --prm, --critic or --predictions"
                            + (f" (got {', '.join(given)})" if given else ""))
    scorer: dict[str, Any] = {}
    closing = None
    if critic:
        from spark_hub.backends.base import BackendConfig, load_backend

        backend = load_backend(BackendConfig(backend=critic_backend, model=critic, base_url=base_url,
                                             batch_size=batch_size))
        closing = backend
        cache_path = Path(cache) if cache else (Path(output).with_suffix(".cache.sqlite") if output else None)
        if cache_path is not None:
            from spark_hub.cache import CachedBackend, CallCache

            cache_path.parent.mkdir(parents=True, exist_ok=True)
            backend = CachedBackend(backend, CallCache(cache_path), batch_size=batch_size)
        scorer["critic"] = backend
    elif prm:
        local = Path(prm).is_dir()
        if local:
            scorer["prm"] = prm
        else:
            from spark_hub.prm import load_prm

            scorer["prm"] = load_prm(prm, revision=revision, endpoint=hub_endpoint)
    else:
        scorer["predictions"] = predictions

    with StageProgress(enabled=not no_progress and not predictions) as bar:
        progress = bar.on_count("evaluate")
        try:
            with _table_printed_once(pb.__name__, "ProcessBench\n"):
                results = pb.run(data_dir, splits=splits, limit=limit, voting=voting, max_tokens=max_tokens,
                                 seed=seed, batch_size=batch_size, output=output, progress=progress, **scorer)
        finally:
            if closing is not None and hasattr(closing, "close"):
                closing.close()
    click.echo(pb.format_table(results))
    if prm and Path(prm).is_dir():
        pb.record_results(prm, results)
        click.echo(f"recorded in {Path(prm) / 'manifest.json'}", err=True)
    if output:
        click.echo(f"wrote {output}", err=True)


@eval_group.command("math")
@click.option("--model", required=True, metavar="PATH_OR_REPO",
              help="The policy: a folder (e.g. written by `train grpo`), a Hub id, `embedded`, or the served name (openai).")
@click.option("--model-revision", "revision", metavar="REV", help="Hub revision of --model.")
@click.option("--backend", default="transformers", show_default=True,
              help="Backend that runs the policy: transformers, vllm, openai, scripted.")
@click.option("--base-url", metavar="URL", help="openai backend: the server URL.")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False), required=True,
              help="Folder of <benchmark>.jsonl files (id, problem, answer).")
@click.option("--benchmarks", multiple=True, callback=_split_list, metavar="NAMES",
              help="Benchmarks to run, e.g. --benchmarks math500,aime24 (default: all in --data).")
@options.limit(help="Use only the first N problems of each benchmark.")
@click.option("--k", type=click.IntRange(min=1), default=1, show_default=True,
              help="Samples per problem; pass@1 is averaged over them (1 = greedy).")
@click.option("--temperature", type=click.FloatRange(min=0), help="Sampling temperature (default: 0 for k=1).")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), help="Nucleus sampling threshold.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=2048, show_default=True, help="Tokens per answer.")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              help="Seconds math-verify may take per answer (a timeout counts as wrong).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Requests per engine call.")
@options.output_dir(required=True, help="Results folder: math_results.json, math_results.png and the call cache "
                                         "(.spark/cache.sqlite: run the same command again to resume).")
@click.option("--no-progress", is_flag=True, help="No live progress display.")
@options.verbose()
@user_errors
def math(model, revision, backend, base_url, data_dir, benchmarks, limit, k, temperature, top_p, max_tokens, seed,
         timeout, batch_size, output_dir, no_progress, verbose):
    """Accuracy of a policy on the math benchmarks (MATH500, AIME24/25, AMC23, OlympiadBench, Minerva).

    The policy answers in its RL format; boxed answers are graded by math-verify; pass@1 over --k
    samples. With --model a local policy folder, the results are also recorded in its manifest (and
    so in its card's model-index on the next push).
    """
    setup_logging(verbose)
    from spark_hub.evaluate import math as math_eval
    from spark_hub.progress import StageProgress

    out = Path(output_dir)
    math_eval.load_math_benchmarks(data_dir, benchmarks, limit=limit)  # bad data fails before anything is written
    settings = {"revision": revision} if revision else {}
    if base_url:
        settings["base_url"] = base_url
    (out / ".spark").mkdir(parents=True, exist_ok=True)
    engine = math_eval.open_backend(model, backend=backend, cache=out / ".spark" / "cache.sqlite",
                                    batch_size=batch_size, **settings)
    with StageProgress(enabled=not no_progress) as bar:
        progress = bar.on_count("evaluate")
        try:
            with _table_printed_once(math_eval.__name__, "math benchmarks\n"):
                results = math_eval.run(data_dir, backend=engine, benchmarks=benchmarks, limit=limit, k=k,
                                        temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed,
                                        timeout=timeout, output=out / "math_results.json", progress=progress)
        finally:
            close = getattr(getattr(engine, "backend", engine), "close", None)
            if close is not None:
                close()
    click.echo(math_eval.format_table(results))
    policy = Path(model)
    if policy.is_dir() and (policy / "manifest.json").is_file():
        from spark_hub.manifest import read_manifest

        if read_manifest(policy).get("kind") == "policy":
            math_eval.record_results(policy, results)
            click.echo(f"recorded in {policy / 'manifest.json'}", err=True)
    click.echo(f"wrote {out / 'math_results.json'}", err=True)
