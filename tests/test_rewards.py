"""spark_hub.rewards and spark_hub.advantages on hand-built completions and hand-computed token masks."""

from __future__ import annotations

import asyncio
import doctest
import math
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from slow_checks import sleepy_or_magic

from spark_hub import advantages, rewards
from spark_hub.advantages import (
    global_step_advantage,
    guard_hits,
    pack_details,
    selective_advantage,
    stats_from_moments,
    step_index,
    step_reward_moments,
)
from spark_hub.errors import SparkHubError
from spark_hub.prm import StepScores
from spark_hub.rewards import (
    AsyncPRMReward,
    MajorityVote,
    PRMReward,
    RandomReward,
    RLVR,
    check_format,
    cut_at_answer,
    format_validity,
    make_reward_funcs,
    parse_policy_output,
    step_token_spans,
)

PROBLEM = "What is 2 + 3 * 4?"


def solution(*steps: str, answer: str = "14", tail: str = "") -> str:
    body = "\n".join(f"<step>{s}</step>" for s in steps)
    return f"{body}\n<answer>The answer is \\boxed{{{answer}}}.</answer>{tail}"


GOOD = solution("3 * 4 = 12.", "2 + 12 = 14.")
WRONG_STEP = solution("3 * 4 = 12.", "2 + 12 = 15 (wrong).", answer="15")


class FakePRM:
    """A PRM that judges a step incorrect when its text contains "wrong"; final verdict = all correct.

    Records every `score_batch` call and the thread it ran on.
    """

    def __init__(self, spec=None, unreadable_marker="???"):
        self.spec = spec or {"kind": "generative", "variant": "prm", "threshold": 0.5}
        self.batches: list[list] = []
        self.threads: list[str] = []
        self.unreadable_marker = unreadable_marker

    def score_batch(self, items):
        items = list(items)
        self.batches.append(items)
        self.threads.append(threading.current_thread().name)
        out = []
        for problem, steps, answer in items:
            if any(self.unreadable_marker in s for s in steps):
                out.append(StepScores(n_steps=len(steps), step_verdicts=[None] * len(steps),
                                      step_probs=[None] * len(steps), status="unparsed"))
                continue
            verdicts = ["wrong" not in s for s in steps]
            out.append(StepScores(n_steps=len(steps), step_verdicts=verdicts, step_probs=[None] * len(steps),
                                  final_verdict=all(verdicts), status="ok"))
        return out


# ------------------------------------------------------------------------------------------------
# Format
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, reason", [
    (GOOD, "ok"),
    (GOOD + "  \n\t", "ok"),
    (GOOD + "\nProblem 2: what is 1+1?\n" + solution("1+1=2", answer="2"), "boxed_count"),  # appended solution
    (GOOD + " Also, the answer is 14.", "text_after_answer"),
    (solution("3 * 4 = 12.") + "</answer>", "answer_tag_count"),
    ("<step>3*4=12</step><answer>14</answer>", "boxed_count"),
    ("<step>3*4=12</step> \\boxed{14}", "answer_tag_count"),
    ("<step>x</step></answer>\\boxed{14}<answer>", "answer_tag_order"),
    ("<step>\\boxed{12}</step><answer>\\boxed{14}</answer>", "boxed_count"),
])
def test_format_rules(text, reason):
    check = check_format(text)
    assert check.reason == reason and check.valid == (reason == "ok")
    assert format_validity(None, [text]) == [1.0 if reason == "ok" else 0.0]


def test_conversational_completions_and_cut():
    convo = [[{"role": "assistant", "content": GOOD}], [{"role": "assistant", "content": GOOD + " P.S. 15"}]]
    assert format_validity([[{"role": "user", "content": PROBLEM}]] * 2, convo) == [1.0, 0.0]
    appended = GOOD + "\n<step>extra work</step><answer>\\boxed{15}</answer>"
    assert cut_at_answer(appended) == GOOD
    parsed = parse_policy_output(appended)
    assert parsed.steps == ["3 * 4 = 12.", "2 + 12 = 14."] and parsed.answer == "14"
    assert not parsed.format.valid
    assert [parsed.text[s:e] for s, e in parsed.spans] == ["<step>3 * 4 = 12.</step>", "<step>2 + 12 = 14.</step>"]
    untagged = parse_policy_output("3*4 = 12, 2+12 = 14.\n<answer>\\boxed{14}</answer>")
    assert untagged.steps == ["3*4 = 12, 2+12 = 14."] and untagged.n_steps == 0 and untagged.format.valid


# ------------------------------------------------------------------------------------------------
# PRM rewards
# ------------------------------------------------------------------------------------------------


def test_prm_rewards_score_the_batch_in_one_call():
    prm = FakePRM()
    completions = [
        GOOD,                                                        # valid, all steps correct
        WRONG_STEP,                                                  # valid, step 2 wrong
        GOOD + "\nProblem 2: 1+1\n" + solution("1+1=2", answer="2"),  # appended solution: invalid
        GOOD + " trailing text",                                     # text after </answer>: invalid
        solution("a", "b", "c wrong", "d", answer="7"),              # 3 of 4 correct
    ]
    metrics, extra = {}, {}
    outcome = PRMReward(prm, "outcome")
    got = outcome([PROBLEM] * 5, completions, problem=[PROBLEM] * 5,
                  log_metric=lambda k, v: metrics.__setitem__(k, v), log_extra=lambda k, v: extra.__setitem__(k, v))
    assert got == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert len(prm.batches) == 1 and len(prm.batches[0]) == 3  # one call, only the valid completions
    sent = prm.batches[0]
    assert sent[0] == (PROBLEM, ["3 * 4 = 12.", "2 + 12 = 14."], "14")
    assert all("Problem 2" not in " ".join(steps) for _, steps, _ in sent)
    assert metrics["prm_outcome/format_violations"] == pytest.approx(2 / 5)
    assert extra["prm_outcome/labels"] == ["++", "+-", "", "", "++-+"]

    augmented = PRMReward(prm, "step_augmented")
    got = augmented([PROBLEM] * 5, completions, problem=[PROBLEM] * 5)
    assert got == pytest.approx([0.4 * 2 / 2 + 0.6, 0.4 * 1 / 2, 0.0, 0.0, 0.4 * 3 / 4])
    assert len(prm.batches) == 2
    d = augmented.last_details
    assert [x["valid_format"] for x in d] == [True, True, False, False, True]
    assert d[1]["step_labels"] == [True, False] and d[1]["prm_n_steps"] == 2 and d[1]["n_steps"] == 2
    assert d[2]["step_labels"] is None and d[2]["prm_n_steps"] == -1 and d[2]["format_reason"] == "boxed_count"


def test_step_inflation_and_reduction_in_the_rewards():
    """Outcome-only rewards ignore the step count; the step-augmented one rewards padding
    (which is why the advantage guards exist: tested below)."""
    prm = FakePRM()
    honest = solution("3 * 4 = 12.", "2 + 12 = 15 wrong.", answer="15")
    padded = solution(*[f"Note {i}." for i in range(8)], "2 + 12 = 15 wrong.", answer="15")
    collapsed = solution("3 * 4 = 12 and 2 + 12 = 15 wrong.", answer="15")
    assert PRMReward(prm, "outcome")(None, [honest, padded, collapsed], problem=[PROBLEM] * 3) == [0.0, 0.0, 0.0]
    aug = PRMReward(prm, "step_augmented")([None] * 3, [honest, padded, collapsed], problem=[PROBLEM] * 3)
    assert aug == pytest.approx([0.2, 0.4 * 8 / 9, 0.0])


def test_unreadable_prm_output_and_problem_from_the_prompt():
    prm = FakePRM()
    completions = [solution("???", "x"), GOOD]
    prompts = [[{"role": "system", "content": "S"}, {"role": "user", "content": PROBLEM}]] * 2
    assert PRMReward(prm, "outcome")(prompts, completions) == [0.0, 1.0]
    assert prm.batches[-1][1][0] == PROBLEM  # no problem column: the last user message
    assert PRMReward(prm, "outcome", unreadable=None)(prompts, completions) == [None, 1.0]
    reward = PRMReward(prm, "outcome")
    reward(prompts, completions)
    assert reward.last_details[0]["status"] == "unparsed" and reward.last_details[0]["prm_n_steps"] == -1


def test_discriminative_prm_verdict_from_its_score_and_threshold():
    class Scored(FakePRM):
        def score_batch(self, items):
            self.batches.append(list(items))
            return [StepScores(n_steps=len(s), step_verdicts=[True] * len(s), step_probs=[0.7] * len(s),
                               solution_score=0.7 if "14" == a else 0.2) for _, s, a in items]

    prm = Scored(spec={"kind": "step_separator", "threshold": 0.5})
    assert PRMReward(prm, "outcome")(None, [GOOD, WRONG_STEP], problem=[PROBLEM] * 2) == [1.0, 0.0]
    assert PRMReward(prm, "outcome", soft=True)(None, [GOOD, WRONG_STEP], problem=[PROBLEM] * 2) == [0.7, 0.2]


def test_the_prompt_comes_from_the_prm_spec(tmp_path):
    """PRM-CoT gets the PRM prompt whatever the design; an ORM gets the ORM prompt (never a list in rewards)."""
    from spark_hub import rm_prompts
    from spark_hub.prm import generative_spec, load_prm, write_spec

    class Backend:
        model_id = "fake"

        def __init__(self, text):
            self.text, self.requests = text, []

        def generate(self, requests):
            self.requests.extend(requests)
            return [[SimpleNamespace(text=self.text, token_ids=None, logprobs=None, token_offsets=None)]
                    for _ in requests]

    cot_text = ("## Step 1: ok. **This step is correct.**\n## Step 2: ok. **This step is correct.**\n"
                "Verification: Is the answer correct (Yes/No)? Yes")
    for variant, designs, text in (("prm_cot", ("prm_outcome", "prm_step_augmented"), cot_text), ("orm", ("orm",), "Yes")):
        folder = tmp_path / variant
        folder.mkdir()
        write_spec(folder, generative_spec(variant))
        backend = Backend(text)
        prm = load_prm(folder, backend=backend)
        for name in designs:
            [reward] = make_reward_funcs([name], prm=prm)
            assert reward(None, [GOOD], problem=[PROBLEM]) == [1.0]
        expected = rm_prompts.rm_prompt(variant, PROBLEM, ["3 * 4 = 12.", "2 + 12 = 14."], "14")
        assert all(dict(r.messages)["user"] == expected for r in backend.requests)
        assert len(backend.requests) == len(designs)
    with pytest.raises(SparkHubError, match="ORM"):
        make_reward_funcs(["prm_step_augmented"], prm=prm)


def test_async_prm_reward_runs_the_batch_off_the_event_loop():
    prm = FakePRM()
    reward = AsyncPRMReward(prm, "step_augmented")
    completions = [GOOD, WRONG_STEP, GOOD + "!"]
    got = asyncio.run(reward(None, completions, problem=[PROBLEM] * 3))
    assert got == pytest.approx([1.0, 0.2, 0.0])
    assert len(prm.batches) == 1 and prm.threads[0] != threading.current_thread().name
    assert PRMReward(FakePRM(), "step_augmented")(None, completions, problem=[PROBLEM] * 3) == got
    from trl.trainer.utils import is_async_callable

    assert is_async_callable(reward) and not is_async_callable(PRMReward(prm))


def test_prm_rewards_need_a_prm():
    with pytest.raises(SparkHubError, match="needs a PRM"):
        make_reward_funcs(["prm_outcome"])


# ------------------------------------------------------------------------------------------------
# Reference-based and reference-free baselines
# ------------------------------------------------------------------------------------------------


def test_rlvr():
    completions = [GOOD, solution("x", answer="\\frac{28}{2}"), WRONG_STEP, GOOD + " extra", "no format \\boxed{14}"]
    assert rewards.rlvr(None, completions, answer=["14"] * 5) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert RLVR(require_format=False)(None, completions, answer=["14"] * 5) == [1.0, 1.0, 0.0, 1.0, 1.0]
    with pytest.raises(SparkHubError, match="reference column 'answer'.*dataset columns: problem"):
        rewards.rlvr(None, [GOOD], problem=[PROBLEM])


def test_rlvr_hang_is_cut_by_the_timeout_from_a_thread():
    reward = RLVR(timeout=1.0, check=sleepy_or_magic)
    out = {}
    hanging = solution("x", answer="slow")
    magic = solution("x", answer="magic")  # equal to anything by the checker: proves it ran
    thread = threading.Thread(target=lambda: out.update(r=reward(None, [hanging, GOOD, magic], answer=["14"] * 3)))
    start = time.monotonic()
    thread.start()
    thread.join(60)
    assert not thread.is_alive() and out["r"] == [0.0, 1.0, 1.0], reward.last_details
    assert time.monotonic() - start < 45
    assert reward.last_details[0]["status"] == "cannot_tell"


def test_random_reward_is_seeded_and_needs_the_format():
    valid = [solution(f"step {i}", answer=str(i)) for i in range(200)]
    first = RandomReward(seed=1)(None, valid)
    assert first == RandomReward(seed=1)(None, valid)
    assert first != RandomReward(seed=2)(None, valid)
    assert 60 < sum(first) < 140 and set(first) == {0.0, 1.0}
    state = SimpleNamespace(global_step=5)
    assert RandomReward(seed=1)(None, valid, trainer_state=state) != first
    assert RandomReward(seed=1)(None, [v + " tail" for v in valid]) == [0.0] * 200


def test_majority_vote_groups_by_prompt():
    a = [solution("s", answer=x) for x in ("4", "4", "5", " 4 ")]
    b = [solution("s", answer=x) for x in ("7", "8", "8", "7")]  # tie: first seen (7) wins
    invalid = solution("s", answer="9") + " tail"
    prompts = ["p"] * 4 + ["q"] * 4 + ["r", "r"]
    completions = a + b + [invalid, solution("s", answer="8")]  # the invalid 9 does not vote
    mv = MajorityVote(verify=False)
    assert mv(prompts, completions) == [1, 1, 0, 1, 1, 0, 0, 1, 0, 1]
    assert [d["pseudo_label"] for d in mv.last_details][:5] == ["4", "4", "4", "4", "7"]
    verified = MajorityVote()([["m"]] * 3, [solution("s", answer=x) for x in ("\\frac{1}{2}", "\\frac{1}{2}", "0.5")])
    assert verified == [1.0, 1.0, 1.0]


# ------------------------------------------------------------------------------------------------
# Registry
# ------------------------------------------------------------------------------------------------


def test_registry_names_paths_and_errors():
    funcs = make_reward_funcs(["prm_outcome", "format_validity", "random", "rlvr", "majority_vote"],
                              prm=FakePRM(), seed=3, reference_column="solution")
    assert [f.__name__ for f in funcs] == ["prm_outcome", "format_validity", "random", "rlvr", "majority_vote"]
    assert funcs[2].seed == 3 and funcs[3].reference_column == "solution"
    [imported] = make_reward_funcs(["trl.rewards:think_format_reward"])
    assert imported.__name__ == "think_format_reward"
    with pytest.raises(SparkHubError, match="unknown reward 'prm_outcom'.*valid: format_validity, prm_outcome"):
        make_reward_funcs(["prm_outcom"])
    with pytest.raises(SparkHubError, match="cannot import reward function 'no.such:thing'"):
        make_reward_funcs(["no.such:thing"])
    with pytest.raises(SparkHubError, match="reference_column are not used"):
        make_reward_funcs(["format_validity"], reference_column="x")
    with pytest.raises(SparkHubError, match="distinct"):
        make_reward_funcs(["random", "random"])
    assert set(rewards.REWARDS) == {"format_validity", "prm_outcome", "prm_step_augmented", "orm", "rlvr",
                                    "random", "majority_vote"}


def test_doctests():
    for module in (rewards, advantages):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 5


# ------------------------------------------------------------------------------------------------
# Step spans -> tokens
# ------------------------------------------------------------------------------------------------


def test_step_spans_map_to_tokens_with_a_byte_level_tokenizer():
    from tiny_models import make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    text = ("<step>Area = 3 × 4 = 12 m².</step>\n<step>√144 = 12 ✓</step>\n"
            "<answer>\\boxed{12}</answer><step>after the answer</step>")
    ids = tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
    parsed, spans = step_token_spans(ids, tok)
    assert parsed.steps == ["Area = 3 × 4 = 12 m².", "√144 = 12 ✓"]
    assert len(spans) == 2
    for (start, end), step in zip(spans, ["<step>Area = 3 × 4 = 12 m².</step>", "<step>√144 = 12 ✓</step>"]):
        assert tok.decode(ids[start:end]).strip() == step
    from spark_hub.rewards import decode_with_offsets, token_spans

    for fast in (True, False):  # re-encoding with offsets, and incremental decoding: same token ranges
        text_, offsets = decode_with_offsets(ids, tok, fast=fast)
        assert token_spans(offsets, len(text_), parsed.spans[:2]) == spans
    index = step_index([ids, ids[:5]], tok)
    assert index.shape == (2, len(ids))
    assert index[0, : spans[0][1]].tolist() == [0] * spans[0][1]
    assert set(index[0, spans[1][0]: spans[1][1]].tolist()) == {1}
    assert set(index[0, spans[1][1]:].tolist()) == {-1}  # answer, steps after </answer>, eos
    assert index[1, 5:].tolist() == [-1] * (len(ids) - 5)


def test_prm_reward_details_carry_token_spans():
    from tiny_models import make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    ids = tok.encode(GOOD, add_special_tokens=False)
    reward = PRMReward(FakePRM(), tokenizer=tok)
    reward(None, [tok.decode(ids)], completion_ids=[ids], problem=[PROBLEM])
    spans = reward.last_details[0]["token_spans"]
    assert [tok.decode(ids[s:e]).strip() for s, e in spans] == ["<step>3 * 4 = 12.</step>",
                                                                  "<step>2 + 12 = 14.</step>"]


# ------------------------------------------------------------------------------------------------
# Token-level advantages (hand-computed)
# ------------------------------------------------------------------------------------------------

NAN = math.nan


def _rows(*index_rows):
    return torch.tensor(index_rows, dtype=torch.long)


def test_selective_advantage_by_hand():
    # 4 steps of 2 tokens each, then 1 answer token, then 1 padding token
    idx = _rows([0, 0, 1, 1, 2, 2, 3, 3, -1, -1], [0, 0, 1, 1, 2, 2, 3, 3, -1, -1])
    labels = torch.tensor([[1.0, 0.0, 1.0, 1.0], [1.0, 0.0, 0.0, 1.0]])
    adv = torch.tensor([0.5, -2.0])
    mask = torch.tensor([[1] * 9 + [0]] * 2)
    out = selective_advantage(adv, idx, labels, torch.tensor([4, 4]), torch.tensor([4, 4]), completion_mask=mask)
    assert out.tolist() == [
        [0.5, 0.5, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.0],      # Â >= 0: kept on correct steps
        [0.0, 0.0, -2.0, -2.0, -2.0, -2.0, 0.0, 0.0, -2.0, 0.0],  # Â < 0: kept on incorrect steps
    ]
    half = selective_advantage(adv, idx, labels, torch.tensor([4, 4]), torch.tensor([4, 4]), completion_mask=mask,
                               disagree_scale=0.5)
    assert half[0].tolist() == [0.5, 0.5, 0.25, 0.25, 0.5, 0.5, 0.5, 0.5, 0.5, 0.0]


def test_selective_guards_inflation_reduction_and_mismatch():
    def row(n):
        return [j for j in range(n) for _ in range(2)] + [-1]

    width = 2 * 21 + 1
    idx = _rows(*[(row(n) + [-1] * width)[:width] for n in (3, 21, 4, 4, 20)])
    labels = torch.full((5, 21), NAN)
    for r, n in enumerate((3, 21, 4, 4, 20)):
        labels[r, :n] = 0.0
    labels[3, 2] = NAN  # a step the PRM said nothing about
    n_steps = torch.tensor([3, 21, 4, 4, 20])
    prm_n = torch.tensor([3, 21, 5, 4, 20])  # row 2: the PRM labelled 5 steps
    adv = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0])
    out = selective_advantage(adv, idx, labels, n_steps, prm_n)
    assert out[0].abs().sum() == 0 and out[1].abs().sum() == 0  # reduction (<4) and inflation (>20): all zero
    assert out[2].tolist() == [1.0] * width  # mismatch: plain outcome on every token
    assert out[3].tolist() == [1.0] * width  # unknown label: mismatch too
    assert out[4, :40].abs().sum() == 0 and out[4, 40].item() == 1.0  # all incorrect, Â > 0: only the answer token
    hits = guard_hits(n_steps, labels, prm_n, min_steps=4, max_steps=20)
    assert hits["too_few"].tolist() == [True, False, False, False, False]
    assert hits["too_many"].tolist() == [False, True, False, False, False]
    assert hits["mismatch"].tolist() == [False, False, True, True, False]
    relaxed = selective_advantage(adv, idx, labels, n_steps, prm_n, min_steps=2, max_steps=30)
    assert relaxed[0].abs().sum() > 0 and relaxed[1].abs().sum() > 0  # thresholds are configurable


def test_global_step_advantage_by_hand():
    # three rows of 3 steps (1 token each) + 1 answer token; row 2 has 2 steps (guarded: < 3)
    idx = _rows([0, 1, 2, -1], [0, 1, 2, -1], [0, 1, -1, -1])
    labels = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, NAN]])
    n_steps, prm_n = torch.tensor([3, 3, 2]), torch.tensor([3, 3, 2])
    adv = torch.tensor([1.0, -1.0, 0.5])
    # eligible step rewards: +1/3 x4, -1/3 x2 -> mean 1/9, population std sqrt(1/9 - 1/81) = sqrt(8)/9
    mean, std = 1 / 9, math.sqrt(8) / 9
    moments = step_reward_moments(labels, n_steps, prm_n)
    assert stats_from_moments(moments) == pytest.approx((mean, std))
    out = global_step_advantage(adv, idx, labels, n_steps, prm_n, eps=0.0)
    up, down = (1 / 3 - mean) / std, (-1 / 3 - mean) / std
    expected = [
        [0.8 + 0.2 * up] * 3 + [0.8],
        [-0.8 + 0.2 * up, -0.8 + 0.2 * down, -0.8 + 0.2 * down, -0.8],
        [0.4, 0.4, 0.4, 0.4],  # 2 steps < 3: step part zeroed, outcome kept
    ]
    assert torch.allclose(out, torch.tensor(expected))
    # batch-wide statistics from elsewhere (e.g. summed over processes) are used as given
    other = global_step_advantage(adv, idx, labels, n_steps, prm_n, step_stats=(0.0, 1.0), eps=0.0)
    assert other[0, 0].item() == pytest.approx(0.8 + 0.2 / 3)
    # mismatch: step part zeroed, outcome kept; inflation (> 20) likewise
    mismatch = global_step_advantage(adv, idx, labels, n_steps, torch.tensor([4, 3, 2]), step_stats=(0.0, 1.0))
    assert torch.allclose(mismatch[0], torch.full((4,), 0.8))
    many = torch.full((1, 21), 1.0)
    inflated = global_step_advantage(torch.tensor([1.0]), torch.arange(21)[None], many, torch.tensor([21]),
                                     torch.tensor([21]), step_stats=(0.0, 1.0))
    assert torch.allclose(inflated, torch.full((1, 21), 0.8))


def test_pack_details_from_a_reward():
    reward = PRMReward(FakePRM(), "outcome")
    reward(None, [solution("a", "b wrong", "c", "d"), GOOD + " tail", solution("???", "x")], problem=[PROBLEM] * 3)
    labels, n_steps, prm_n = pack_details(reward.last_details)
    assert n_steps.tolist() == [4, 2, 2] and prm_n.tolist() == [4, -1, -1]
    assert labels[0].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert torch.isnan(labels[1]).all() and torch.isnan(labels[2]).all()


def test_every_reward_takes_what_grpo_trainer_passes():
    """The kwargs TRL 1.16 passes: dataset columns, trainer_state, log_extra, log_metric; conversational data."""
    prompts = [[{"role": "system", "content": "S"}, {"role": "user", "content": PROBLEM}]] * 3
    completions = [[{"role": "assistant", "content": t}] for t in (GOOD, WRONG_STEP, GOOD + " x")]
    logged: dict = {}
    kwargs = {"problem": [PROBLEM] * 3, "answer": ["14"] * 3, "trainer_state": SimpleNamespace(global_step=3),
              "log_extra": lambda k, v: logged.setdefault(k, v), "log_metric": lambda k, v: logged.setdefault(k, v)}
    for reward in make_reward_funcs(list(rewards.REWARDS), prm=FakePRM(), verify=False):
        out = reward(prompts, completions, completion_ids=[[1, 2]] * 3, **kwargs)
        assert len(out) == 3 and out[2] == 0.0, reward.__name__
        assert len(reward.last_details) == 3 and reward.last_details[2]["format_reason"] == "text_after_answer"
    assert logged["rlvr/format_violations"] == pytest.approx(1 / 3) and logged["prm_outcome/mean_steps"] == 2


def test_async_prm_reward_against_an_openai_compatible_server(tmp_path):
    """A PRM served over HTTP: one reward call -> one score_batch -> concurrent requests, one per solution."""
    import json
    import re
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from spark_hub.prm import generative_spec, load_prm, write_spec

    state = {"in_flight": 0, "max_in_flight": 0, "requests": 0}
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                state["in_flight"] += 1
                state["requests"] += 1
                state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
            time.sleep(0.3)
            user = body["messages"][-1]["content"]
            steps = re.findall(r"^Step (\d+): (.*)$", user, re.MULTILINE)
            lines = [f"Step {k}: {'Incorrect' if 'wrong' in text else 'Correct'}" for k, text in steps]
            final = "No" if any("Incorrect" in line for line in lines) else "Yes"
            text = "\n".join(lines + [f"Verification: Is the answer correct (Yes/No)? {final}"])
            data = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                            "finish_reason": "stop"}],
                               "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
            with lock:
                state["in_flight"] -= 1
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        folder = tmp_path / "prm"
        folder.mkdir()
        write_spec(folder, generative_spec("prm"))
        prm = load_prm(folder, backend="openai", base_url=f"http://127.0.0.1:{httpd.server_address[1]}/v1",
                       model="served-prm", max_concurrency=8)
        [reward] = make_reward_funcs(["prm_step_augmented"], prm=prm, asynchronous=True)
        completions = [GOOD, WRONG_STEP, GOOD + " tail"] * 2
        start = time.monotonic()
        got = asyncio.run(reward(None, completions, problem=[PROBLEM] * 6))
        elapsed = time.monotonic() - start
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert got == pytest.approx([1.0, 0.2, 0.0] * 2)
    assert prm.calls == 1 and state["requests"] == 4  # the two invalid completions are never sent
    assert state["max_in_flight"] >= 2 and elapsed < 4 * 0.3 + 5
