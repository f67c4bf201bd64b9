"""verl hooks called exactly as verl calls them, on verl-shaped inputs built here (verl itself is not
installed in the default environment): the async custom reward ``compute_score`` and the two advantage
estimators, plus `register` against a stand-in of verl's registry and trainer module."""

from __future__ import annotations

import asyncio
import sys
import types

import numpy as np
import pytest

from test_grpo import ScriptedPRM
from tiny_models import make_tiny_tokenizer

torch = pytest.importorskip("torch")

VALID_4 = ("<step>add the numbers</step><step>carry the one</step><step>check it</step><step>so 7</step>"
           "<answer>\\boxed{7}</answer>")
WRONG_4 = ("<step>add the numbers</step><step>wrong carry</step><step>check it</step><step>so 8</step>"
           "<answer>\\boxed{8}</answer>")
TWO_STEPS = "<step>add</step><step>so 7</step><answer>\\boxed{7}</answer>"
INVALID = VALID_4 + " Next problem: 2+2"


def _score(solution, prm, **kwargs):
    from spark_hub.integrations.verl import compute_score

    # verl: compute_score(data_source, solution_str, ground_truth, extra_info, **reward_kwargs), awaited
    return asyncio.run(compute_score("skywork", solution, "7", {"question": "What is 3 + 4?", "index": 0},
                                     prm=prm, **kwargs))


def test_compute_score_returns_the_prm_verdict_and_step_labels_as_extra_info():
    prm = ScriptedPRM()
    good = _score(VALID_4, prm)
    assert good == {"score": 1.0, "step_labels": "++++", "n_steps": 4, "prm_n_steps": 4, "valid_format": True,
                    "final_verdict": 1, "format_reason": "ok"}
    bad = _score(WRONG_4, prm)
    assert bad["score"] == 0.0 and bad["step_labels"] == "+-++" and bad["final_verdict"] == 0
    augmented = _score(WRONG_4, prm, design="step_augmented")
    assert augmented["score"] == pytest.approx(0.4 * 3 / 4)
    calls = prm.calls
    invalid = _score(INVALID, prm)
    assert invalid["score"] == 0.0 and not invalid["valid_format"] and invalid["step_labels"] == ""
    assert prm.calls == calls, "an invalid format never reaches the PRM"
    # every call returns the same keys, and verl's np.array(values) of each key stays one-dimensional
    rows = [good, bad, invalid]
    assert len({tuple(sorted(r)) for r in rows}) == 1
    for key in rows[0]:
        assert np.array([r[key] for r in rows]).shape == (3,)


def test_compute_score_runs_concurrently_and_names_a_missing_problem():
    from spark_hub.errors import SparkHubError
    from spark_hub.integrations.verl import compute_score

    prm = ScriptedPRM()

    async def many():
        return await asyncio.gather(*[compute_score("s", s, None, {"problem": "p"}, prm=prm)
                                      for s in (VALID_4, WRONG_4) * 8])

    results = asyncio.run(many())
    assert [r["score"] for r in results] == [1.0, 0.0] * 8, "concurrent calls never mix their details"
    with pytest.raises(SparkHubError, match="no problem text"):
        asyncio.run(compute_score("s", VALID_4, None, {"index": 3}, prm=prm))


def _verl_batch(tokenizer, solutions, scores, uids):
    """What verl hands an estimator: right-padded responses, a response mask, the score at the last
    response token, uid groups, and compute_score's extra info as numpy arrays in non_tensor_batch."""
    prm = ScriptedPRM()
    infos = [_score(s, prm) for s in solutions]
    ids = [tokenizer.encode(s, add_special_tokens=False) + [tokenizer.eos_token_id] for s in solutions]
    width = max(map(len, ids)) + 3
    responses = torch.full((len(ids), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    rewards = torch.zeros((len(ids), width))
    for i, (row, score) in enumerate(zip(ids, scores)):
        responses[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        rewards[i, len(row) - 1] = score
    non_tensor = {k: np.array([info[k] for info in infos]) for k in infos[0] if k != "score"}
    non_tensor["uid"] = np.array(uids, dtype=object)
    return rewards, mask, non_tensor, {"responses": responses, "response_mask": mask}


@pytest.mark.parametrize("name", ["spark_selective_advantage", "spark_global_step"])
def test_estimators_on_verl_shaped_inputs_match_the_shared_advantage_maths(name):
    from spark_hub import advantages as adv
    from spark_hub.integrations.verl import ESTIMATORS

    tok = make_tiny_tokenizer()
    solutions = [VALID_4, WRONG_4, TWO_STEPS, INVALID, VALID_4, WRONG_4]
    scores = [1.0, 0.0, 1.0, 0.0, 1.0, 1.0]
    uids = ["a", "a", "a", "a", "b", "b"]
    rewards, mask, non_tensor, batch = _verl_batch(tok, solutions, scores, uids)
    fn = ESTIMATORS[name]
    advantages, returns = fn(token_level_rewards=rewards, response_mask=mask, index=non_tensor["uid"], config=None,
                             non_tensor_batch=non_tensor, batch=batch, tokenizer=tok)
    assert advantages.shape == rewards.shape and torch.equal(advantages, returns)
    assert (advantages[mask == 0] == 0).all()

    # verl's GRPO outcome advantage by hand: group a = [1, 0, 1, 0], group b = [1, 1]
    a = torch.tensor([1.0, 0.0, 1.0, 0.0])
    outcome = torch.cat([(a - a.mean()) / (a.std() + 1e-6), torch.zeros(2)])
    labels = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1], [1, 1, float("nan"), float("nan")]] + [[float("nan")] * 4]
                          + [[1, 1, 1, 1], [1, 0, 1, 1]], dtype=torch.float)
    n_steps = torch.tensor([4, 4, 2, 4, 4, 4])
    prm_n = torch.tensor([4, 4, 2, -1, 4, 4])
    index = torch.stack([torch.tensor(adv.token_step_index(r[m.bool()].tolist(), tok) + [-1] * int((m == 0).sum()))
                         for r, m in zip(batch["responses"], mask)])
    assert (index[0] >= 0).sum() > 0 and index[0].max() == 3
    if name == "spark_selective_advantage":
        expected = adv.selective_advantage(outcome, index, labels, n_steps, prm_n, completion_mask=mask)
        # group a, row 1 (Â < 0, step 2 labelled incorrect): only that step's tokens and the answer keep Â
        row = advantages[1]
        assert (row[index[1] == 1] == outcome[1]).all() and (row[index[1] == 0] == 0).all()
        assert (advantages[2] == 0).all(), "two steps: the selective guard zeroes the row"
    else:
        stats = adv.stats_from_moments(adv.step_reward_moments(labels, n_steps, prm_n))
        expected = adv.global_step_advantage(outcome, index, labels, n_steps, prm_n, mask, step_stats=stats)
    assert torch.allclose(advantages, expected, atol=1e-5)


def test_estimators_need_the_step_data():
    from spark_hub.errors import SparkHubError
    from spark_hub.integrations.verl import selective_advantage_estimator

    rewards = torch.zeros((2, 4))
    mask = torch.ones((2, 4))
    with pytest.raises(SparkHubError, match="step_labels"):
        selective_advantage_estimator(rewards, mask, np.array(["a", "a"], dtype=object), None)


@pytest.fixture
def fake_verl(monkeypatch):
    """A stand-in for verl's registry (core_algos.register_adv_est, same semantics) and ray_trainer.compute_advantage."""
    registry: dict = {}

    def register_adv_est(name):
        def decorator(fn):
            if name in registry and registry[name] != fn:
                raise ValueError(f"Adv estimator {name} has already been registered")
            registry[name] = fn
            return fn
        return decorator

    core_algos = types.SimpleNamespace(ADV_ESTIMATOR_REGISTRY=registry, register_adv_est=register_adv_est,
                                       get_adv_estimator_fn=lambda name: registry[name])
    calls = []

    def compute_advantage(data, adv_estimator, gamma=1.0, lam=1.0, num_repeat=1, norm_adv_by_std_in_grpo=True,
                          config=None):
        calls.append(adv_estimator)
        data.batch["advantages"] = "verl's own"
        return data

    ray_trainer = types.SimpleNamespace(compute_advantage=compute_advantage, compute_response_mask=None)
    ppo = types.ModuleType("verl.trainer.ppo")
    ppo.core_algos, ppo.ray_trainer = core_algos, ray_trainer
    for name, module in {"verl": types.ModuleType("verl"), "verl.trainer": types.ModuleType("verl.trainer"),
                         "verl.trainer.ppo": ppo, "verl.trainer.ppo.core_algos": core_algos,
                         "verl.trainer.ppo.ray_trainer": ray_trainer}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return types.SimpleNamespace(registry=registry, ray_trainer=ray_trainer, calls=calls)


def test_register_adds_the_estimators_and_routes_step_data_only_to_them(fake_verl, monkeypatch):
    from spark_hub.integrations import verl as hook

    monkeypatch.setattr(hook, "_DEFAULTS", {})
    tok = make_tiny_tokenizer()
    assert hook.register(tokenizer=tok) == ["spark_selective_advantage", "spark_global_step"]
    assert fake_verl.registry["spark_selective_advantage"] is hook.selective_advantage_estimator
    assert hook.register(tokenizer=tok), "registering twice is harmless"

    rewards, mask, non_tensor, batch = _verl_batch(tok, [VALID_4, WRONG_4], [1.0, 0.0], ["a", "a"])
    data = types.SimpleNamespace(batch={"token_level_rewards": rewards, "response_mask": mask, **batch},
                                 non_tensor_batch=non_tensor)
    # exactly how verl's fit() calls it
    out = fake_verl.ray_trainer.compute_advantage(data, adv_estimator="spark_global_step", gamma=1.0, lam=1.0,
                                                  num_repeat=2, norm_adv_by_std_in_grpo=True, config=None)
    assert out.batch["advantages"].shape == rewards.shape and fake_verl.calls == []
    other = fake_verl.ray_trainer.compute_advantage(data, adv_estimator="grpo", config=None)
    assert other.batch["advantages"] == "verl's own" and fake_verl.calls == ["grpo"]


def test_register_without_verl_names_the_extra(monkeypatch):
    from spark_hub.errors import SparkHubError
    from spark_hub.integrations import verl as hook

    monkeypatch.setitem(sys.modules, "verl", None)
    with pytest.raises(SparkHubError, match=r"spark-hub\[verl\]"):
        hook.register()


@pytest.mark.slow
def test_real_verl_registry_accepts_the_estimators():
    pytest.importorskip("verl.trainer.ppo.core_algos", reason="verl is not installed (pip install 'spark-hub[verl]')")
    from verl.trainer.ppo import core_algos

    from spark_hub.integrations import verl as hook

    hook.register(tokenizer=make_tiny_tokenizer(), patch_compute_advantage=False)
    assert core_algos.get_adv_estimator_fn("spark_global_step") is hook.global_step_estimator
