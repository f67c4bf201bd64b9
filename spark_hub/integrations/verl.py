"""SPARK's process rewards in verl (cluster-scale GRPO), without forking verl.

Two hooks, both documented in ``docs/verl.md`` with the paper's recipe:

1. **Reward**: `compute_score` for verl's custom reward function (``custom_reward_function.path=
   pkg://spark_hub.integrations.verl``, ``.name=compute_score``). It is async (verl's reward loop runs
   many at once); it cuts the response at ``</answer>``, checks the format (`spark_hub.rewards`) and asks
   the PRM, served behind an OpenAI-compatible endpoint (``vllm serve``), through `spark_hub.prm.load_prm`
   (the PRM's own spec picks the prompt). It returns ``{"score": r, ...}``; the other keys (step labels,
   step counts, format flag) become verl's ``reward_extra_info`` and land in ``non_tensor_batch``.
   Step labels travel as strings (``"+-+?"``: correct / incorrect / unknown) so that verl's
   ``np.array(values)`` never meets ragged lists.

2. **Advantages**: `selective_advantage_estimator` and `global_step_estimator`, with verl's estimator
   signature (``token_level_rewards``, ``response_mask``, ``index``, ``config``) plus the step data
   (``non_tensor_batch``, and ``batch["responses"]`` + the policy tokenizer to place the steps on
   tokens). `register` registers them with ``verl.trainer.ppo.core_algos.register_adv_est`` as
   ``spark_selective_advantage`` and ``spark_global_step`` (select with ``algorithm.adv_estimator=...``).
   verl hands registered estimators only the four standard arguments, so `register` also wraps
   ``verl.trainer.ppo.ray_trainer.compute_advantage`` (a module global looked up at call time) so that,
   for these two names only, the estimator also receives ``non_tensor_batch`` and ``batch``; every other
   estimator goes through verl's code untouched.

Registration must happen in the process that computes advantages (verl's TaskRunner actor): set
``VERL_USE_EXTERNAL_MODULES=spark_hub.integrations.verl`` (verl imports it at ``import verl`` and this
module then calls `register` itself), and ``SPARK_HUB_VERL_TOKENIZER=<policy model path>``.

The maths is `spark_hub.advantages` (shared with the TRL trainer): verl's GRPO outcome advantage per
group (``index`` = uid), then the selective or global-step spreading with the paper's guards.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections import defaultdict
from typing import Any, Mapping, Sequence

from spark_hub.errors import SparkHubError

logger = logging.getLogger(__name__)

SELECTIVE_NAME = "spark_selective_advantage"
GLOBAL_STEP_NAME = "spark_global_step"
TOKENIZER_ENV = "SPARK_HUB_VERL_TOKENIZER"

#: Keys `compute_score` returns besides "score" (always all of them, so verl's arrays line up).
EXTRA_KEYS = ("step_labels", "n_steps", "prm_n_steps", "valid_format", "final_verdict", "format_reason")


# ------------------------------------------------------------------------------------------------
# Reward: verl's custom reward function
# ------------------------------------------------------------------------------------------------

_PRMS: dict[tuple, Any] = {}
_PRMS_LOCK = threading.Lock()


def _prm(prm: Any, revision: str | None, base_url: str | None, served_model: str | None,
         max_concurrency: int | None) -> Any:
    """A PRM object (given) or one loaded once per process (served behind ``base_url``)."""
    if prm is None:
        raise SparkHubError("compute_score needs a PRM",
                            hint="custom_reward_function.reward_kwargs.prm=PRM_FOLDER_OR_REPO and .base_url=URL")
    if not isinstance(prm, str):
        return prm
    key = (prm, revision, base_url, served_model, max_concurrency)
    with _PRMS_LOCK:
        if key not in _PRMS:
            from spark_hub.prm import load_prm

            options: dict[str, Any] = {}
            if base_url:
                options.update(base_url=base_url, model=served_model or prm)
                if max_concurrency:
                    options["max_concurrency"] = max_concurrency
            _PRMS[key] = load_prm(prm, revision=revision, backend="openai" if base_url else "transformers", **options)
        return _PRMS[key]


def _problem(extra_info: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> str:
    for source in (kwargs, extra_info or {}):
        for key in ("problem", "question", "prompt"):
            value = source.get(key)
            if isinstance(value, str) and value:
                return value
            if isinstance(value, (list, tuple)) and value:  # chat messages
                from spark_hub.rewards import prompt_problem

                return prompt_problem(list(value))
    raise SparkHubError("compute_score found no problem text",
                        hint="put the problem in extra_info['question'] (verl's preprocessing) or extra_info['problem']")


def _labels_text(labels: Sequence[bool | None] | None) -> str:
    return "".join("+" if v is True else "-" if v is False else "?" for v in (labels or []))


async def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any = None,
    extra_info: Mapping[str, Any] | None = None,
    *,
    prm: Any = None,
    prm_revision: str | None = None,
    base_url: str | None = None,
    served_model: str | None = None,
    max_concurrency: int | None = None,
    design: str = "outcome",
    **kwargs: Any,
) -> dict[str, Any]:
    """verl custom reward: the PRM's verdict on one response (0 for an invalid format).

    Args (verl's): ``data_source``, ``solution_str`` (the decoded response), ``ground_truth`` (unused:
        the reward is reference-free), ``extra_info`` (must hold the problem: ``question`` or ``problem``).
    Args (``custom_reward_function.reward_kwargs``):
        prm: the PRM folder or Hub repo (its ``prm_spec.json`` decides the prompt), or a PRM object.
        prm_revision: Hub revision of ``prm``.
        base_url, served_model: the OpenAI-compatible server and the model name it serves.
        max_concurrency: requests in flight from this process (the openai backend's limit).
        design: ``outcome`` (r = y, SPARK's process-aware reward; what the step-level estimators take
            as the outcome) or ``step_augmented`` (0.4·k/n + 0.6·y).

    Returns:
        ``{"score": float, "step_labels": "+-+", "n_steps": int, "prm_n_steps": int,
        "valid_format": bool, "final_verdict": int (1, 0, -1 = none), "format_reason": str}``.
    """
    from spark_hub.rewards import PRMReward

    problem = _problem(extra_info, kwargs)
    model = _prm(prm, prm_revision, base_url, served_model, max_concurrency)
    reward = PRMReward(model, design)  # one object per call: its last_details belong to this call only
    [score] = await asyncio.to_thread(reward, [problem], [solution_str], problem=[problem])
    d = reward.last_details[0]
    verdict = d.get("final_verdict")
    return {
        "score": float(score or 0.0),
        "step_labels": _labels_text(d.get("step_labels")),
        "n_steps": int(d.get("n_steps") or 0),
        "prm_n_steps": int(d.get("prm_n_steps", -1)),
        "valid_format": bool(d.get("valid_format")),
        "final_verdict": -1 if verdict is None else int(bool(verdict)),
        "format_reason": str(d.get("format_reason") or ""),
    }


# ------------------------------------------------------------------------------------------------
# Advantages: verl-shaped estimators
# ------------------------------------------------------------------------------------------------


def grpo_outcome_advantage(scores, index: Sequence[Any], *, epsilon: float = 1e-6, norm_by_std: bool = True):
    """verl's GRPO outcome advantage per response (B,): score minus its group's mean, over the
    group's (unbiased) std + epsilon; a group of one gets mean 0 and std 1, as in verl."""
    import torch

    groups: dict[Any, list[int]] = defaultdict(list)
    for i, key in enumerate(index):
        groups[key].append(i)
    out = scores.clone().float()
    for members in groups.values():
        values = scores[members].float()
        mean, std = (values.mean(), values.std()) if len(members) > 1 else (torch.tensor(0.0), torch.tensor(1.0))
        out[members] = (values - mean) / (std + epsilon) if norm_by_std else values - mean
    return out


def _column(non_tensor_batch: Mapping[str, Any] | None, key: str, n: int) -> list:
    if non_tensor_batch is None or key not in non_tensor_batch:
        raise SparkHubError(f"the batch has no {key!r} column",
                            hint="use spark_hub.integrations.verl.compute_score as the custom reward function, "
                                 "and call register() so the estimator receives non_tensor_batch")
    values = list(non_tensor_batch[key])
    if len(values) != n:
        raise SparkHubError(f"{key!r} has {len(values)} rows for {n} responses")
    return values


def _step_details(non_tensor_batch: Mapping[str, Any] | None, n: int) -> list[dict[str, Any]]:
    """`compute_score`'s extra info (numpy arrays in ``non_tensor_batch``) back into reward details."""
    labels = _column(non_tensor_batch, "step_labels", n)
    n_steps = _column(non_tensor_batch, "n_steps", n)
    prm_n = _column(non_tensor_batch, "prm_n_steps", n)
    valid = list(non_tensor_batch.get("valid_format", [True] * n))
    details = []
    for text, k, m, v in zip(labels, n_steps, prm_n, valid):
        if isinstance(text, str):
            parsed = [True if c == "+" else False if c == "-" else None for c in text]
        else:  # a list of bools / ints (another reward function)
            parsed = [None if x is None or (isinstance(x, float) and x != x) else bool(x) for x in (text or [])]
        details.append({"step_labels": parsed or None, "n_steps": int(k), "prm_n_steps": int(m),
                        "valid_format": bool(v)})
    return details


_TOKENIZERS: dict[str, Any] = {}


def _tokenizer(tokenizer: Any) -> Any:
    if tokenizer is None:
        tokenizer = _DEFAULTS.get("tokenizer") or os.environ.get(TOKENIZER_ENV)
    if tokenizer is None:
        raise SparkHubError("the step-level estimators need the policy tokenizer to place steps on tokens",
                            hint=f"register(tokenizer=MODEL_PATH) or set {TOKENIZER_ENV}=MODEL_PATH")
    if isinstance(tokenizer, str):
        if tokenizer not in _TOKENIZERS:
            from transformers import AutoTokenizer

            _TOKENIZERS[tokenizer] = AutoTokenizer.from_pretrained(tokenizer)
        return _TOKENIZERS[tokenizer]
    return tokenizer


def _step_index(response_mask, batch: Mapping[str, Any] | None, step_index, tokenizer):
    import torch

    from spark_hub import advantages as adv

    if step_index is not None:
        return torch.as_tensor(step_index, device=response_mask.device).long()
    responses = None if batch is None else batch.get("responses") if hasattr(batch, "get") else batch["responses"]
    if responses is None:
        raise SparkHubError("the step-level estimators need batch['responses'] (token ids) or step_index")
    tok = _tokenizer(tokenizer)
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(responses.cpu(), response_mask.cpu())]
    # responses are right-padded after the prompt: real tokens come first, so positions line up
    return adv.step_index(rows, tok, pad_to=response_mask.shape[1]).to(response_mask.device)


def _estimate(kind: str, token_level_rewards, response_mask, index, config, non_tensor_batch, batch, step_index,
              tokenizer, epsilon, norm_adv_by_std_in_grpo, options: Mapping[str, Any]):
    import torch

    from spark_hub import advantages as adv

    n = token_level_rewards.shape[0]
    if index is None:
        raise SparkHubError("GRPO needs the group index (verl's non_tensor_batch['uid'])")
    if config is not None and hasattr(config, "get"):
        norm_adv_by_std_in_grpo = config.get("norm_adv_by_std_in_grpo", norm_adv_by_std_in_grpo)
    with torch.no_grad():
        scores = token_level_rewards.sum(dim=-1)
        outcome = grpo_outcome_advantage(scores, list(index), epsilon=epsilon, norm_by_std=norm_adv_by_std_in_grpo)
        details = _step_details(non_tensor_batch, n)
        labels, n_steps, prm_n = adv.pack_details(details, device=token_level_rewards.device)
        tokens = _step_index(response_mask, batch, step_index, tokenizer)
        settings = {**_DEFAULTS.get(kind, {}), **options}
        if kind == SELECTIVE_NAME:
            result = adv.selective_advantage(
                outcome, tokens, labels, n_steps, prm_n, completion_mask=response_mask,
                min_steps=settings.get("min_steps", adv.SELECTIVE_MIN_STEPS),
                max_steps=settings.get("max_steps", adv.SELECTIVE_MAX_STEPS))
        else:
            lo = settings.get("min_steps", adv.GLOBAL_MIN_STEPS)
            hi = settings.get("max_steps", adv.GLOBAL_MAX_STEPS)
            # verl computes advantages on the driver over the whole batch: its statistics are batch-wide
            stats = adv.stats_from_moments(adv.step_reward_moments(labels, n_steps, prm_n, min_steps=lo, max_steps=hi))
            result = adv.global_step_advantage(
                outcome, tokens, labels, n_steps, prm_n, response_mask, min_steps=lo, max_steps=hi,
                outcome_weight=settings.get("outcome_weight", 0.8), step_weight=settings.get("step_weight", 0.2),
                step_stats=stats)
    result = result.to(token_level_rewards.dtype)
    return result, result


def selective_advantage_estimator(
    token_level_rewards, response_mask, index=None, config=None, *, non_tensor_batch=None, batch=None,
    step_index=None, tokenizer=None, epsilon: float = 1e-6, norm_adv_by_std_in_grpo: bool = True, **options,
):
    """verl advantage estimator ``spark_selective_advantage``: ``(advantages, returns)``, both (B, T).

    Args (verl's): ``token_level_rewards`` (B, T) (the score at the last response token),
        ``response_mask`` (B, T), ``index`` (B,) group ids (``uid``), ``config`` (``algorithm``).
    Args (step data): ``non_tensor_batch`` with `compute_score`'s ``step_labels``, ``n_steps``,
        ``prm_n_steps`` (and ``valid_format``); ``batch["responses"]`` (B, T) token ids with the policy
        ``tokenizer`` (or a precomputed ``step_index`` (B, T)). Options: ``min_steps`` (4), ``max_steps`` (20).
    """
    return _estimate(SELECTIVE_NAME, token_level_rewards, response_mask, index, config, non_tensor_batch, batch,
                     step_index, tokenizer, epsilon, norm_adv_by_std_in_grpo, options)


def global_step_estimator(
    token_level_rewards, response_mask, index=None, config=None, *, non_tensor_batch=None, batch=None,
    step_index=None, tokenizer=None, epsilon: float = 1e-6, norm_adv_by_std_in_grpo: bool = True, **options,
):
    """verl advantage estimator ``spark_global_step``: 0.8·Â_outcome + 0.2·Â_step (B, T); the ±1/n step
    rewards are normalised over the whole batch. Options: ``min_steps`` (3), ``max_steps`` (20),
    ``outcome_weight`` (0.8), ``step_weight`` (0.2). Arguments as `selective_advantage_estimator`."""
    return _estimate(GLOBAL_STEP_NAME, token_level_rewards, response_mask, index, config, non_tensor_batch, batch,
                     step_index, tokenizer, epsilon, norm_adv_by_std_in_grpo, options)


ESTIMATORS = {SELECTIVE_NAME: selective_advantage_estimator, GLOBAL_STEP_NAME: global_step_estimator}
_DEFAULTS: dict[str, Any] = {}


# ------------------------------------------------------------------------------------------------
# Registration
# ------------------------------------------------------------------------------------------------


def register(tokenizer: Any = None, *, patch_compute_advantage: bool = True,
             selective: Mapping[str, Any] | None = None, global_step: Mapping[str, Any] | None = None) -> list[str]:
    """Register the two estimators with verl (``register_adv_est``); return their names.

    Args:
        tokenizer: the policy tokenizer or its path (default ``$SPARK_HUB_VERL_TOKENIZER``).
        patch_compute_advantage: wrap ``verl.trainer.ppo.ray_trainer.compute_advantage`` so these two
            estimators also get ``non_tensor_batch`` and ``batch`` (verl passes them to its own GDPO only).
        selective, global_step: guard / weight options, e.g. ``{"min_steps": 4, "max_steps": 20}``.

    Raises:
        `SparkHubError` when verl is not installed (``pip install spark-hub[verl]``).
    """
    try:
        from verl.trainer.ppo import core_algos
    except ImportError as e:
        raise SparkHubError(f"verl is not importable ({e})", hint="pip install 'spark-hub[verl]'") from e
    if tokenizer is not None:
        _DEFAULTS["tokenizer"] = tokenizer
    _DEFAULTS[SELECTIVE_NAME] = dict(selective or {})
    _DEFAULTS[GLOBAL_STEP_NAME] = dict(global_step or {})
    registry = getattr(core_algos, "ADV_ESTIMATOR_REGISTRY", {})
    for name, fn in ESTIMATORS.items():
        if registry.get(name) is not fn:
            core_algos.register_adv_est(name)(fn)
    if patch_compute_advantage:
        _patch_compute_advantage()
    logger.info("registered verl advantage estimators %s", ", ".join(ESTIMATORS))
    return list(ESTIMATORS)


def _patch_compute_advantage() -> None:
    try:
        from verl.trainer.ppo import ray_trainer
    except ImportError:  # pragma: no cover - verl without its trainer (e.g. a partial install)
        logger.warning("verl.trainer.ppo.ray_trainer is not importable: the estimators get no step data")
        return
    original = ray_trainer.compute_advantage
    if getattr(original, "_spark_hub", False):
        return

    def compute_advantage(data, adv_estimator, *args, **kwargs):
        name = getattr(adv_estimator, "value", adv_estimator)
        if name not in ESTIMATORS:
            return original(data, adv_estimator, *args, **kwargs)
        if "response_mask" not in data.batch.keys():
            data.batch["response_mask"] = ray_trainer.compute_response_mask(data)
        config = kwargs.get("config")
        norm = kwargs.get("norm_adv_by_std_in_grpo", True)
        advantages, returns = ESTIMATORS[name](
            token_level_rewards=data.batch["token_level_rewards"], response_mask=data.batch["response_mask"],
            index=data.non_tensor_batch["uid"], config=config, non_tensor_batch=data.non_tensor_batch,
            batch=data.batch, norm_adv_by_std_in_grpo=norm)
        data.batch["advantages"] = advantages
        data.batch["returns"] = returns
        return data

    compute_advantage._spark_hub = True  # type: ignore[attr-defined]
    compute_advantage.__wrapped__ = original  # type: ignore[attr-defined]
    ray_trainer.compute_advantage = compute_advantage


def _auto_register() -> None:
    """Imported by verl itself (``VERL_USE_EXTERNAL_MODULES=spark_hub.integrations.verl``): register."""
    if "verl" not in sys.modules:
        return
    try:
        register()
    except Exception:  # never break verl's import; the estimator will say what is missing when used
        logger.warning("spark-hub could not register its verl estimators", exc_info=True)


__all__ = ["ESTIMATORS", "GLOBAL_STEP_NAME", "SELECTIVE_NAME", "compute_score", "global_step_estimator",
           "grpo_outcome_advantage", "register", "selective_advantage_estimator"]

_auto_register()
