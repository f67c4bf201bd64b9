"""Train a generative PRM (SPARK ORM / PRM / PRM-CoT) with TRL's ``SFTTrainer``.

The maintained trainers dropped PRM training (TRL removed its PRMTrainer in 2026), so a generative
PRM is trained the way SPARK does it: supervised fine-tuning of a chat model on conversational
prompt/completion pairs (`spark_hub.train.sft_data`), loss on the completion only (TRL's default for
this format). `train_prm` runs the whole stage, top to bottom:

1. skip if ``output_dir`` already holds a finished run with the same build key (a re-run is a no-op);
2. resolve the base model (``embedded``, a local folder or a Hub id, see `spark_hub.backends.models`);
3. make the SFT data if given step records, and the train/eval datasets;
4. TRL ``SFTConfig`` from our defaults < the caller's ``training_args``; on a machine without CUDA
   ``use_cpu`` is set and bf16 off;
5. train, resuming from the last checkpoint in ``output_dir/.spark/checkpoints`` (a killed run,
   SIGKILL included, continues from there when the same call is made again);
6. save safetensors weights + tokenizer + ``prm_spec.json`` + ``manifest.json`` into ``output_dir``
   (checkpoints live under ``.spark/``, which is local state and never pushed).

LoRA is optional (``peft_config``, or ``use_peft: true`` in a recipe): the adapters are trained and
merged into the base weights at save, so the folder is a plain model that `spark_hub.load_prm`, vLLM
or any ``from_pretrained`` loads without peft. Merging needs the whole model in one process: LoRA
runs single-process, under DDP or ZeRO-2, not ZeRO-3/FSDP (full fine-tuning runs under all four).

Under ``accelerate launch`` the Trainer handles the processes; files are written by the main process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from spark_hub.errors import SparkHubError
from spark_hub.train.checkpoints import CheckpointPusher, last_complete_checkpoint

logger = logging.getLogger(__name__)

CHECKPOINTS = Path(".spark") / "checkpoints"
KEY_FILE = Path(".spark") / "train_key.json"

#: spark-hub's defaults for SFTConfig (the caller's ``training_args`` win).
DEFAULT_TRAINING_ARGS: dict[str, Any] = {
    "num_train_epochs": 1,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "learning_rate": 1e-5,
    "lr_scheduler_type": "cosine",
    "max_length": 4096,  # PRM-CoT targets are long; TRL's 1024 would drop them silently
    "packing": False,
    "save_strategy": "steps",
    "save_steps": 100,
    "save_total_limit": 2,
    "logging_steps": 10,
    "report_to": "none",
    "seed": 0,
    "activation_checkpointing": False,  # TRL turns it on; on CPU and for small models it only costs time
}


#: SFTConfig fields that do not change the trained model (left out of the build key).
_NOT_IN_KEY = {"output_dir", "logging_dir", "hub_token", "report_to", "logging_steps", "save_steps",
               "save_total_limit", "save_strategy", "disable_tqdm", "push_to_hub", "hub_model_id",
               "dataloader_num_workers", "run_name", "eval_steps", "eval_strategy", "logging_strategy"}


def _json_safe(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def build_key(base: Mapping[str, Any], data_hash: str, variant: str, training_args: Mapping[str, Any]) -> str:
    """What determines a trained PRM: base model fingerprint, SFT data, variant, training args."""
    payload = {"base": dict(base), "data": data_hash, "variant": variant,
               "args": {k: _json_safe(v) for k, v in sorted(training_args.items())}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _examples_hash(rows: Sequence[Mapping[str, Any]]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([row["prompt"], row["completion"]], sort_keys=True).encode())
    return digest.hexdigest()


def _datasets(train: Sequence[Mapping[str, Any]], evaluation: Sequence[Mapping[str, Any]]):
    from datasets import Dataset

    def keep(rows):  # TRL needs only these two columns
        return Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])

    return keep(train), (keep(evaluation) if evaluation else None)


def _sft_config(output_dir: Path, overrides: Mapping[str, Any], has_eval: bool):
    import torch
    from trl import SFTConfig

    args: dict[str, Any] = {**DEFAULT_TRAINING_ARGS, **dict(overrides)}
    known = {f.name for f in dataclasses.fields(SFTConfig)}
    unknown = sorted(set(args) - known)
    if unknown:
        raise SparkHubError(f"unknown training argument(s) {', '.join(unknown)}",
                            hint="they must be fields of trl.SFTConfig")
    if "output_dir" in overrides:
        raise SparkHubError("set output_dir through train_prm(output_dir=...), not training_args")
    if not torch.cuda.is_available():
        args.setdefault("use_cpu", True)
        args["bf16"] = False
        args["fp16"] = False
    if has_eval and "eval_strategy" not in overrides:
        args["eval_strategy"] = args.get("save_strategy", "steps")
        args.setdefault("eval_steps", args.get("save_steps"))
    args["output_dir"] = str(output_dir / CHECKPOINTS)
    return SFTConfig(**args)


def train_prm(
    model: str,
    output_dir: str | Path,
    *,
    sft: Any = None,
    records: Iterable[Any] | None = None,
    variant: str | None = None,
    revision: str | None = None,
    training_args: Mapping[str, Any] | None = None,
    eval_fraction: float = 0.1,
    seed: int = 0,
    keep_inexact_cot: bool = True,
    inputs: Mapping[str, Any] | None = None,
    trust_remote_code: bool = False,
    dtype: str | None = None,
    push_checkpoints_to: str | None = None,
    hub_endpoint: str | None = None,
    callbacks: Sequence[Any] = (),
    peft_config: Any = None,
    step_records: Mapping[str, Any] | None = None,
) -> Path:
    """Fine-tune ``model`` into a generative PRM and write it to ``output_dir``.

    Args:
        model: base chat model: ``embedded``, a local folder or a Hub id.
        output_dir: the PRM folder (weights, tokenizer, ``prm_spec.json``, ``manifest.json``).
        sft: a `spark_hub.train.sft_data.SFTData` (its variant is used); or give ``records``.
        records: step records (dicts or `StepRecord`) to make the SFT data from, with ``variant``,
            ``eval_fraction``, ``seed`` and ``keep_inexact_cot``.
        revision: Hub revision of the base model.
        training_args: `trl.SFTConfig` fields over `DEFAULT_TRAINING_ARGS` (``max_steps``,
            ``learning_rate``, ``report_to``...), or a resolved `trl.SFTConfig` used as it is (its
            ``output_dir`` is replaced by the checkpoint folder).
        dtype: weights dtype for training (default: bfloat16 when ``bf16`` is on, else float32).
        push_checkpoints_to: a Hub model repo: every checkpoint is pushed in the background to branch
            ``step-NNNNNN`` (weights, tokenizer, ``prm_spec.json`` and a manifest; no optimizer state)
            with `spark_hub.hub.push_checkpoint_async`; training waits for the pending pushes at the end
            and logs the ones that failed. The final model is pushed by the caller (``hub.push``).
        hub_endpoint: Hub URL for the checkpoint pushes (default ``HF_ENDPOINT``).
        inputs: provenance of the data for the manifest, e.g. ``{"source": "org/steps", "revision": sha}``
            (recorded as ``inputs.sft_data`` beside the sha256 of the examples).
        callbacks: extra `transformers.TrainerCallback` objects.
        step_records: provenance of the Stage I dataset the SFT data was made from (recorded as
            ``inputs.step_records``), e.g. `dataset_provenance`'s ``{"source", "sha256", "build_key"}``.
        peft_config: a `peft.LoraConfig` to train LoRA adapters instead of all weights; they are
            merged into the base model at save (the folder holds full safetensors weights, no
            adapter). Checkpoints hold the adapters only, so they are not pushed to step branches.

    Returns:
        ``output_dir``. A finished run with the same build key returns at once.

    Raises:
        `SparkHubError`: unknown training arguments, no usable examples, or checkpoints in
            ``output_dir`` from a run with different settings.
    """
    from spark_hub.backends.base import BackendConfig
    from spark_hub.backends.models import resolve_model
    from spark_hub.manifest import MANIFEST_NAME
    from spark_hub.train import sft_data as sft_module

    output_dir = Path(output_dir)
    # -- data ---------------------------------------------------------------------------------
    if (sft is None) == (records is None):
        raise SparkHubError("give either sft (SFT data) or records (step records) to train_prm")
    if sft is None:
        sft = sft_module.make_sft_data(records, variant or "prm", eval_fraction=eval_fraction, seed=seed,
                                       keep_inexact_cot=keep_inexact_cot)
    elif variant is not None and variant != sft.variant:
        raise SparkHubError(f"variant {variant!r} given for {sft.variant!r} SFT data")
    variant = sft.variant
    if not sft.train:
        raise SparkHubError("the SFT data has no training examples")

    # -- base model and build key ---------------------------------------------------------------
    source = resolve_model(BackendConfig(model=model, revision=revision, trust_remote_code=trust_remote_code))
    base = {"id": model, **source.provenance()}
    given_config = None
    if training_args is not None and not isinstance(training_args, Mapping):  # a resolved trl.SFTConfig
        given_config = training_args
        overrides = {k: v for k, v in given_config.to_dict().items() if k not in _NOT_IN_KEY}
    else:
        overrides = dict(training_args or {})
    data_hash = _examples_hash(sft.train + sft.eval)
    lora = _peft_dict(peft_config)
    keyed = overrides if lora is None else {**overrides, "peft": lora}
    key = build_key({"fingerprint": base["fingerprint"], "dtype": dtype}, data_hash, variant, keyed)
    manifest_path = output_dir / MANIFEST_NAME
    if manifest_path.is_file():
        try:
            done = json.loads(manifest_path.read_text()).get("build_key")
        except (OSError, json.JSONDecodeError):
            done = None
        if done == key:
            logger.info("%s already holds this PRM (build key %s): nothing to do", output_dir, key[:12])
            return output_dir
        raise SparkHubError(f"{output_dir} holds a different finished PRM",
                            hint="use another --output-dir, or delete the folder to retrain")
    key_path = output_dir / KEY_FILE
    if key_path.is_file() and json.loads(key_path.read_text()).get("build_key") != key:
        raise SparkHubError(f"{output_dir} has checkpoints of a run with other settings",
                            hint="use another --output-dir, or delete its .spark/ folder to start over")

    # -- model, trainer, resume -----------------------------------------------------------------
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    load_path = source.load_path()
    kwargs = {"trust_remote_code": trust_remote_code, **source.load_kwargs()}
    tokenizer = AutoTokenizer.from_pretrained(load_path, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if given_config is not None:
        config = given_config
        config.output_dir = str(output_dir / CHECKPOINTS)
    else:
        config = _sft_config(output_dir, overrides, has_eval=bool(sft.eval))
    if dtype in (None, "auto"):
        torch_dtype = torch.bfloat16 if config.bf16 else torch.float32
    else:
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise SparkHubError(f"unknown dtype {dtype!r}", hint="use auto, float32, bfloat16 or float16")
    net = AutoModelForCausalLM.from_pretrained(load_path, dtype=torch_dtype, **kwargs)
    train_ds, eval_ds = _datasets(sft.train, sft.eval)

    from accelerate import PartialState

    main = PartialState().is_main_process
    if main:
        from spark_hub.io import atomic_write_json

        atomic_write_json(key_path, {"build_key": key})
    checkpoints = output_dir / CHECKPOINTS
    last = last_complete_checkpoint(checkpoints)
    if last:
        logger.info("resuming from %s", last)
    all_callbacks = list(callbacks)
    pusher = None
    if push_checkpoints_to and peft_config is not None:
        logger.warning("LoRA checkpoints hold adapters only: they are not pushed to step branches "
                       "(the final merged model is)")
        push_checkpoints_to = None
    if push_checkpoints_to and main:
        from spark_hub.hub import require_token

        require_token()  # fail now, not at the first checkpoint
        pusher = CheckpointPusher(output_dir, push_checkpoints_to, _prm_checkpoint_describer(variant, base, sft, key),
                                  endpoint=hub_endpoint)
        all_callbacks.append(pusher.callback())
    trainer = SFTTrainer(model=net, args=config, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer, callbacks=all_callbacks or None, peft_config=peft_config)
    if peft_config is not None:
        _check_lora_mergeable(trainer)
    try:
        result = trainer.train(resume_from_checkpoint=last)
    finally:
        if pusher is not None:
            pusher.wait()

    # -- save -------------------------------------------------------------------------------------
    if peft_config is not None:
        _save_merged(trainer, output_dir, main)
    else:
        trainer.save_model(str(output_dir))  # safetensors by default
    if main:
        _write_outputs(output_dir, tokenizer, sft, variant, base, config, key, result, inputs, data_hash, lora,
                       step_records)
    trainer.accelerator.wait_for_everyone()
    return output_dir


def _peft_dict(peft_config: Any) -> dict[str, Any] | None:
    """A JSON-safe dict of a peft config (for the build key and the manifest), None without one."""
    if peft_config is None:
        return None
    try:
        from peft import PeftConfig
    except ImportError as error:  # pragma: no cover - peft is a dependency
        raise SparkHubError("LoRA needs the peft package", hint="pip install peft") from error
    if not isinstance(peft_config, PeftConfig):
        raise SparkHubError(f"peft_config must be a peft.PeftConfig (e.g. peft.LoraConfig), got {type(peft_config).__name__}")
    raw = peft_config.to_dict()
    return {k: sorted(v) if isinstance(v, (set, frozenset)) else _json_safe(v) for k, v in sorted(raw.items())
            if k not in ("base_model_name_or_path", "revision")}


def _check_lora_mergeable(trainer) -> None:
    """LoRA is merged at save from the whole model in one process: not possible with sharded weights."""
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and getattr(plugin, "zero_stage", None) == 3:
        raise SparkHubError("LoRA (use_peft) cannot be merged at save under DeepSpeed ZeRO-3",
                            hint="use pipelines/accelerate/zero2.yaml or ddp.yaml for LoRA")
    if getattr(trainer, "is_fsdp_enabled", False):
        raise SparkHubError("LoRA (use_peft) cannot be merged at save under FSDP",
                            hint="use pipelines/accelerate/zero2.yaml or ddp.yaml for LoRA")


def _save_merged(trainer, output_dir: Path, main: bool) -> None:
    """Merge the trained LoRA adapters into the base weights and save plain safetensors."""
    trainer.accelerator.wait_for_everyone()
    if main:
        model = trainer.accelerator.unwrap_model(trainer.model)
        merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
        merged.save_pretrained(str(output_dir), safe_serialization=True)
        for stray in ("adapter_config.json", "adapter_model.safetensors"):
            (output_dir / stray).unlink(missing_ok=True)
        logger.info("LoRA adapters merged into the base weights")


#: Files of a checkpoint that make a loadable PRM (no optimizer / scheduler / RNG pickles).
def _prm_checkpoint_describer(variant: str, base: dict, sft, key: str):
    """Writes ``prm_spec.json`` and a manifest into a staged checkpoint, so each step branch loads with `load_prm`."""

    def describe(staging: Path, step: int, training_args: Any) -> None:
        from spark_hub import rm_prompts
        from spark_hub.manifest import new_manifest, write_manifest
        from spark_hub.prm import generative_spec, write_spec

        write_spec(staging, generative_spec(variant, base_model=base["id"]))
        write_manifest(staging, new_manifest(
            "prm",
            config={"prm_format": variant, "stage": "train-prm", "checkpoint": step},
            models={"base_model": base},
            prompts={variant: rm_prompts.template_hash(variant)},
            seeds={"split": sft.statistics.get("seed")},
            statistics={"global_step": step, "checkpoint": True},
            build_key=key,
        ))

    return describe


def _write_outputs(output_dir: Path, tokenizer, sft, variant: str, base: dict, config, key: str, result,
                   inputs: Mapping[str, Any] | None, data_hash: str, lora: dict[str, Any] | None = None,
                   step_records: Mapping[str, Any] | None = None) -> None:
    from spark_hub import rm_prompts
    from spark_hub.manifest import new_manifest, write_manifest
    from spark_hub.prm import generative_spec, write_spec

    tokenizer.save_pretrained(str(output_dir))
    for stray in ("training_args.bin",):  # a pickle; the resolved config is in the manifest
        path = output_dir / stray
        if path.exists():
            path.unlink()
    spec = generative_spec(variant, base_model=base["id"])
    write_spec(output_dir, spec)
    resolved = {k: _json_safe(v) for k, v in config.to_dict().items()
                if k not in ("output_dir", "logging_dir", "hub_token")}
    metrics = {k: _json_safe(v) for k, v in (result.metrics or {}).items()}
    manifest = new_manifest(
        "prm",
        config={"prm_format": variant, "stage": "train-prm", "training_args": resolved,
                **({"lora": {**lora, "merged": True}} if lora is not None else {})},
        models={"base_model": base},
        prompts={variant: rm_prompts.template_hash(variant)},
        seeds={"train": config.seed, "split": sft.statistics.get("seed")},
        inputs={"sft_data": {"source": "in-memory", "sha256": data_hash, **dict(inputs or {})},
                **({"step_records": dict(step_records)} if step_records else {})},
        statistics={"sft_data": sft.statistics, "train": metrics, "global_step": result.global_step},
        build_key=key,
    )
    write_manifest(output_dir, manifest)
    try:
        from spark_hub.cards import write_card
        from spark_hub.manifest import read_manifest

        write_card(output_dir, read_manifest(output_dir))
    except ImportError:  # pragma: no cover - cards are optional here
        logger.debug("no card writer available", exc_info=True)
    logger.info("PRM written to %s (%s, %d steps)", output_dir, variant, result.global_step)


@dataclasses.dataclass
class PRMTrainArgs:
    """spark-hub's own fields of a ``train prm`` recipe (beside `trl.SFTConfig` and `trl.ModelConfig`)."""

    dataset: str = dataclasses.field(
        default="", metadata={"help": "Stage I step records: a dataset folder, a .parquet/.jsonl file or a Hub id."})
    dataset_revision: str | None = dataclasses.field(
        default=None, metadata={"help": "Hub revision of the dataset (branch, tag or commit)."})
    variant: str = dataclasses.field(default="prm", metadata={"help": "orm, prm or prm_cot."})
    eval_fraction: float = dataclasses.field(
        default=0.1, metadata={"help": "Share of problems held out for evaluation (split by problem_id)."})
    split_seed: int = dataclasses.field(default=0, metadata={"help": "Seed of the train/eval split."})
    keep_inexact_cot: bool = dataclasses.field(
        default=True, metadata={"help": "prm_cot: keep CoT targets whose labels differ from the aggregated ones."})

    def __post_init__(self):
        from spark_hub.train.sft_data import VARIANTS

        if self.variant not in VARIANTS:
            raise SparkHubError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if not 0 <= self.eval_fraction < 1:
            raise SparkHubError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")


def dataset_provenance(dataset: str, revision: str | None = None) -> dict[str, Any]:
    """What identifies the Stage I step records: for a dataset folder the sha256 of its manifest (which
    lists the sha256 of every file) and its build key; for a file its sha256; for a Hub id the repo and
    revision (``hf://datasets/ORG/NAME``)."""
    path = Path(dataset)
    if path.is_dir() and (path / "manifest.json").is_file():
        raw = (path / "manifest.json").read_bytes()
        try:
            build = json.loads(raw).get("build_key")
        except ValueError:
            build = None
        return {"source": str(path.resolve()), "sha256": hashlib.sha256(raw).hexdigest(), "build_key": build}
    if path.is_file():
        from spark_hub.io import sha256_file

        return {"source": str(path.resolve()), "sha256": sha256_file(path)}
    return {"source": f"hf://datasets/{dataset}", "revision": revision or "main"}


def train_from_config(args: PRMTrainArgs, training: Any, model_args: Any, *, push_checkpoints_to: str | None = None,
                      hub_endpoint: str | None = None) -> Path:
    """Run `train_prm` from the three parsed recipe sections (``PRMTrainArgs``, ``SFTConfig``, ``ModelConfig``).

    ``training.output_dir`` is the PRM folder. ``use_peft: true`` trains LoRA adapters (``lora_r``,
    ``lora_alpha``, ``lora_dropout``, ``lora_target_modules``...), merged into the weights at save.
    """
    from spark_hub.records import read_records

    if not args.dataset:
        raise SparkHubError("the recipe has no `dataset` (the Stage I step records to train on)")
    if not getattr(model_args, "model_name_or_path", None):
        raise SparkHubError("the recipe has no `model_name_or_path` (the base chat model)")
    peft_config = None
    if getattr(model_args, "use_peft", False):
        from trl import get_peft_config

        peft_config = get_peft_config(model_args)
        target = peft_config.target_modules
        # ModelConfig turns a one-item list into a string, which peft reads as a regex matched against
        # the FULL module path ("o_proj" would match nothing): a plain name means that module, as in a list
        if isinstance(target, str) and target != "all-linear" and target.replace("_", "").replace(".", "").isalnum():
            peft_config.target_modules = {target}
    output_dir = Path(training.output_dir)
    records = read_records(args.dataset, args.dataset_revision)
    revision = getattr(model_args, "model_revision", None)
    return train_prm(
        model_args.model_name_or_path, output_dir, records=records, variant=args.variant,
        revision=None if revision == "main" else revision, training_args=training,
        eval_fraction=args.eval_fraction, seed=args.split_seed, keep_inexact_cot=args.keep_inexact_cot,
        inputs={"source": args.dataset, "revision": args.dataset_revision},
        step_records=dataset_provenance(args.dataset, args.dataset_revision),
        dtype=getattr(model_args, "dtype", None), push_checkpoints_to=push_checkpoints_to, hub_endpoint=hub_endpoint,
        peft_config=peft_config,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m spark_hub.train.prm --config RECIPE.yaml [--set k=v ...] [--output-dir DIR]``
    (also under ``accelerate launch -m spark_hub.train.prm ...``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m spark_hub.train.prm", description="Train a generative PRM.")
    parser.add_argument("--config", required=True, help="YAML recipe: PRMTrainArgs + trl.SFTConfig + trl.ModelConfig keys.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--output-dir", default=None, help="The PRM folder (overrides output_dir).")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from trl import ModelConfig, SFTConfig

    from spark_hub.config import parse_config

    try:
        args, training, model_args = parse_config((PRMTrainArgs, SFTConfig, ModelConfig), ns.config, ns.overrides,
                                                   flags={"output_dir": ns.output_dir})
        out = train_from_config(args, training, model_args)
    except SparkHubError as error:
        parser.exit(2, f"error: {error.one_line()}\n")
    logger.info("done: %s", out)
    return 0


def clean_checkpoints(output_dir: str | Path) -> None:
    """Delete the local checkpoints of a finished run (they are never pushed)."""
    shutil.rmtree(Path(output_dir) / CHECKPOINTS, ignore_errors=True)


__all__ = ["DEFAULT_TRAINING_ARGS", "PRMTrainArgs", "build_key", "clean_checkpoints", "dataset_provenance",
           "last_complete_checkpoint",
           "main", "train_from_config", "train_prm"]


if __name__ == "__main__":
    raise SystemExit(main())
