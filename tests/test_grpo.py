"""train grpo: SPARK's token-level advantages in a TRL GRPOTrainer subclass, a CPU run on a tiny policy,
resume after SIGKILL, the recipes.

The tiny random policy never writes the <step>/<answer> format by itself, so most runs use a scripted
rollout (TRL's ``rollout_func`` hook) that returns canned, format-valid and invalid completions: the
trainer then scores, normalises, replaces advantages and takes real gradient steps on those tokens.
The PRM is scripted too (`ScriptedPRM`): a step is correct unless its text says "wrong".
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tiny_models import make_tiny_model, make_tiny_tokenizer

torch = pytest.importorskip("torch")

# ------------------------------------------------------------------------------------------------
# Fixtures: problems, a scripted PRM, scripted rollouts
# ------------------------------------------------------------------------------------------------

PROBLEMS = [{"id": f"p{i}", "problem": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)} for i in range(8)]


def _steps(texts):
    return "".join(f"<step>{t}</step>" for t in texts)


# Four completions per prompt, cycled: the PRM (a step is wrong iff it says "wrong") and the guards differ.
def scripted_completions(answer: str) -> list[str]:
    return [
        _steps(["add the numbers", "carry the one", "check the sum", "so we get it"]) + f"<answer>\\boxed{{{answer}}}</answer>",
        _steps(["add the numbers", "wrong carry", "check the sum", "so we get it"]) + "<answer>\\boxed{0}</answer>",
        _steps(["add", "done"]) + f"<answer>\\boxed{{{answer}}}</answer>",  # 2 steps: too few for both designs
        _steps(["a", "b", "c", "d"]) + f"<answer>\\boxed{{{answer}}}</answer> Next problem: 1+1",  # invalid format
    ]


class ScriptedPRM:
    """A PRM-CoT stand-in: ``score_batch`` (one call per batch, counted) with per-step verdicts."""

    spec = {"kind": "generative", "variant": "prm_cot", "threshold": 0.5, "name": "scripted-prm"}
    backend = None

    def __init__(self, always_yes: bool = False):
        self.calls = 0
        self.batches: list[int] = []
        self.always_yes = always_yes

    def score_batch(self, items):
        from spark_hub.prm import StepScores

        items = list(items)
        self.calls += 1
        self.batches.append(len(items))
        out = []
        for problem, steps, *_ in items:
            verdicts = [self.always_yes or "wrong" not in s for s in steps]
            out.append(StepScores(n_steps=len(steps), step_verdicts=verdicts, step_probs=[None] * len(steps),
                                  final_verdict=all(verdicts), status="ok"))
        return out

    def describe(self):
        return {"kind": "generative", "name": "scripted-prm", "variant": "prm_cot", "aggregation": "min",
                "id": "scripted/prm", "revision": None, "spec_sha256": "0" * 64}


def make_rollout(tokenizer, answers_by_problem: dict[str, str]):
    """A TRL rollout_func returning the scripted completions (prompt i of each group gets completion i % 4)."""
    counter = {"n": 0}

    def rollout(prompts, trainer):
        prompt_ids, completion_ids = [], []
        for prompt in prompts:
            text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            prompt_ids.append(tokenizer.encode(text, add_special_tokens=False))
            problem = prompt[-1]["content"]
            completions = scripted_completions(answers_by_problem.get(problem, "0"))
            completion = completions[counter["n"] % len(completions)]
            counter["n"] += 1
            completion_ids.append(tokenizer.encode(completion, add_special_tokens=False) + [tokenizer.eos_token_id])
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": None}

    return rollout


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("policy") / "base")


def _problems_file(folder: Path, rows=PROBLEMS) -> Path:
    path = folder / "problems.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


TRAINING = {"max_steps": 2, "per_device_train_batch_size": 8, "num_generations": 4, "learning_rate": 5e-3,
            "max_completion_length": 96, "save_steps": 1, "logging_steps": 1, "seed": 0, "report_to": "none",
            "activation_checkpointing": False}


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


# ------------------------------------------------------------------------------------------------
# (B, T) advantages on hand-computed masks
# ------------------------------------------------------------------------------------------------


def _bare_trainer(advantage: str, tokenizer):
    """A SparkGRPOTrainer without __init__: just what step_advantages reads."""
    from spark_hub.train.grpo import Guards, SparkGRPOTrainer

    trainer = object.__new__(SparkGRPOTrainer)
    trainer.advantage = advantage
    trainer.processing_class = tokenizer
    trainer.guards = Guards()
    from collections import defaultdict

    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer.__dict__["accelerator"] = SimpleNamespace(reduce=lambda t, reduction="sum": t, device="cpu",
                                                      process_index=0, num_processes=1)
    return trainer


def _segments_to_batch(tokenizer, rows):
    """rows: list of [(text, step_j or -1)] segments -> completion_ids (B, T), mask, expected step index."""
    ids, index = [], []
    for segments in rows:
        r_ids, r_idx = [], []
        for text, j in segments:
            piece = tokenizer.encode(text, add_special_tokens=False)
            r_ids += piece
            r_idx += [j] * len(piece)
        ids.append(r_ids)
        index.append(r_idx)
    width = max(len(r) for r in ids) + 2  # right padding, as TRL pads
    pad = tokenizer.pad_token_id
    completion_ids = torch.tensor([r + [pad] * (width - len(r)) for r in ids])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids])
    index = [r + [-1] * (width - len(r)) for r in index]
    return completion_ids, mask, index


def _four_step_row(labels_text):
    segs = [(f"<step>{t}</step>", j) for j, t in enumerate(labels_text)]
    return segs + [("<answer>\\boxed{7}</answer>", -1)]


@pytest.mark.parametrize("advantage", ["selective_advantage", "global_step"])
def test_step_advantages_replace_outcome_advantages_on_hand_computed_masks(advantage):
    tokenizer = make_tiny_tokenizer()
    rows = [
        _four_step_row(["one", "two", "three", "four"]),   # Â > 0, labels T F T T
        _four_step_row(["one", "two", "three", "four"]),   # Â < 0, labels T F T T
        _four_step_row(["one", "two"]),                    # 2 steps: too few for both designs
        _four_step_row(["one", "two", "three", "four"]),   # PRM labels do not line up (mismatch)
    ]
    completion_ids, mask, index = _segments_to_batch(tokenizer, rows)
    labels = [True, False, True, True]
    details = [
        {"valid_format": True, "n_steps": 4, "step_labels": labels, "prm_n_steps": 4, "final_verdict": False},
        {"valid_format": True, "n_steps": 4, "step_labels": labels, "prm_n_steps": 4, "final_verdict": False},
        {"valid_format": True, "n_steps": 2, "step_labels": [True, True], "prm_n_steps": 2, "final_verdict": True},
        {"valid_format": True, "n_steps": 4, "step_labels": [True, False, True], "prm_n_steps": -1,
         "final_verdict": False},
    ]
    outcome = torch.tensor([1.5, -0.5, 1.0, -1.0])
    trainer = _bare_trainer(advantage, tokenizer)
    out = {"completion_ids": completion_ids, "completion_mask": mask, "advantages": outcome}
    result = trainer.step_advantages(out, details, "train")
    assert result.shape == completion_ids.shape

    # hand-computed expectation, token by token
    label_of = {0: 1.0, 1: 0.0, 2: 1.0, 3: 1.0}
    expected = torch.zeros_like(result)
    if advantage == "selective_advantage":
        for b, a in ((0, 1.5), (1, -0.5)):
            for t, j in enumerate(index[b]):
                if not mask[b, t]:
                    continue
                agrees = j < 0 or (a >= 0 and label_of[j] == 1.0) or (a < 0 and label_of[j] == 0.0)
                expected[b, t] = a if agrees else 0.0
        # row 2: too few steps -> all zero; row 3: mismatch -> plain outcome on every real token
        expected[3] = -1.0 * mask[3]
    else:
        # step rewards ±1/4 over the eligible rows 0 and 1 (row 2 too few, row 3 mismatch)
        r = [0.25, -0.25, 0.25, 0.25] * 2
        mean = sum(r) / len(r)
        std = (sum((x - mean) ** 2 for x in r) / len(r)) ** 0.5
        norm = {j: ((0.25 if label_of[j] else -0.25) - mean) / (std + 1e-4) for j in range(4)}
        for b, a in enumerate(outcome.tolist()):
            for t, j in enumerate(index[b]):
                if not mask[b, t]:
                    continue
                step_part = norm[j] if (j >= 0 and b in (0, 1)) else 0.0
                expected[b, t] = 0.8 * a + 0.2 * step_part
    assert torch.allclose(result, expected, atol=1e-5), (result, expected)
    metrics = trainer._metrics["train"]
    assert metrics["spark/guard/too_few"] == [0.25]
    assert metrics["spark/guard/mismatch"] == [0.25]
    assert metrics["spark/guard/too_many"] == [0.0]


# ------------------------------------------------------------------------------------------------
# CPU runs
# ------------------------------------------------------------------------------------------------


def _run(tmp_path, policy, reward, *, prm=None, training=None, callbacks=(), prm_path=None, **extra):
    from spark_hub.train.grpo import GRPOTrainArgs, train_grpo

    tokenizer = make_tiny_tokenizer()
    problems = _problems_file(tmp_path)
    args = GRPOTrainArgs(problems=str(problems), reward=reward, prm=prm_path, **extra)
    rollout = make_rollout(tokenizer, {p["problem"]: p["answer"] for p in PROBLEMS})
    out = tmp_path / "policy"
    train_grpo(args, {**TRAINING, **(training or {})}, model=policy, output_dir=out, prm=prm,
               callbacks=callbacks, rollout_func=rollout)
    return out


@pytest.mark.parametrize("reward", ["selective_advantage", "global_step", "prm_step_augmented"])
def test_cpu_grpo_run_changes_parameters_and_logs_every_component(tmp_path, tiny_policy, reward, monkeypatch):
    from spark_hub.train import grpo

    replaced = []
    cls = grpo.SparkGRPOTrainer
    original = cls.step_advantages

    def spy(self, out, details, mode):
        result = original(self, out, details, mode)
        replaced.append(tuple(result.shape))
        return result

    monkeypatch.setattr(cls, "step_advantages", spy)
    prm = ScriptedPRM()
    out = _run(tmp_path, tiny_policy, reward, prm=prm)

    before, after = _weights(Path(tiny_policy)), _weights(out)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2, "training changed the parameters"
    assert prm.calls == 2 and prm.batches == [6, 6], "one PRM call per rollout batch, format-valid rows only"
    if reward == "prm_step_augmented":
        assert replaced == []
    else:
        assert replaced and all(len(shape) == 2 for shape in replaced), "(B, T) advantages"

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "policy" and manifest["statistics"]["global_step"] == 2
    assert manifest["config"]["reward_design"] == reward
    assert manifest["models"]["reward_model"]["id"] == "scripted/prm"
    card = (out / "README.md").read_text()
    assert f"| reward design | `{reward}` |" in card, "the card names the reward design"
    logs = {k for entry in manifest["statistics"]["log_history"] for k in entry}
    trained_on = "prm_step_augmented" if reward == "prm_step_augmented" else "prm_outcome"
    for key in (f"rewards/{trained_on}/mean", "rewards/format_validity/mean", "rewards/rlvr/mean",
                "spark/format_violation_rate", "spark/mean_steps", "spark/prm_verdict", "spark/prm_step_fraction"):
        assert key in logs, key
    if reward != "prm_step_augmented":
        for key in ("spark/guard/too_few", "spark/guard/too_many", "spark/guard/mismatch"):
            assert key in logs, key
    history = [e for e in manifest["statistics"]["log_history"] if "spark/format_violation_rate" in e]
    assert history[0]["spark/format_violation_rate"] == pytest.approx(0.25)
    assert history[0]["rewards/format_validity/mean"] == pytest.approx(0.75)
    assert (out / "README.md").is_file() and "scripted/prm" in (out / "README.md").read_text()
    assert not (out / "training_args.bin").exists()


def test_a_finished_run_is_a_no_op_and_other_settings_are_refused(tmp_path, tiny_policy, monkeypatch):
    from spark_hub.errors import SparkHubError
    from spark_hub.train import grpo

    out = _run(tmp_path, tiny_policy, "selective_advantage", prm=ScriptedPRM(), training={"max_steps": 1})
    monkeypatch.setattr(grpo, "_grpo_trainer_class", lambda: pytest.fail("a finished run must not train again"))
    assert _run(tmp_path, tiny_policy, "selective_advantage", prm=ScriptedPRM(), training={"max_steps": 1}) == out
    with pytest.raises(SparkHubError, match="different finished policy"):
        _run(tmp_path, tiny_policy, "global_step", prm=ScriptedPRM(), training={"max_steps": 1})


def test_hacking_monitor_logs_prm_reward_against_accuracy_and_warns(tmp_path, tiny_policy, caplog):
    # The PRM accepts everything; half the valid scripted answers are wrong: the gap is large.
    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps(r) + "\n" for r in PROBLEMS[:4]))
    with caplog.at_level(logging.WARNING, logger="spark_hub.train.grpo"):
        out = _run(tmp_path, tiny_policy, "prm_outcome", prm=ScriptedPRM(always_yes=True), training={"max_steps": 2},
                   monitor_problems=str(held_out), monitor_steps=1, monitor_threshold=0.1)
    manifest = json.loads((out / "manifest.json").read_text())
    monitor = manifest["statistics"]["hacking_monitor"]
    assert [m["step"] for m in monitor] == [0, 1]
    assert all(m["prm_reward"] > m["accuracy"] for m in monitor)
    assert any("hacking monitor" in r.getMessage() for r in caplog.records)
    logs = {k for entry in manifest["statistics"]["log_history"] for k in entry}
    assert {"monitor/prm_reward", "monitor/accuracy", "monitor/gap"} <= logs


class OpenAIBackend:  # what _is_remote looks for: a PRM served behind an OpenAI-compatible endpoint
    base_url = "http://127.0.0.1:9/v1"


class RemotePRM(ScriptedPRM):
    backend = OpenAIBackend()


def test_a_served_prm_is_scored_by_an_async_reward_in_trl_and_in_the_monitor(tmp_path, tiny_policy):
    import inspect

    from spark_hub import rewards

    made = []
    original = rewards.make_reward_funcs

    def spy(names, prm=None, **options):
        funcs = original(names, prm=prm, **options)
        made.extend(funcs)
        return funcs

    held_out = tmp_path / "held_out.jsonl"
    held_out.write_text("".join(json.dumps(r) + "\n" for r in PROBLEMS[:4]))
    prm = RemotePRM()
    import unittest.mock

    with unittest.mock.patch.object(rewards, "make_reward_funcs", spy):
        out = _run(tmp_path, tiny_policy, "selective_advantage", prm=prm, monitor_problems=str(held_out),
                   monitor_steps=1)
    prm_funcs = [f for f in made if getattr(f, "__name__", "") == "prm_outcome"]
    assert prm_funcs and all(inspect.iscoroutinefunction(f.__call__) for f in prm_funcs)
    assert prm.batches == [3, 6, 3, 6], "monitor (4 held-out, 3 valid) then the rollout batch, each step"
    manifest = json.loads((out / "manifest.json").read_text())
    assert [m["step"] for m in manifest["statistics"]["hacking_monitor"]] == [0, 1]


def test_cpu_grpo_generates_with_model_generate_and_needs_a_prm_for_prm_designs(tmp_path, tiny_policy):
    from spark_hub.errors import SparkHubError
    from spark_hub.train.grpo import GRPOTrainArgs, train_grpo

    problems = _problems_file(tmp_path)
    args = GRPOTrainArgs(problems=str(problems), reward="random")
    out = train_grpo(args, {**TRAINING, "max_steps": 1, "max_completion_length": 16}, model=tiny_policy,
                     output_dir=tmp_path / "gen")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["statistics"]["global_step"] == 1
    logs = {k for entry in manifest["statistics"]["log_history"] for k in entry}
    assert {"rewards/random/mean", "rewards/format_validity/mean", "rewards/rlvr/mean"} <= logs
    with pytest.raises(SparkHubError, match="needs a PRM"):
        train_grpo(GRPOTrainArgs(problems=str(problems), reward="global_step"), dict(TRAINING), model=tiny_policy,
                   output_dir=tmp_path / "x")


def test_cpu_grpo_with_a_stage_ii_prm_folder_loaded_by_load_prm(tmp_path, tiny_policy, monkeypatch):
    """The PRM comes from a folder as `train prm` writes it (weights + prm_spec.json), loaded in-process by
    load_prm with the transformers backend: one score_batch (one generate call) per rollout batch."""
    from spark_hub.prm import GenerativePRM, generative_spec, write_spec

    folder = Path(make_tiny_model(tmp_path / "prm"))
    write_spec(folder, generative_spec("prm_cot", generation={"max_tokens": 8}, base_model="tiny"))
    calls = []
    original = GenerativePRM.score_batch

    def counted(self, items):
        items = list(items)
        calls.append(len(items))
        return original(self, items)

    monkeypatch.setattr(GenerativePRM, "score_batch", counted)
    out = _run(tmp_path, tiny_policy, "selective_advantage", prm_path=str(folder))
    assert calls == [6, 6]
    manifest = json.loads((out / "manifest.json").read_text())
    reward_model = manifest["models"]["reward_model"]
    assert reward_model["variant"] == "prm_cot" and len(reward_model["spec_sha256"]) == 64
    logs = {k for entry in manifest["statistics"]["log_history"] for k in entry}
    assert {"rewards/prm_outcome/mean", "spark/guard/mismatch"} <= logs


def test_long_prompts_are_dropped_and_use_vllm_without_vllm_is_one_line(tmp_path, tiny_policy, monkeypatch):
    from spark_hub import import_utils
    from spark_hub.errors import SparkHubError
    from spark_hub.train.grpo import GRPOTrainArgs, _drop_long_prompts, policy_messages, train_grpo

    tok = make_tiny_tokenizer()
    rows = [{"prompt": policy_messages("What is 1 + 1?")}, {"prompt": policy_messages("word " * 400)}]
    lengths = [len(tok.encode(tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False),
                              add_special_tokens=False)) for r in rows]
    assert lengths[0] < lengths[1]
    kept = _drop_long_prompts(rows, tok, lengths[0])
    assert kept == rows[:1]
    with pytest.raises(SparkHubError, match="every prompt is longer"):
        _drop_long_prompts(rows, tok, 5)

    monkeypatch.setattr(import_utils, "is_available", lambda name: False)
    args = GRPOTrainArgs(problems=str(_problems_file(tmp_path)), reward="random")
    with pytest.raises(SparkHubError, match="vLLM is not installed"):
        train_grpo(args, {**TRAINING, "use_vllm": True}, model=tiny_policy, output_dir=tmp_path / "v")


# ------------------------------------------------------------------------------------------------
# Resume after SIGKILL
# ------------------------------------------------------------------------------------------------

_KILL_SCRIPT = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from transformers import TrainerCallback
import test_grpo as t
from spark_hub.train.grpo import GRPOTrainArgs, train_grpo

kill_at = int(sys.argv[1])
seen = Path({seen!r})

class Probe(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        with seen.open("a") as f:
            f.write(f"{{state.global_step}}\\n")
        if state.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

if __name__ == "__main__":  # math-verify's worker processes are spawned: they re-import this file
    tok = t.make_tiny_tokenizer()
    args = GRPOTrainArgs(problems={problems!r}, reward="selective_advantage")
    train_grpo(args, {{**t.TRAINING, "max_steps": 4}}, model={base!r}, output_dir={out!r}, prm=t.ScriptedPRM(),
               callbacks=[Probe()], rollout_func=t.make_rollout(tok, {{p["problem"]: p["answer"] for p in t.PROBLEMS}}))
"""


@pytest.mark.slow
def test_grpo_resumes_after_sigkill(tmp_path, tiny_policy):
    from helpers import env_with_tests_on_path

    out, seen = tmp_path / "policy", tmp_path / "seen.txt"
    script = tmp_path / "train.py"
    script.write_text(_KILL_SCRIPT.format(tests=str(Path(__file__).parent), seen=str(seen), base=str(tiny_policy),
                                          out=str(out), problems=str(_problems_file(tmp_path))))
    env = env_with_tests_on_path()

    def run(kill_at: str) -> tuple[int, str]:
        # Own session + log file, not pipes: a SIGKILLed trainer leaves its math-verify worker processes
        # behind, which would hold a pipe open; the whole session is killed afterwards.
        log = tmp_path / f"log-{kill_at}-{len(seen.read_text()) if seen.exists() else 0}.txt"
        with log.open("w") as f:
            proc = subprocess.Popen([sys.executable, str(script), kill_at], env=env, stdout=f, stderr=f,
                                    start_new_session=True)
            try:
                code = proc.wait(timeout=600)
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return code, log.read_text()[-3000:]

    code, log = run("3")
    assert code == -signal.SIGKILL, log
    assert not (out / "manifest.json").exists()
    code, log = run("0")
    assert code == 0, log
    # SIGKILL at the end of step 3, before its checkpoint: checkpoint-2 is the newest complete one
    assert seen.read_text().split() == ["1", "2", "3", "3", "4"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["statistics"]["global_step"] == 4
    code, log = run("0")
    assert code == 0 and seen.read_text().split() == ["1", "2", "3", "3", "4"], "finished: a no-op"


_DDP_SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
import test_grpo as t
from spark_hub import advantages
from spark_hub.train.grpo import GRPOTrainArgs, train_grpo

rank = int(os.environ.get("RANK", "0"))
record = open({record!r} + f".{{rank}}", "a")
local, total = advantages.step_reward_moments, advantages.stats_from_moments

def step_reward_moments(*a, **k):
    m = local(*a, **k)
    record.write(json.dumps({{"local": m.tolist()}}) + "\\n"); record.flush()
    return m

def stats_from_moments(m):
    stats = total(m)
    record.write(json.dumps({{"summed": [float(x) for x in m], "stats": list(stats)}}) + "\\n"); record.flush()
    return stats

advantages.step_reward_moments, advantages.stats_from_moments = step_reward_moments, stats_from_moments

if __name__ == "__main__":
    tok = t.make_tiny_tokenizer()
    answers = {{p["problem"]: p["answer"] for p in t.PROBLEMS}}
    rollout = t.make_rollout(tok, answers)
    if rank == 1:  # this process only ever sees 4-step all-correct solutions: its own step statistics differ
        base = rollout
        def rollout(prompts, trainer):
            out = base(prompts, trainer)
            first = t.scripted_completions("1")[0]
            out["completion_ids"] = [tok.encode(first, add_special_tokens=False) + [tok.eos_token_id]] * len(prompts)
            return out
    args = GRPOTrainArgs(problems={problems!r}, reward="global_step")
    train_grpo(args, {{**t.TRAINING, "max_steps": 1, "per_device_train_batch_size": 4}}, model={base!r},
               output_dir={out!r}, prm=t.ScriptedPRM(), rollout_func=rollout)
"""


@pytest.mark.slow
def test_global_step_statistics_are_gathered_across_two_processes(tmp_path, tiny_policy):
    import shutil

    from helpers import env_with_tests_on_path

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    record = tmp_path / "moments"
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT.format(tests=str(Path(__file__).parent), record=str(record), base=str(tiny_policy),
                                         out=str(tmp_path / "policy"), problems=str(_problems_file(tmp_path))))
    env = {**env_with_tests_on_path(), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([torchrun, "--nproc_per_node", "2", str(script)], env=env, capture_output=True, text=True,
                          timeout=600, start_new_session=True)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {rank: [json.loads(line) for line in Path(f"{record}.{rank}").read_text().splitlines()] for rank in (0, 1)}
    local = {rank: next(r["local"] for r in rows[rank] if "local" in r) for rank in (0, 1)}
    summed = {rank: next(r for r in rows[rank] if "summed" in r) for rank in (0, 1)}
    assert local[0] != local[1], "the two processes saw different step rewards"
    expected = [a + b for a, b in zip(local[0], local[1])]
    for rank in (0, 1):
        assert summed[rank]["summed"] == pytest.approx(expected), "moments summed over both processes"
    assert summed[0]["stats"] == pytest.approx(summed[1]["stats"]), "one batch-wide mean/std on every process"


# ------------------------------------------------------------------------------------------------
# Recipes and the module entry point
# ------------------------------------------------------------------------------------------------

PIPELINES = Path(__file__).resolve().parent.parent / "spark_hub" / "pipelines"


def _grpo_recipes():
    return sorted(PIPELINES.glob("train-grpo/*.yaml")) + sorted(PIPELINES.glob("spark-paper/train-grpo/*.yaml"))


def test_every_grpo_recipe_parses_into_the_three_sections():
    from trl import GRPOConfig, ModelConfig

    from spark_hub.config import parse_config
    from spark_hub.train.grpo import DESIGNS, GRPOTrainArgs

    recipes = _grpo_recipes()
    assert len(recipes) >= 3, recipes
    designs = set()
    for recipe in recipes:
        args, training, model = parse_config((GRPOTrainArgs, GRPOConfig, ModelConfig), recipe, accelerator=False,
                                             flags={"output_dir": "/tmp/unused"})
        assert args.reward in DESIGNS and model.model_name_or_path, recipe
        designs.add(args.reward)
        if "spark-paper" in str(recipe):
            assert training.learning_rate == 1e-6 and training.num_generations == 16 and training.beta == 0.001
            assert training.max_completion_length == 2048 and args.max_prompt_tokens == 2048
            assert model.model_name_or_path == "Qwen/Qwen2.5-Math-7B"
    assert {"selective_advantage", "global_step"} <= designs


def test_main_trains_from_a_recipe_and_names_a_bad_key(tmp_path, tiny_policy, capsys):
    from spark_hub.train.grpo import main

    problems = _problems_file(tmp_path)
    recipe = tmp_path / "grpo.yaml"
    recipe.write_text(
        f"problems: {problems}\nreward: random\nlimit: 4\n"
        f"model_name_or_path: {tiny_policy}\n"
        "max_steps: 1\nper_device_train_batch_size: 4\nnum_generations: 4\nmax_completion_length: 8\n"
        "learning_rate: 0.001\nreport_to: none\nactivation_checkpointing: false\nsave_steps: 1\n"
    )
    out = tmp_path / "policy"
    assert main(["--config", str(recipe), "--output-dir", str(out), "--set", "seed=3"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["training_args"]["seed"] == 3 and manifest["inputs"]["problems"]["rows"] == 4
    with pytest.raises(SystemExit) as info:
        main(["--config", str(recipe), "--output-dir", str(tmp_path / "o2"), "--set", "rewrd=rlvr"])
    assert info.value.code == 2 and "unknown key rewrd" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Push (loopback Hub)
# ------------------------------------------------------------------------------------------------


def test_push_sends_checkpoints_to_step_branches_and_the_policy_with_its_card(hub_server, tmp_path, tiny_policy):
    from hub_fixtures import unique_repo

    repo_id = unique_repo("grpo-policy")
    out = _run(tmp_path, tiny_policy, "global_step", prm=ScriptedPRM(), push=True, hub_repo=repo_id)
    repo = hub_server.repo(repo_id)
    for step in (1, 2):
        files = repo.resolve(f"step-00000{step}").files
        assert {"model.safetensors", "manifest.json", "tokenizer.json", "config.json"} <= set(files), files
        assert not any(name.endswith((".pt", ".pth", ".bin")) for name in files)
    main = hub_server.files(repo_id)
    assert {"model.safetensors", "manifest.json", "README.md"} <= set(main)
    card = main["README.md"].decode()
    assert "scripted/prm" in card and "global_step" in card and repo_id in card
    assert json.loads(main["manifest.json"])["config"]["reward_design"] == "global_step"
    assert not list((out / ".spark" / "push").glob("*")), "staging folders removed after the pushes"
    # a finished run with --push again is a no-op that finds the Hub up to date
    assert _run(tmp_path, tiny_policy, "global_step", prm=ScriptedPRM(), push=True, hub_repo=repo_id) == out


from hub_fixtures import hub_server  # noqa: E402,F401 - a fixture
