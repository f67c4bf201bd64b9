"""Token-level advantages from step labels (SPARK §3, designs 3 and 4): pure torch functions.

GRPO gives every token of a completion the same group-normalised outcome advantage Â (shape
(B,)). With a PRM's per-step labels, these functions spread it over tokens (shape (B, T)), which
TRL's GRPOTrainer accepts in place of the (B,) advantages:

- `selective_advantage`: on the tokens of step j keep Â only when step j's label agrees with the
  sign of Â (Â ≥ 0 and correct, or Â < 0 and incorrect), else 0.
- `global_step_advantage`: each step earns ±1/n (correct/incorrect, n steps); these are
  normalised with batch-wide statistics (mean and std over every eligible step of the batch,
  across processes when ``step_stats`` comes from `step_reward_moments` summed over them) and
  combined as ``outcome_weight · Â + step_weight · Â_step`` (0.8 / 0.2).

Inputs, one row per completion:

- ``step_index`` (B, T) long: j for the tokens of policy step j (``<step>…</step>``, tags
  included), -1 for tokens outside every step (the answer, whitespace, padding); `step_index`
  builds it from completion ids and the policy tokenizer.
- ``step_labels`` (B, S) float: 1 correct, 0 incorrect, nan unknown / padding.
- ``n_steps`` (B,): the policy's step count; ``prm_n_steps`` (B,): how many labels the PRM gave
  that line up with those steps (-1 when they do not). `pack_details` builds these three from a
  reward's ``last_details`` (`spark_hub.rewards`).

Guards (the paper's, thresholds configurable):

- selective advantage: fewer than ``min_steps`` (4) or more than ``max_steps`` (20) policy steps
  zero the whole row (outcome and step parts);
- global step: fewer than 3 or more than 20 steps zero the step part (the outcome part stays);
- both: a mismatch between the policy's step count and the PRM's labels (``prm_n_steps !=
  n_steps``, or an unknown label among the first n) zeroes the step part and keeps the outcome:
  for selective advantage that is plain Â on every token.

Tokens outside every step keep Â (selective) or ``outcome_weight · Â`` (global step). Padding is
zeroed when ``completion_mask`` is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

SELECTIVE_MIN_STEPS, SELECTIVE_MAX_STEPS = 4, 20
GLOBAL_MIN_STEPS, GLOBAL_MAX_STEPS = 3, 20


@dataclass(frozen=True)
class StepGuards:
    """Step-count bounds: rows with fewer than ``min_steps`` or more than ``max_steps`` steps are guarded."""

    min_steps: int
    max_steps: int


SELECTIVE_GUARDS = StepGuards(SELECTIVE_MIN_STEPS, SELECTIVE_MAX_STEPS)
GLOBAL_STEP_GUARDS = StepGuards(GLOBAL_MIN_STEPS, GLOBAL_MAX_STEPS)


def _labels_mismatch(step_labels: torch.Tensor, n_steps: torch.Tensor, prm_n_steps: torch.Tensor) -> torch.Tensor:
    """(B,) True where the PRM's labels do not line up with the policy's steps."""
    n_steps = n_steps.to(step_labels.device).long()
    prm_n_steps = prm_n_steps.to(step_labels.device).long()
    width = step_labels.shape[1]
    within = torch.arange(width, device=step_labels.device)[None, :] < n_steps[:, None]
    unknown = (torch.isnan(step_labels) & within).any(dim=1)
    return (prm_n_steps != n_steps) | unknown | (n_steps > width)


def guard_hits(
    n_steps: torch.Tensor,
    step_labels: torch.Tensor,
    prm_n_steps: torch.Tensor,
    *,
    min_steps: int,
    max_steps: int,
) -> dict[str, torch.Tensor]:
    """Which rows each guard hits: ``{"too_few", "too_many", "mismatch"}`` -> (B,) bool.

    >>> hits = guard_hits(torch.tensor([2, 5, 25]), torch.ones(3, 25), torch.tensor([2, 4, 25]),
    ...                   min_steps=4, max_steps=20)
    >>> {k: v.tolist() for k, v in hits.items()}
    {'too_few': [True, False, False], 'too_many': [False, False, True], 'mismatch': [False, True, False]}
    """
    n = n_steps.to(step_labels.device).long()
    return {
        "too_few": n < min_steps,
        "too_many": n > max_steps,
        "mismatch": _labels_mismatch(step_labels, n, prm_n_steps),
    }


def _token_labels(step_index: torch.Tensor, step_labels: torch.Tensor) -> torch.Tensor:
    """(B, T) label of the step each token belongs to (nan outside steps)."""
    if step_labels.shape[1] == 0:
        return torch.full(step_index.shape, float("nan"), device=step_index.device)
    idx = step_index.clamp(min=0, max=step_labels.shape[1] - 1)
    labels = torch.gather(step_labels.float(), 1, idx)
    return torch.where(step_index >= 0, labels, torch.full_like(labels, float("nan")))


def selective_advantage(
    outcome_adv: torch.Tensor,
    step_index: torch.Tensor,
    step_labels: torch.Tensor,
    n_steps: torch.Tensor,
    prm_n_steps: torch.Tensor,
    *,
    min_steps: int = SELECTIVE_MIN_STEPS,
    max_steps: int = SELECTIVE_MAX_STEPS,
    completion_mask: torch.Tensor | None = None,
    disagree_scale: float = 0.0,
) -> torch.Tensor:
    """Per-token advantages (B, T): Â kept on a step's tokens only where its label agrees with Â's sign.

    Args:
        outcome_adv: (B,) group-normalised outcome advantages.
        step_index, step_labels, n_steps, prm_n_steps: see the module docstring.
        min_steps, max_steps: the guard; rows outside it get 0 everywhere.
        completion_mask: (B, T) 1 for real tokens; padding gets 0.
        disagree_scale: what a disagreeing step keeps of Â (0: the paper's selective advantage; 0.5:
            a "half-discount" variant, which the paper's code names but whose definition is unknown).

    >>> idx = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3, -1]])
    >>> labels = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    >>> selective_advantage(torch.tensor([0.5]), idx, labels, torch.tensor([4]), torch.tensor([4])).tolist()
    [[0.5, 0.5, 0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.5]]
    """
    adv = outcome_adv.float().to(step_index.device)
    labels = step_labels.float().to(step_index.device)
    hits = guard_hits(n_steps, labels, prm_n_steps, min_steps=min_steps, max_steps=max_steps)
    token_labels = _token_labels(step_index, labels)
    positive = adv[:, None] >= 0
    agree = (positive & (token_labels == 1)) | (~positive & (token_labels == 0))
    keep = (step_index < 0) | agree | hits["mismatch"][:, None]
    full = adv[:, None].expand_as(token_labels)
    out = torch.where(keep, full, full * disagree_scale)
    out = torch.where((hits["too_few"] | hits["too_many"])[:, None], torch.zeros_like(out), out)
    if completion_mask is not None:
        out = out * completion_mask.to(out.dtype)
    return out


def step_rewards(step_labels: torch.Tensor, n_steps: torch.Tensor) -> torch.Tensor:
    """(B, S) per-step rewards: +1/n for a correct step, -1/n for an incorrect one, nan elsewhere.

    >>> step_rewards(torch.tensor([[1.0, 0.0, 1.0, 1.0]]), torch.tensor([4])).tolist()
    [[0.25, -0.25, 0.25, 0.25]]
    """
    labels = step_labels.float()
    n = n_steps.to(labels.device).float().clamp(min=1)[:, None]
    within = torch.arange(labels.shape[1], device=labels.device)[None, :] < n_steps.to(labels.device)[:, None]
    reward = torch.where(labels == 1, 1.0 / n, torch.where(labels == 0, -1.0 / n, torch.full_like(labels, float("nan"))))
    return torch.where(within, reward, torch.full_like(reward, float("nan")))


def _step_eligible(step_labels, n_steps, prm_n_steps, min_steps, max_steps) -> torch.Tensor:
    hits = guard_hits(n_steps, step_labels, prm_n_steps, min_steps=min_steps, max_steps=max_steps)
    return ~(hits["too_few"] | hits["too_many"] | hits["mismatch"])


def step_reward_moments(
    step_labels: torch.Tensor,
    n_steps: torch.Tensor,
    prm_n_steps: torch.Tensor,
    *,
    min_steps: int = GLOBAL_MIN_STEPS,
    max_steps: int = GLOBAL_MAX_STEPS,
) -> torch.Tensor:
    """``tensor([sum, sum of squares, count])`` of the step rewards of the eligible rows.

    Sum it over processes (``accelerator.reduce(m, "sum")``) and pass `stats_from_moments` of the
    total as ``step_stats`` to normalise with whole-batch statistics.
    """
    rewards = step_rewards(step_labels, n_steps)
    eligible = _step_eligible(step_labels, n_steps, prm_n_steps, min_steps, max_steps)[:, None] & ~torch.isnan(rewards)
    values = rewards[eligible].double()
    return torch.stack([values.sum(), (values * values).sum(), torch.tensor(float(values.numel()), dtype=torch.float64)])


def stats_from_moments(moments: torch.Tensor) -> tuple[float, float]:
    """``(mean, std)`` (population std) from `step_reward_moments` (summed); ``(0, 0)`` when empty."""
    total, squares, count = (float(x) for x in moments)
    if count <= 0:
        return 0.0, 0.0
    mean = total / count
    return mean, max(0.0, squares / count - mean * mean) ** 0.5


def global_step_advantage(
    outcome_adv: torch.Tensor,
    step_index: torch.Tensor,
    step_labels: torch.Tensor,
    n_steps: torch.Tensor,
    prm_n_steps: torch.Tensor,
    completion_mask: torch.Tensor | None = None,
    *,
    min_steps: int = GLOBAL_MIN_STEPS,
    max_steps: int = GLOBAL_MAX_STEPS,
    outcome_weight: float = 0.8,
    step_weight: float = 0.2,
    step_stats: tuple[float, float] | None = None,
    eps: float = 1e-4,
) -> torch.Tensor:
    """Per-token advantages (B, T): ``outcome_weight · Â + step_weight · Â_step``.

    Â_step on the tokens of step j is ``(r_j - mean) / (std + eps)`` with r_j = ±1/n
    (`step_rewards`) and mean/std over every eligible step of the batch (``step_stats``; default:
    this batch's, from `step_reward_moments`). Rows outside the guard or with mismatched labels
    get no step part; tokens outside every step get only the outcome part.

    >>> idx = torch.tensor([[0, 1, 2, -1], [0, 1, 2, -1]])
    >>> labels = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    >>> out = global_step_advantage(torch.tensor([1.0, -1.0]), idx, labels, torch.tensor([3, 3]), torch.tensor([3, 3]),
    ...                             step_stats=(0.0, 1.0), eps=0.0)
    >>> [[round(v, 4) for v in row] for row in out.tolist()]
    [[0.8667, 0.8667, 0.8667, 0.8], [-0.7333, -0.8667, -0.8667, -0.8]]
    """
    adv = outcome_adv.float().to(step_index.device)
    labels = step_labels.float().to(step_index.device)
    n_steps = n_steps.to(step_index.device)
    prm_n_steps = prm_n_steps.to(step_index.device)
    if step_stats is None:
        step_stats = stats_from_moments(step_reward_moments(labels, n_steps, prm_n_steps,
                                                            min_steps=min_steps, max_steps=max_steps))
    mean, std = step_stats
    normalised = (step_rewards(labels, n_steps) - mean) / (std + eps)
    token_step = _token_labels(step_index, normalised)  # gathers the normalised step reward per token
    eligible = _step_eligible(labels, n_steps, prm_n_steps, min_steps, max_steps)
    token_step = torch.where(eligible[:, None] & ~torch.isnan(token_step), token_step, torch.zeros_like(token_step))
    out = outcome_weight * adv[:, None] + step_weight * token_step
    if completion_mask is not None:
        out = out * completion_mask.to(out.dtype)
    return out


# ------------------------------------------------------------------------------------------------
# From reward details and token ids to tensors
# ------------------------------------------------------------------------------------------------


def pack_details(
    details: Sequence[Mapping[str, Any]], device: Any = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(step_labels (B, S), n_steps (B,), prm_n_steps (B,))`` from a reward's ``last_details``.

    >>> labels, n, m = pack_details([{"n_steps": 2, "step_labels": [True, None], "prm_n_steps": -1},
    ...                              {"n_steps": 0, "step_labels": None, "prm_n_steps": -1}])
    >>> labels.tolist(), n.tolist(), m.tolist()
    ([[1.0, nan], [nan, nan]], [2, 0], [-1, -1])
    """
    width = max([1] + [len(d.get("step_labels") or []) for d in details] + [int(d.get("n_steps") or 0) for d in details])
    labels = torch.full((len(details), width), float("nan"), device=device)
    for row, d in enumerate(details):
        for j, v in enumerate(d.get("step_labels") or []):
            if v is not None:
                labels[row, j] = 1.0 if v else 0.0
    n_steps = torch.tensor([int(d.get("n_steps") or 0) for d in details], dtype=torch.long, device=device)
    prm_n = torch.tensor([int(d.get("prm_n_steps", -1)) for d in details], dtype=torch.long, device=device)
    return labels, n_steps, prm_n


def token_step_index(completion_ids: Sequence[int], tokenizer: Any) -> list[int]:
    """Per token of one completion: the index of the policy step it belongs to, or -1.

    Decodes as TRL does (``skip_special_tokens=True``), cuts at ``</answer>`` and maps each
    ``<step>…</step>`` (tags included) to its tokens (`spark_hub.rewards.step_token_spans`).
    """
    from spark_hub.rewards import step_token_spans

    index = [-1] * len(completion_ids)
    for j, (start, end) in enumerate(step_token_spans(completion_ids, tokenizer)[1]):
        for t in range(start, end):
            index[t] = j
    return index


def step_index(
    completion_ids_list: Sequence[Sequence[int]], tokenizer: Any, *, pad_to: int | None = None, device: Any = None
) -> torch.Tensor:
    """(B, T) `token_step_index` of every completion, right-padded with -1 to ``pad_to`` (default:
    the longest completion), matching TRL's right-padded ``completion_ids``."""
    rows = [token_step_index(list(ids), tokenizer) for ids in completion_ids_list]
    width = pad_to if pad_to is not None else max([0] + [len(r) for r in rows])
    out = torch.full((len(rows), width), -1, dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        r = r[:width]
        if r:
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long, device=device)
    return out


__all__ = [
    "GLOBAL_STEP_GUARDS",
    "SELECTIVE_GUARDS",
    "StepGuards",
    "global_step_advantage",
    "guard_hits",
    "pack_details",
    "selective_advantage",
    "stats_from_moments",
    "step_index",
    "step_reward_moments",
    "step_rewards",
    "token_step_index",
]
