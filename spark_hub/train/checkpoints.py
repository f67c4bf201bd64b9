"""Checkpoints of the training stages: find the one to resume, push each one to a step branch.

Both `train prm` and `train grpo` save Trainer checkpoints under ``OUTPUT/.spark/checkpoints`` and
resume from the newest complete one. With ``--push`` every saved checkpoint is staged as a loadable
artifact (weights, config, tokenizer, a manifest and, for PRMs, ``prm_spec.json``; never optimizer
or RNG pickles) and pushed to branch ``step-NNNNNN`` in the background
(`spark_hub.hub.push_checkpoint_async`), so training never waits for the Hub.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)

#: Files of a checkpoint that make a loadable model folder (optimizer, scheduler and RNG state stay local).
PUSHABLE_SUFFIXES = (".safetensors", ".json", ".jinja", ".txt", ".model", ".tiktoken")
NOT_PUSHED = {"trainer_state.json"}
PUSH_STAGING = Path(".spark") / "push"


def last_complete_checkpoint(folder: str | Path) -> str | None:
    """The newest ``checkpoint-N`` whose ``trainer_state.json`` (the Trainer writes it last) reads back.

    A run killed while saving leaves a checkpoint without it (or with a truncated one): that one is
    skipped and the previous one resumed, instead of failing on the half-written files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    candidates = []
    for path in folder.iterdir():
        name = path.name
        if path.is_dir() and name.startswith("checkpoint-") and name[len("checkpoint-"):].isdigit():
            candidates.append((int(name[len("checkpoint-"):]), path))
    for _, path in sorted(candidates, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text())
        except (OSError, json.JSONDecodeError):
            logger.warning("skipping incomplete checkpoint %s", path)
            continue
        return str(path)
    return None


class CheckpointPusher:
    """Pushes each checkpoint the Trainer saves to a ``step-NNNNNN`` branch, in the background.

    Args:
        output_dir: the run's output folder (staging goes under ``.spark/push``).
        repo_id: the Hub repo.
        describe: ``describe(staging_folder, step, training_args)`` writes what makes the staged files
            an artifact of its kind (the manifest; for a PRM also its spec).
        push_kwargs: passed to `spark_hub.hub.push_checkpoint_async` (endpoint, private, overwrite...).
    """

    def __init__(self, output_dir: Path, repo_id: str, describe: Callable[[Path, int, Any], None],
                 **push_kwargs: Any):
        self.output_dir, self.repo_id, self.describe, self.push_kwargs = Path(output_dir), repo_id, describe, push_kwargs
        self.futures: list = []

    def callback(self):
        """A `transformers.TrainerCallback` that pushes on every save (main process only)."""
        from transformers import TrainerCallback

        pusher = self

        class PushCheckpoints(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                if state.is_world_process_zero:
                    pusher.push(Path(args.output_dir) / f"checkpoint-{state.global_step}", state.global_step, args)

        return PushCheckpoints()

    def push(self, checkpoint: Path, step: int, training_args: Any = None) -> None:
        """Stage ``checkpoint`` (hard links where possible) and start its push."""
        from spark_hub.hub import push_checkpoint_async

        staging = self.output_dir / PUSH_STAGING / checkpoint.name
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for path in checkpoint.iterdir():
            if path.is_file() and path.suffix in PUSHABLE_SUFFIXES and path.name not in NOT_PUSHED:
                try:
                    (staging / path.name).hardlink_to(path)
                except OSError:
                    shutil.copy2(path, staging / path.name)
        self.describe(staging, step, training_args)
        future = push_checkpoint_async(staging, self.repo_id, step, **self.push_kwargs)
        self.futures.append((step, staging, future))

    def wait(self) -> None:
        """Wait for the pending pushes, log each outcome, remove the staging folders."""
        for step, staging, future in self.futures:
            try:
                result = future.result()
                logger.info("checkpoint step %d pushed to %s@%s", step, self.repo_id, result.revision)
            except Exception as error:  # a failed checkpoint push does not fail the training run
                logger.warning("checkpoint step %d was not pushed to %s: %s", step, self.repo_id, error)
            shutil.rmtree(staging, ignore_errors=True)
        self.futures.clear()
