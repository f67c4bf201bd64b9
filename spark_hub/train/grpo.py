"""Stage III: GRPO with a PRM as the reward (SPARK §3), on TRL's ``GRPOTrainer``.

TRL gives one scalar reward per completion. SPARK's process-aware designs need per-token advantages,
so `SparkGRPOTrainer` overrides one method, ``_generate_and_score_completions``: it lets TRL
generate, score and group-normalise as usual, then, for the step-level designs, replaces
``out["advantages"]`` (shape ``(B,)``) with a ``(B, T)`` tensor built from the PRM's step labels
(TRL 1.16's loss accepts both shapes). The reward designs, selectable by name (``reward:``):

==========================  ===========================================================================
``prm_outcome``             r = 1[valid format] · y (the PRM's final verdict), standard GRPO advantages
``prm_step_augmented``      r = 1[valid] · (0.4·k/n + 0.6·y)
``selective_advantage``     outcome advantage Â kept on the tokens of step j only when step j's label
                            agrees with the sign of Â (``spark_hub.advantages.selective_advantage``);
                            fewer than 4 or more than 20 steps zero everything
``global_step``             0.8·Â_outcome + 0.2·Â_step, each step ±1/n normalised with batch-wide
                            statistics gathered across processes; fewer than 3 or more than 20 steps,
                            or a step-count mismatch with the PRM, zero the step part
``orm`` / ``rlvr`` /        baselines: an outcome RM, math-verify against the reference, a random 0/1
``random`` /                for a valid format, TTRL-style online majority vote
``majority_vote``
==========================  ===========================================================================

The reward functions themselves live in `spark_hub.rewards` (one batched PRM call per rollout
batch); the token-level maths in `spark_hub.advantages`. Beside the training reward, zero-weight
reward functions are added for logging only (``format_validity``, and ``rlvr`` when the problems have
reference answers), so every component shows up as ``rewards/<name>/mean``. Logged per step as well:
``spark/format_violation_rate``, ``spark/mean_steps``, ``spark/prm_verdict``, ``spark/prm_step_fraction``,
``spark/guard/{too_few,too_many,mismatch}``, and the **hacking monitor** every ``monitor_steps``:
the PRM reward and the math-verify accuracy of the policy on a held-out reference set
(``monitor/prm_reward``, ``monitor/accuracy``, ``monitor/gap``), with a warning when they diverge by
more than ``monitor_threshold``.

Run it from one YAML recipe (`GRPOTrainArgs` + ``trl.GRPOConfig`` + ``trl.ModelConfig`` keys)::

    python -m spark_hub.train.grpo --config spark_hub/pipelines/train-grpo/demo-cpu.yaml --output-dir out/policy
    accelerate launch -m spark_hub.train.grpo --config RECIPE.yaml          # several processes / GPUs

The run is resumable: checkpoints go to ``OUTPUT_DIR/.spark/checkpoints`` and the same command,
after a crash or a SIGKILL, continues from the newest complete one; a finished run (same build key)
is a no-op. The result is a policy folder: safetensors weights, tokenizer, ``manifest.json``
(kind ``policy``) and a card (``README.md``). ``push: true`` pushes checkpoints to ``step-N`` branches
in the background and the final policy, with its card, to ``hub_revision``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import inspect
import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping, Sequence

from spark_hub import rewards as _rewards
from spark_hub.errors import SparkHubError
from spark_hub.train.checkpoints import CheckpointPusher, last_complete_checkpoint
from spark_hub.train.prm import _json_safe

logger = logging.getLogger(__name__)

CHECKPOINTS = Path(".spark") / "checkpoints"
KEY_FILE = Path(".spark") / "train_key.json"

#: The paper's policy output format: reasoning in <step> blocks, the answer boxed inside <answer>
#: (the instruction of `spark_hub.rewards`, whose format checks it matches).
POLICY_SYSTEM_PROMPT = _rewards.POLICY_SYSTEM

#: Reward design -> the reward function that trains, and how advantages are made.
DESIGNS: dict[str, tuple[str, str]] = {
    "prm_outcome": ("prm_outcome", "outcome"),
    "prm_step_augmented": ("prm_step_augmented", "outcome"),
    "selective_advantage": ("prm_outcome", "selective_advantage"),
    "global_step": ("prm_outcome", "global_step"),
    "orm": ("orm", "outcome"),
    "rlvr": ("rlvr", "outcome"),
    "random": ("random", "outcome"),
    "majority_vote": ("majority_vote", "outcome"),
}
#: Designs that need a reward model.
PRM_DESIGNS = {"prm_outcome", "prm_step_augmented", "selective_advantage", "global_step", "orm"}

#: spark-hub's defaults for GRPOConfig (the recipe wins).
DEFAULT_TRAINING_ARGS: dict[str, Any] = {
    "save_strategy": "steps",
    "save_steps": 50,
    "save_total_limit": 2,
    "logging_steps": 1,
    "report_to": "none",
    "activation_checkpointing": False,
}

#: GRPOConfig fields that do not change the trained policy (left out of the build key).
_NOT_IN_KEY = {"output_dir", "logging_dir", "hub_token", "report_to", "logging_steps", "save_steps",
               "save_total_limit", "save_strategy", "disable_tqdm", "push_to_hub", "hub_model_id",
               "dataloader_num_workers", "run_name", "eval_steps", "eval_strategy", "logging_strategy",
               "log_completions", "num_completions_to_print", "hub_revision", "hub_private_repo", "hub_strategy", "log_level", "log_level_replica",
               "vllm_server_base_url", "vllm_server_host", "vllm_server_port", "vllm_server_timeout"}
#: GRPOTrainArgs fields that do not change the trained policy.
_ARGS_NOT_IN_KEY = {"push", "hub_repo", "hub_revision", "hub_private", "hub_overwrite", "push_checkpoints",
                    "prm_base_url", "prm_max_concurrency", "prm_batch_size", "monitor_problems", "monitor_split",
                    "monitor_problem_field", "monitor_answer_field", "monitor_size", "monitor_steps", "monitor_threshold"}


# ------------------------------------------------------------------------------------------------
# Recipe section
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class GRPOTrainArgs:
    """spark-hub's own fields of a ``train grpo`` recipe (beside ``trl.GRPOConfig`` and ``trl.ModelConfig``).

    > Problems: ``problems`` (JSONL/Parquet file or Hub dataset id) and the field mapping; reference
    > answers are optional (only ``rlvr``, the logged accuracy and the hacking monitor use them).
    > Reward: ``reward`` (a design name), ``prm`` (+ revision, backend, server URL), guard thresholds.
    > Monitor: ``monitor_problems`` (held-out, with references), ``monitor_steps``, ``monitor_threshold``.
    > Hub: ``push``, ``hub_repo``, ``hub_revision``, ``push_checkpoints``.
    """

    problems: str = dataclasses.field(default="", metadata={"help": "Training problems: a .jsonl/.parquet file or a Hub dataset id."})
    problems_revision: str | None = dataclasses.field(default=None, metadata={"help": "Hub revision of `problems`."})
    problems_config: str | None = dataclasses.field(default=None, metadata={"help": "Hub dataset config (subset) of `problems`."})
    problems_split: str = dataclasses.field(default="train", metadata={"help": "Split of a Hub `problems` dataset."})
    problem_field: str = dataclasses.field(default="problem", metadata={"help": "Field holding the problem text."})
    answer_field: str | None = dataclasses.field(default="answer", metadata={"help": "Field holding the reference answer (optional)."})
    id_field: str | None = dataclasses.field(default=None, metadata={"help": "Field holding a unique problem id."})
    limit: int | None = dataclasses.field(default=None, metadata={"help": "Use only the first N problems."})
    system_prompt: str = dataclasses.field(default=POLICY_SYSTEM_PROMPT, metadata={"help": "The policy's system prompt (the <step>/<answer> output format)."})
    max_prompt_tokens: int | None = dataclasses.field(default=None, metadata={"help": "Drop problems whose prompt is longer (tokens); TRL 1.16 has no max_prompt_length."})
    reward: str = dataclasses.field(default="prm_outcome", metadata={"help": f"Reward design: {', '.join(DESIGNS)}."})
    log_components: bool = dataclasses.field(default=True, metadata={"help": "Also log format_validity and (with references) rlvr as zero-weight rewards."})
    prm: str | None = dataclasses.field(default=None, metadata={"help": "The PRM: a folder written by `train prm` or a Hub repo id (load_prm)."})
    prm_revision: str | None = dataclasses.field(default=None, metadata={"help": "Hub revision of the PRM."})
    prm_backend: str = dataclasses.field(default="transformers", metadata={"help": "Backend that runs a generative PRM in-process (transformers, vllm) or `openai` for a server."})
    prm_base_url: str | None = dataclasses.field(default=None, metadata={"help": "OpenAI-compatible PRM server URL (implies prm_backend=openai)."})
    prm_served_model: str | None = dataclasses.field(default=None, metadata={"help": "Model name the PRM server serves (default: the PRM id)."})
    prm_batch_size: int | None = dataclasses.field(default=None, metadata={"help": "Batch size of the in-process PRM backend."})
    prm_max_concurrency: int | None = dataclasses.field(default=None, metadata={"help": "PRM server: requests in flight (the paper: 250)."})
    selective_min_steps: int = dataclasses.field(default=4, metadata={"help": "selective_advantage: fewer steps zero the whole advantage."})
    selective_max_steps: int = dataclasses.field(default=20, metadata={"help": "selective_advantage: more steps zero the whole advantage."})
    global_min_steps: int = dataclasses.field(default=3, metadata={"help": "global_step: fewer steps zero the step part."})
    global_max_steps: int = dataclasses.field(default=20, metadata={"help": "global_step: more steps zero the step part."})
    outcome_weight: float = dataclasses.field(default=0.8, metadata={"help": "global_step: weight of the outcome advantage."})
    step_weight: float = dataclasses.field(default=0.2, metadata={"help": "global_step: weight of the step advantage."})
    reward_seed: int = dataclasses.field(default=0, metadata={"help": "Seed of the `random` reward."})
    monitor_problems: str | None = dataclasses.field(default=None, metadata={"help": "Held-out problems WITH references for the hacking monitor (file or Hub id)."})
    monitor_split: str = dataclasses.field(default="test", metadata={"help": "Split of a Hub monitor_problems dataset."})
    monitor_problem_field: str = dataclasses.field(default="problem", metadata={"help": "Problem field of monitor_problems."})
    monitor_answer_field: str = dataclasses.field(default="answer", metadata={"help": "Answer field of monitor_problems."})
    monitor_size: int = dataclasses.field(default=32, metadata={"help": "Problems of monitor_problems used at each check."})
    monitor_steps: int = dataclasses.field(default=0, metadata={"help": "Run the hacking monitor every K optimizer steps (0 = off)."})
    monitor_threshold: float = dataclasses.field(default=0.2, metadata={"help": "Warn when |PRM reward - accuracy| on the monitor set exceeds this."})
    push: bool = dataclasses.field(default=False, metadata={"help": "Push the final policy (and checkpoints) to the Hub."})
    hub_repo: str | None = dataclasses.field(default=None, metadata={"help": "Hub model repo for push."})
    hub_revision: str = dataclasses.field(default="main", metadata={"help": "Branch for the final policy."})
    hub_private: bool = dataclasses.field(default=False, metadata={"help": "Create the repo private."})
    hub_overwrite: bool = dataclasses.field(default=False, metadata={"help": "Replace a different artifact on the branch."})
    push_checkpoints: bool = dataclasses.field(default=True, metadata={"help": "With push: every checkpoint to branch step-NNNNNN, in the background."})

    def __post_init__(self):
        if self.reward not in DESIGNS:
            raise SparkHubError(f"unknown reward design {self.reward!r}", hint=f"valid: {', '.join(DESIGNS)}")
        for name in ("selective_min_steps", "selective_max_steps", "global_min_steps", "global_max_steps"):
            if getattr(self, name) < 0:
                raise SparkHubError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.selective_min_steps > self.selective_max_steps or self.global_min_steps > self.global_max_steps:
            raise SparkHubError("a min_steps guard is larger than its max_steps guard")
        if self.monitor_steps < 0:
            raise SparkHubError(f"monitor_steps must be >= 0, got {self.monitor_steps}")
        if self.monitor_steps and not self.monitor_problems:
            raise SparkHubError("monitor_steps is set but monitor_problems is empty",
                                hint="give a held-out problem file with reference answers")
        if self.push and not self.hub_repo:
            raise SparkHubError("push is set but hub_repo is empty", hint="hub_repo: ORG/NAME")

    @property
    def design(self) -> tuple[str, str]:
        """``(training reward function name, advantage kind)``."""
        return DESIGNS[self.reward]


def policy_messages(problem: str, system_prompt: str = POLICY_SYSTEM_PROMPT) -> list[dict[str, str]]:
    """The conversational prompt the policy answers (system: output format; user: the problem)."""
    return _rewards.policy_messages(problem, system=system_prompt or None)


# ------------------------------------------------------------------------------------------------
# The trainer
# ------------------------------------------------------------------------------------------------


def _call_reward(func: Callable, loop: Any, **kwargs: Any) -> list:
    """Call a TRL-signature reward function (sync, or async on ``loop``) outside the trainer's scoring."""
    if inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(getattr(func, "__call__", None)):
        if loop is None:
            return asyncio.run(func(**kwargs))
        return asyncio.run_coroutine_threadsafe(func(**kwargs), loop).result()
    return func(**kwargs)


@dataclasses.dataclass
class Guards:
    """Step-count guards of the step-level designs (the paper's values by default)."""

    selective_min_steps: int = 4
    selective_max_steps: int = 20
    global_min_steps: int = 3
    global_max_steps: int = 20
    outcome_weight: float = 0.8
    step_weight: float = 0.2


@dataclasses.dataclass
class Monitor:
    """The hacking monitor's held-out set and schedule."""

    prompts: list  # conversational prompts
    problems: list[str]
    references: list[str]
    every: int
    threshold: float = 0.2
    prm_reward: Callable | None = None
    accuracy_reward: Callable | None = None
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)


_TRAINER_CLASS = None


def _grpo_trainer_class():
    global _TRAINER_CLASS
    if _TRAINER_CLASS is None:
        _TRAINER_CLASS = _make_trainer_class()
    return _TRAINER_CLASS


def _make_trainer_class():
    from trl import GRPOTrainer

    class SparkGRPOTrainer(GRPOTrainer):
        """``GRPOTrainer`` with SPARK's token-level advantages, step statistics and the hacking monitor.

        Args (beside GRPOTrainer's):
            advantage: ``outcome`` (TRL's advantages untouched), ``selective_advantage`` or ``global_step``.
            detail_reward: the reward function whose ``last_details`` (one dict per row of the last
                call, see `spark_hub.rewards`) carry the format flag, step count and PRM step labels.
            guards: `Guards`.
            monitor: a `Monitor`, or None.
        """

        def __init__(self, *args, advantage: str = "outcome", detail_reward: Callable | None = None,
                     guards: Guards | None = None, monitor: Monitor | None = None, **kwargs):
            if advantage not in ("outcome", "selective_advantage", "global_step"):
                raise SparkHubError(f"unknown advantage kind {advantage!r}")
            if advantage != "outcome" and detail_reward is None:
                raise SparkHubError(f"{advantage} needs a PRM reward function with step labels (detail_reward)")
            super().__init__(*args, **kwargs)
            self.advantage = advantage
            self.detail_reward = detail_reward
            self.guards = guards or Guards()
            self.monitor = monitor
            self._last_monitored = -1

        # -- the one override ----------------------------------------------------------------------
        def _generate_and_score_completions(self, inputs):
            mode = "train" if self.model.training else "eval"
            if mode == "train" and self.monitor is not None:
                self._maybe_monitor()
            out = super()._generate_and_score_completions(inputs)
            details = getattr(self.detail_reward, "last_details", None) if self.detail_reward else None
            if details is not None and len(details) != out["completion_ids"].size(0):
                raise RuntimeError(f"{len(details)} reward details for {out['completion_ids'].size(0)} completions")
            if details is not None:
                self._log_details(details, mode)
            if self.advantage != "outcome":
                out["advantages"] = self.step_advantages(out, details, mode)
            return out

        # -- token-level advantages ------------------------------------------------------------------
        def step_advantages(self, out: dict, details: list[dict], mode: str):
            """The ``(B, T)`` advantages of this process's rows from TRL's ``(B,)`` outcome advantages."""
            import torch

            from spark_hub import advantages as adv

            device = out["completion_ids"].device
            ids, mask = out["completion_ids"], out["completion_mask"]
            rows = [row[: int(m.sum())].tolist() for row, m in zip(ids.cpu(), mask.cpu())]
            index = adv.step_index(rows, self.processing_class, pad_to=ids.size(1)).to(device)
            labels, n_steps, prm_n_steps = adv.pack_details(details, device=device)
            outcome = out["advantages"]
            g = self.guards
            if self.advantage == "selective_advantage":
                lo, hi = g.selective_min_steps, g.selective_max_steps
                result = adv.selective_advantage(outcome, index, labels, n_steps, prm_n_steps, min_steps=lo,
                                                 max_steps=hi, completion_mask=mask)
            else:
                lo, hi = g.global_min_steps, g.global_max_steps
                moments = adv.step_reward_moments(labels, n_steps, prm_n_steps, min_steps=lo, max_steps=hi)
                moments = self.accelerator.reduce(moments.to(device).float(), reduction="sum")
                result = adv.global_step_advantage(
                    outcome, index, labels, n_steps, prm_n_steps, mask, min_steps=lo, max_steps=hi,
                    outcome_weight=g.outcome_weight, step_weight=g.step_weight,
                    step_stats=adv.stats_from_moments(moments))
            # guard statistics over the format-valid rows (an invalid row has reward 0 and no labels anyway)
            valid = torch.tensor([bool(d.get("valid_format")) for d in details], device=device)
            hits = adv.guard_hits(n_steps, labels, prm_n_steps, min_steps=lo, max_steps=hi)
            counts = torch.stack([(hits[k].to(device) & valid).float().sum() for k in ("too_few", "too_many", "mismatch")]
                                 + [valid.float().sum()]).to(device)
            counts = self.accelerator.reduce(counts, reduction="sum").tolist()
            total = max(counts[3], 1.0)
            for name, value in zip(("too_few", "too_many", "mismatch"), counts[:3]):
                self._metrics[mode][f"spark/guard/{name}"].append(value / total)
            zeroed = (result.abs().sum(dim=1) == 0) & (outcome != 0) & valid
            zeroed = self.accelerator.reduce(zeroed.float().sum(), reduction="sum").item()
            self._metrics[mode]["spark/advantage_zeroed_rows"].append(zeroed / total)
            return result

        # -- statistics ------------------------------------------------------------------------------
        def _log_details(self, details: list[dict], mode: str) -> None:
            """Format-violation rate, mean steps, PRM verdict and step fraction (averaged over processes)."""
            import torch

            def fraction(labels):
                known = [x for x in (labels or []) if x is not None]
                return sum(1 for x in known if x) / len(labels) if labels else float("nan")

            valid = [1.0 if d.get("valid_format") else 0.0 for d in details]
            steps = [float(d.get("n_steps") or 0) for d in details]
            verdict = [float(d["final_verdict"]) for d in details if d.get("final_verdict") is not None]
            step_frac = [f for f in (fraction(d.get("step_labels")) for d in details) if not math.isnan(f)]
            stats = torch.tensor([sum(valid), len(valid), sum(steps), sum(verdict), len(verdict), sum(step_frac),
                                  len(step_frac)], dtype=torch.float64, device=self.accelerator.device)
            s = self.accelerator.reduce(stats, reduction="sum").tolist()
            n = max(s[1], 1.0)
            self._metrics[mode]["spark/format_violation_rate"].append(1.0 - s[0] / n)
            self._metrics[mode]["spark/mean_steps"].append(s[2] / n)
            if s[4]:
                self._metrics[mode]["spark/prm_verdict"].append(s[3] / s[4])
            if s[6]:
                self._metrics[mode]["spark/prm_step_fraction"].append(s[5] / s[6])

        # -- hacking monitor -------------------------------------------------------------------------
        def _maybe_monitor(self) -> None:
            step = self.state.global_step
            if step % self.monitor.every or step == self._last_monitored:
                return
            self._last_monitored = step
            result = self.run_monitor()
            self.monitor.history.append({"step": step, **result})
            for key, value in result.items():
                self._metrics["train"][f"monitor/{key}"].append(value)
            if abs(result["gap"]) > self.monitor.threshold:
                logger.warning(
                    "hacking monitor at step %d: PRM reward %.3f vs math-verify accuracy %.3f on %d held-out "
                    "problems (gap %.3f > %.3f): the policy may be exploiting the PRM", step, result["prm_reward"],
                    result["accuracy"], int(result["n"]), result["gap"], self.monitor.threshold)

        def _monitor_generate(self, prompts: list) -> list[list[int]]:
            """One completion per prompt, as training generates (the rollout hook, vLLM or ``generate``)."""
            if self.rollout_func is not None:
                return list(self.rollout_func(prompts, self)["completion_ids"])
            prompt_ids, _, _ = self._tokenize_prompts(prompts)
            completion_ids, _ = self._generate_single_turn(prompt_ids, None, {}, 1)
            return completion_ids

        def run_monitor(self) -> dict[str, float]:
            """PRM reward and math-verify accuracy of one sample per held-out problem (this process's share,
            then summed over processes)."""
            import torch

            m = self.monitor
            rank, world = self.accelerator.process_index, self.accelerator.num_processes
            share = list(range(rank, len(m.prompts), world))
            prompts = [m.prompts[i] for i in share]
            sums = [0.0, 0.0, 0.0, 0.0]  # prm sum, prm count, accuracy sum, accuracy count
            if prompts:
                completion_ids = self._monitor_generate(prompts)
                texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
                completions = [[{"role": "assistant", "content": t}] for t in texts]
                kwargs = dict(prompts=prompts, completions=completions, completion_ids=completion_ids,
                              problem=[m.problems[i] for i in share], answer=[m.references[i] for i in share],
                              trainer_state=self.state, log_extra=lambda *a, **k: None,
                              log_metric=lambda *a, **k: None)
                for slot, func in ((0, m.prm_reward), (2, m.accuracy_reward)):
                    if func is None:
                        continue
                    values = [v for v in _call_reward(func, getattr(self, "async_loop", None), **kwargs)
                              if v is not None and not math.isnan(v)]
                    sums[slot] += float(sum(values))
                    sums[slot + 1] += len(values)
            totals = self.accelerator.reduce(torch.tensor(sums, dtype=torch.float64, device=self.accelerator.device),
                                             reduction="sum").tolist()
            prm = totals[0] / totals[1] if totals[1] else float("nan")
            acc = totals[2] / totals[3] if totals[3] else float("nan")
            return {"prm_reward": prm, "accuracy": acc, "gap": prm - acc, "n": float(len(m.prompts))}

    return SparkGRPOTrainer


def __getattr__(name: str):  # `from spark_hub.train.grpo import SparkGRPOTrainer` imports TRL only then
    if name == "SparkGRPOTrainer":
        cls = _grpo_trainer_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


# ------------------------------------------------------------------------------------------------
# The stage
# ------------------------------------------------------------------------------------------------


def build_key(payload: Mapping[str, Any]) -> str:
    """What determines a trained policy: base model, PRM, problems, reward design, training args."""
    text = json.dumps({k: _json_safe(v) for k, v in sorted(payload.items())}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _load_problems(args: GRPOTrainArgs, source: str, revision: str | None = None, *, limit: int | None = None,
                   monitor: bool = False):
    from spark_hub.inputs import load_inputs

    if monitor:
        view = SimpleNamespace(solutions=None, problems=source, problems_revision=None, problems_config=None,
                               problems_split=args.monitor_split, problem_field=args.monitor_problem_field,
                               answer_field=args.monitor_answer_field, id_field=None, limit=None)
    else:
        view = SimpleNamespace(solutions=None, problems=source, problems_revision=revision,
                               problems_config=args.problems_config, problems_split=args.problems_split,
                               problem_field=args.problem_field, answer_field=args.answer_field,
                               id_field=args.id_field, limit=limit)
    need_answers = monitor
    inputs = load_inputs(view)
    problems = inputs.problems
    if need_answers:
        problems = [p for p in problems if p.reference]
        if not problems:
            raise SparkHubError(f"no problem in {source} has a reference answer ({args.monitor_answer_field!r})",
                                hint="the hacking monitor needs held-out problems with answers")
        problems = problems[:limit]
    return problems, inputs.provenance["problems"]


def _load_prm(args: GRPOTrainArgs):
    from spark_hub.prm import load_prm

    options: dict[str, Any] = {}
    backend = args.prm_backend
    if args.prm_base_url:
        backend = "openai"
        options["base_url"] = args.prm_base_url
        options["model"] = args.prm_served_model or args.prm
    if args.prm_batch_size:
        options["batch_size"] = args.prm_batch_size
    if args.prm_max_concurrency and args.prm_base_url:
        options["max_concurrency"] = args.prm_max_concurrency
    return load_prm(args.prm, revision=args.prm_revision, backend=backend, **options)


def _training_config(training: Any, output_dir: Path):
    """A resolved GRPOConfig (given, or from our defaults < a dict of overrides); output_dir -> checkpoints."""
    from trl import GRPOConfig

    if isinstance(training, Mapping):
        overrides = dict(training)
        overrides.pop("output_dir", None)
        known = {f.name for f in dataclasses.fields(GRPOConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise SparkHubError(f"unknown training argument(s) {', '.join(unknown)}",
                                hint="they must be fields of trl.GRPOConfig")
        values = {**DEFAULT_TRAINING_ARGS, **overrides}
        from spark_hub.config import CPU_DEFAULTS, has_accelerator

        if not has_accelerator():
            for key, value in CPU_DEFAULTS.items():
                values.setdefault(key, value)
        config = GRPOConfig(output_dir=str(output_dir / CHECKPOINTS), **values)
    else:
        config = training
        config.output_dir = str(output_dir / CHECKPOINTS)
    return config


def _key_args(config) -> dict[str, Any]:
    return {k: _json_safe(v) for k, v in config.to_dict().items() if k not in _NOT_IN_KEY}


def train_grpo(
    args: GRPOTrainArgs,
    training: Any,
    model_args: Any = None,
    *,
    output_dir: str | Path | None = None,
    model: str | None = None,
    prm: Any = None,
    reward_options: Mapping[str, Any] | None = None,
    callbacks: Sequence[Any] = (),
    rollout_func: Callable | None = None,
) -> Path:
    """Run Stage III: GRPO of a policy with the reward design ``args.reward``; return the policy folder.

    Args:
        args: `GRPOTrainArgs` (problems, reward design, PRM, guards, monitor, push).
        training: a resolved ``trl.GRPOConfig`` (from `spark_hub.config.parse_config`) or a dict of its
            fields over `DEFAULT_TRAINING_ARGS`. Its ``output_dir`` is the policy folder unless
            ``output_dir`` is given; checkpoints go to ``OUTPUT_DIR/.spark/checkpoints``.
        model_args: ``trl.ModelConfig`` (``model_name_or_path``, ``model_revision``, ``dtype``); or ``model``.
        prm: an already loaded `spark_hub.prm.PRM` (else ``args.prm`` is loaded with `load_prm`).
        reward_options: extra keyword options for `spark_hub.rewards.make_reward_funcs`.
        callbacks: extra ``transformers.TrainerCallback`` objects.
        rollout_func: TRL's (experimental) custom rollout hook ``(prompts, trainer) -> {"prompt_ids",
            "completion_ids", "logprobs"}``, e.g. scripted completions in tests; default: TRL generates
            (vLLM when ``use_vllm``, else ``model.generate``).

    Returns:
        The policy folder. A finished run with the same build key returns at once.

    Raises:
        `SparkHubError`: a missing model / problems / PRM, unknown arguments, checkpoints of a run with
            other settings, a folder holding another finished policy.
    """
    from spark_hub.backends.base import BackendConfig
    from spark_hub.backends.models import resolve_model
    from spark_hub.manifest import MANIFEST_NAME

    if output_dir is None:
        output_dir = training["output_dir"] if isinstance(training, Mapping) else getattr(training, "output_dir", None)
    if not output_dir:
        raise SparkHubError("no output_dir: where the policy goes", hint="--output-dir DIR")
    output_dir = Path(output_dir)
    model_id = model or getattr(model_args, "model_name_or_path", None)
    if not model_id:
        raise SparkHubError("the recipe has no `model_name_or_path` (the policy to train)")
    if getattr(model_args, "use_peft", False):
        raise SparkHubError("use_peft (LoRA) is not supported by train grpo yet", hint="set use_peft: false")
    if not args.problems:
        raise SparkHubError("the recipe has no `problems` (the training problems)")
    reward_name, advantage = args.design
    if args.reward in PRM_DESIGNS and prm is None and not args.prm:
        raise SparkHubError(f"reward design {args.reward!r} needs a PRM", hint="set `prm:` to a PRM folder or Hub id")

    # -- inputs and build key ------------------------------------------------------------------------
    problems, problems_prov = _load_problems(args, args.problems, args.problems_revision, limit=args.limit)
    revision = getattr(model_args, "model_revision", None)
    revision = None if revision in (None, "main") else revision
    source = resolve_model(BackendConfig(model=model_id, revision=revision,
                                         trust_remote_code=bool(getattr(model_args, "trust_remote_code", False))))
    base = {"id": model_id, **source.provenance()}
    config = _training_config(training, output_dir)
    if getattr(config, "use_vllm", False):
        from spark_hub.import_utils import is_available

        if not is_available("vllm"):
            raise SparkHubError("use_vllm is set but vLLM is not installed",
                                hint="pip install 'spark-hub[vllm]', or set use_vllm: false (model.generate)")
    if prm is None and args.prm:
        prm = _load_prm(args)
    prm_info = prm.describe() if prm is not None else None
    key_prm = {k: prm_info.get(k) for k in ("kind", "variant", "spec_sha256", "commit")} if prm_info else None
    if prm_info and prm_info.get("folder") and not prm_info.get("commit"):
        from spark_hub.backends.models import folder_hash

        key_prm["folder"] = folder_hash(prm_info["folder"])
    dtype = getattr(model_args, "dtype", None)
    key = build_key({
        "base": base.get("fingerprint"), "dtype": dtype, "problems": problems_prov.get("sha256"),
        "problems_rows": len(problems), "prm": key_prm,
        "args": {k: v for k, v in dataclasses.asdict(args).items() if k not in _ARGS_NOT_IN_KEY},
        "training": _key_args(config),
    })
    manifest_path = output_dir / MANIFEST_NAME
    if manifest_path.is_file():
        try:
            done = json.loads(manifest_path.read_text()).get("build_key")
        except (OSError, json.JSONDecodeError):
            done = None
        if done == key:
            logger.info("%s already holds this policy (build key %s): nothing to train", output_dir, key[:12])
            if args.push:  # idempotent: "already up to date" when the Hub has it
                _push_final(args, output_dir)
            return output_dir
        raise SparkHubError(f"{output_dir} holds a different finished policy",
                            hint="use another --output-dir, or delete the folder to retrain")
    key_path = output_dir / KEY_FILE
    if key_path.is_file() and json.loads(key_path.read_text()).get("build_key") != key:
        raise SparkHubError(f"{output_dir} has checkpoints of a run with other settings",
                            hint="use another --output-dir, or delete its .spark/ folder to start over")

    # -- model, data, rewards ---------------------------------------------------------------------
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from spark_hub import rewards

    load_path = source.load_path()
    load_kwargs = {"trust_remote_code": bool(getattr(model_args, "trust_remote_code", False)), **source.load_kwargs()}
    tokenizer = AutoTokenizer.from_pretrained(load_path, **load_kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if dtype in (None, "auto"):
        torch_dtype = torch.bfloat16 if config.bf16 else torch.float32
    else:
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise SparkHubError(f"unknown dtype {dtype!r}", hint="use auto, float32, bfloat16 or float16")
    net = AutoModelForCausalLM.from_pretrained(load_path, dtype=torch_dtype, **load_kwargs)

    rows = [{"prompt": policy_messages(p.problem, args.system_prompt), "problem": p.problem,
             "answer": p.reference or "", "problem_id": p.id} for p in problems]
    rows = _drop_long_prompts(rows, tokenizer, args.max_prompt_tokens)
    has_references = any(r["answer"] for r in rows)
    if reward_name == "rlvr" and not has_references:
        raise SparkHubError("reward design 'rlvr' needs reference answers", hint=f"answer_field={args.answer_field!r}")
    names = [reward_name]
    if args.log_components:
        names += [n for n in ("format_validity",) if n not in names]
        if has_references and "rlvr" not in names:
            names.append("rlvr")
    options: dict[str, Any] = dict(reward_options or {})
    if reward_name == "random":
        options.setdefault("seed", args.reward_seed)
    if prm is not None and _is_remote(prm) and set(names) & set(rewards.NEEDS_PRM):
        options.setdefault("asynchronous", True)  # a PRM server: requests go out concurrently
    funcs = rewards.make_reward_funcs(names, prm=prm, **options)
    if config.reward_weights is None:
        config.reward_weights = [1.0] + [0.0] * (len(funcs) - 1)
    elif len(config.reward_weights) != len(funcs):
        raise SparkHubError(f"reward_weights has {len(config.reward_weights)} values for the reward functions "
                            f"{[f.__name__ for f in funcs]}", hint="drop reward_weights (the design sets it)")
    detail_reward = funcs[0] if hasattr(funcs[0], "last_details") else None

    monitor = None
    if args.monitor_steps:
        held_out, _ = _load_problems(args, args.monitor_problems, limit=args.monitor_size, monitor=True)
        mon_options = {"asynchronous": True} if prm is not None and _is_remote(prm) else {}
        mon_funcs = rewards.make_reward_funcs(["prm_outcome", "rlvr"] if prm is not None else ["rlvr"], prm=prm,
                                              **mon_options)
        monitor = Monitor(prompts=[policy_messages(p.problem, args.system_prompt) for p in held_out],
                          problems=[p.problem for p in held_out], references=[p.reference for p in held_out],
                          every=args.monitor_steps, threshold=args.monitor_threshold,
                          prm_reward=mon_funcs[0] if prm is not None else None, accuracy_reward=mon_funcs[-1])

    # -- train (resuming) ---------------------------------------------------------------------------
    from accelerate import PartialState

    main_process = PartialState().is_main_process
    if main_process:
        from spark_hub.io import atomic_write_json

        atomic_write_json(key_path, {"build_key": key})
    last = last_complete_checkpoint(output_dir / CHECKPOINTS)
    if last:
        logger.info("resuming from %s", last)
    extra = list(callbacks)
    pusher = None
    if args.push and args.push_checkpoints and main_process:
        from spark_hub.hub import require_token

        require_token()  # fail now, not after the first checkpoint
        pusher = CheckpointPusher(output_dir, args.hub_repo,
                                  _policy_checkpoint_describer(args, base, prm_info, key, problems_prov),
                                  private=args.hub_private, overwrite=True)
        extra.append(pusher.callback())
    trainer_cls = _grpo_trainer_class()
    trainer = trainer_cls(
        model=net, reward_funcs=funcs, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        callbacks=extra or None, rollout_func=rollout_func, advantage=advantage, detail_reward=detail_reward, monitor=monitor,
        guards=Guards(args.selective_min_steps, args.selective_max_steps, args.global_min_steps,
                      args.global_max_steps, args.outcome_weight, args.step_weight),
    )
    try:
        result = trainer.train(resume_from_checkpoint=last)
    finally:
        if pusher is not None:
            pusher.wait()

    # -- save, card, push --------------------------------------------------------------------------
    trainer.save_model(str(output_dir))
    if main_process:
        tokenizer.save_pretrained(str(output_dir))
        _write_policy_outputs(output_dir, args, config, base, prm_info, problems_prov, key, result, trainer, names)
        if args.push:
            _push_final(args, output_dir)
    trainer.accelerator.wait_for_everyone()
    return output_dir


def _is_remote(prm: Any) -> bool:
    """Whether a PRM is served over HTTP (then its reward runs async, requests concurrent)."""
    backend = getattr(prm, "backend", None)
    return type(backend).__name__.lower().startswith("openai") or bool(getattr(backend, "base_url", None))


def _drop_long_prompts(rows: list[dict], tokenizer, limit: int | None) -> list[dict]:
    if not limit:
        return rows
    kept = []
    for row in rows:
        ids = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if isinstance(ids, Mapping) else ids
        if len(ids) <= limit:
            kept.append(row)
    if len(kept) < len(rows):
        logger.warning("dropped %d of %d problems whose prompt is longer than %d tokens",
                       len(rows) - len(kept), len(rows), limit)
    if not kept:
        raise SparkHubError(f"every prompt is longer than max_prompt_tokens={limit}")
    return kept


def _manifest(args: GRPOTrainArgs, config, base: dict, prm_info: dict | None, problems_prov: dict, key: str | None,
              statistics: dict) -> dict:
    from spark_hub.manifest import new_manifest

    resolved = {k: _json_safe(v) for k, v in config.to_dict().items()
                if k not in ("output_dir", "logging_dir", "hub_token")}
    spark_args = {k: _json_safe(v) for k, v in dataclasses.asdict(args).items()}
    reward_model = None
    if prm_info:
        reward_model = {k: v for k, v in prm_info.items() if k != "folder" and v is not None}
        reward_model["id"] = prm_info.get("id")
    models: dict[str, Any] = {"base_model": base}
    if reward_model:
        models["reward_model"] = reward_model
    return new_manifest(
        "policy",
        config={"stage": "train-grpo", "reward_design": args.reward, "reward_model": prm_info and prm_info.get("id"),
                "prm_revision": args.prm_revision, "grpo": spark_args, "training_args": resolved},
        models=models,
        seeds={"train": config.seed, "reward": args.reward_seed},
        inputs={"problems": dict(problems_prov)},
        statistics=statistics,
        uses_references=args.reward == "rlvr",
        build_key=key,
    )


def _write_policy_outputs(output_dir: Path, args, config, base, prm_info, problems_prov, key, result, trainer,
                          names) -> None:
    from spark_hub.manifest import write_manifest

    for stray in ("training_args.bin",):
        if (output_dir / stray).exists():
            (output_dir / stray).unlink()
    history = [{k: _json_safe(v) for k, v in entry.items()} for entry in trainer.state.log_history]
    statistics = {
        "global_step": result.global_step,
        "train": {k: _json_safe(v) for k, v in (result.metrics or {}).items()},
        "reward_functions": list(names),
        "log_history": history[-50:],
        "hacking_monitor": trainer.monitor.history if trainer.monitor else [],
    }
    manifest = _manifest(args, config, base, prm_info, problems_prov, key, statistics)
    write_manifest(output_dir, manifest)
    try:
        from spark_hub.cards import write_card

        write_card(output_dir, repo_id=args.hub_repo)
    except SparkHubError:  # pragma: no cover - a card problem must not lose the trained policy
        logger.warning("could not render the policy card", exc_info=True)
    logger.info("policy written to %s (%s, %d steps)", output_dir, args.reward, result.global_step)


def _policy_checkpoint_describer(args: GRPOTrainArgs, base: dict, prm_info: dict | None, key: str, problems_prov: dict):
    """Writes the policy manifest into a staged checkpoint (see `spark_hub.train.checkpoints`)."""

    def describe(staging: Path, step: int, config: Any) -> None:
        from spark_hub.manifest import write_manifest

        write_manifest(staging, _manifest(args, config, base, prm_info, problems_prov, key,
                                          {"global_step": step, "checkpoint": True}))

    return describe


def _push_final(args: GRPOTrainArgs, output_dir: Path) -> None:
    from spark_hub import hub

    result = hub.push(output_dir, args.hub_repo, revision=args.hub_revision, private=args.hub_private,
                      overwrite=args.hub_overwrite)
    logger.info("%s", result.summary() if hasattr(result, "summary") else result)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m spark_hub.train.grpo --config RECIPE.yaml [--set k=v ...] [--output-dir DIR] [--push]``
    (also under ``accelerate launch -m spark_hub.train.grpo ...``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m spark_hub.train.grpo", description="GRPO with a PRM reward.")
    parser.add_argument("--config", required=True, help="YAML recipe: GRPOTrainArgs + trl.GRPOConfig + trl.ModelConfig keys.")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--output-dir", default=None, help="The policy folder (overrides output_dir).")
    parser.add_argument("--push", action="store_true", default=None, help="Push checkpoints and the final policy.")
    parser.add_argument("--hub-repo", default=None)
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from trl import GRPOConfig, ModelConfig

    from spark_hub.config import parse_config

    try:
        args, training, model_args = parse_config(
            (GRPOTrainArgs, GRPOConfig, ModelConfig), ns.config, ns.overrides,
            flags={"output_dir": ns.output_dir, "push": ns.push, "hub_repo": ns.hub_repo})
        out = train_grpo(args, training, model_args)
    except SparkHubError as error:
        parser.exit(2, f"error: {error.one_line()}\n")
    logger.info("done: %s", out)
    return 0


__all__ = ["DEFAULT_TRAINING_ARGS", "DESIGNS", "GRPOTrainArgs", "Guards", "Monitor", "POLICY_SYSTEM_PROMPT",
           "SparkGRPOTrainer", "build_key", "main", "policy_messages", "train_grpo"]


if __name__ == "__main__":
    raise SystemExit(main())
