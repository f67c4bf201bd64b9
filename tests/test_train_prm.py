"""train_prm: a CPU SFT run on a tiny model, resume after an interruption, a no-op re-run, load_prm on it."""

import json
from pathlib import Path

import pytest
from hub_fixtures import hub_server  # noqa: F401 - a fixture

from test_sft_data import _many
from tiny_models import make_tiny_model


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_train_prm_resumes_saves_a_loadable_prm_and_reruns_as_a_no_op(tmp_path, monkeypatch):
    from transformers import TrainerCallback

    from spark_hub.prm import GenerativePRM, load_prm
    from spark_hub.train.prm import train_prm

    base = Path(make_tiny_model(tmp_path / "base"))
    out = tmp_path / "prm"
    records = _many(12, 2)
    args = {"max_steps": 3, "save_steps": 1, "per_device_train_batch_size": 4, "learning_rate": 5e-3,
            "logging_steps": 1, "max_length": 512}

    class Killed(RuntimeError):
        pass

    class KillAfterFirstSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise Killed(f"killed after step {state.global_step}")

    with pytest.raises(Killed):
        train_prm(str(base), out, records=records, variant="prm", eval_fraction=0.2, training_args=args,
                  callbacks=[KillAfterFirstSave()])
    assert (out / ".spark" / "checkpoints" / "checkpoint-1").is_dir()
    assert not (out / "manifest.json").exists()

    class Steps(TrainerCallback):
        seen: list = []

        def on_step_end(self, args, state, control, **kwargs):
            Steps.seen.append(state.global_step)

    train_prm(str(base), out, records=records, variant="prm", eval_fraction=0.2, training_args=args,
              callbacks=[Steps()])
    assert Steps.seen == [2, 3], "the second run continued from checkpoint-1"

    for name in ("model.safetensors", "tokenizer.json", "prm_spec.json", "manifest.json", "README.md"):
        assert (out / name).is_file(), name
    assert not (out / "training_args.bin").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "prm" and manifest["statistics"]["global_step"] == 3
    assert manifest["models"]["base_model"]["fingerprint"].startswith("folder-sha256:")
    assert manifest["config"]["training_args"]["max_steps"] == 3
    assert not any(f.startswith(".spark/") for f in manifest["files"])
    before, after = _weights(base), _weights(out)
    changed = [k for k in before if not (before[k] == after[k]).all()]
    assert len(changed) > len(before) // 2, "training changed the parameters"

    import trl

    monkeypatch.setattr(trl, "SFTTrainer", lambda *a, **k: pytest.fail("a finished run must not train again"))
    assert train_prm(str(base), out, records=records, variant="prm", eval_fraction=0.2, training_args=args) == out

    prm = load_prm(out)
    assert isinstance(prm, GenerativePRM) and prm.spec["variant"] == "prm"
    [s] = prm.score_batch([("What is 2+2?", ["2+2 = 4."])])
    assert s.n_steps == 1


def test_train_prm_refuses_other_settings_and_unknown_args(tmp_path):
    from spark_hub.errors import SparkHubError
    from spark_hub.train.prm import train_prm

    base = Path(make_tiny_model(tmp_path / "base"))
    out = tmp_path / "prm"
    (out / ".spark").mkdir(parents=True)
    (out / ".spark" / "train_key.json").write_text('{"build_key": "other"}')
    with pytest.raises(SparkHubError, match="other settings"):
        train_prm(str(base), out, records=_many(4, 2), training_args={"max_steps": 1})
    with pytest.raises(SparkHubError, match="unknown training argument"):
        train_prm(str(base), tmp_path / "x", records=_many(4, 2), training_args={"max_stepz": 1})


def test_last_complete_checkpoint_skips_a_half_written_one(tmp_path):
    from spark_hub.train.prm import last_complete_checkpoint

    assert last_complete_checkpoint(tmp_path / "none") is None
    for step, state in ((1, '{"global_step": 1}'), (2, '{"global_step": 2}'), (3, None), (10, '{"global_st')):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")


_KILL_SCRIPT = """
import json, os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from transformers import TrainerCallback
from test_sft_data import _many
from spark_hub.train.prm import train_prm

kill_at = int(sys.argv[1])
seen = Path({seen!r})

class Probe(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        with seen.open("a") as f:
            f.write(f"{{state.global_step}}\\n")
        if state.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

train_prm({base!r}, {out!r}, records=_many(12, 2), variant="prm", eval_fraction=0.2,
          training_args={{"max_steps": 4, "save_steps": 1, "per_device_train_batch_size": 4,
                         "learning_rate": 5e-3, "max_length": 512}}, callbacks=[Probe()])
"""


@pytest.mark.slow
def test_train_prm_resumes_after_sigkill(tmp_path):
    import subprocess
    import sys

    from helpers import env_with_tests_on_path

    base = make_tiny_model(tmp_path / "base")
    out, seen = tmp_path / "prm", tmp_path / "seen.txt"
    script = tmp_path / "train.py"
    script.write_text(_KILL_SCRIPT.format(tests=str(Path(__file__).parent), seen=str(seen), base=str(base),
                                          out=str(out)))
    env = env_with_tests_on_path()
    killed = subprocess.run([sys.executable, str(script), "3"], env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (out / "manifest.json").exists()
    # SIGKILL at the end of step 3, before its checkpoint: checkpoint-2 is the newest complete one
    done = subprocess.run([sys.executable, str(script), "0"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert seen.read_text().split() == ["1", "2", "3", "3", "4"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["statistics"]["global_step"] == 4


def test_main_trains_from_one_recipe_and_reruns_as_a_no_op(tmp_path, monkeypatch, capsys):
    from spark_hub.train.prm import main

    base = make_tiny_model(tmp_path / "base")
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in _many(8, 2)))
    recipe = tmp_path / "train-prm.yaml"
    recipe.write_text(
        f"dataset: {records}\nvariant: prm\neval_fraction: 0.25\n"  # PRMTrainArgs
        f"model_name_or_path: {base}\n"  # ModelConfig
        "max_steps: 2\nper_device_train_batch_size: 4\nlearning_rate: 0.001\nmax_length: 512\n"  # SFTConfig
        "save_steps: 1\nreport_to: none\nactivation_checkpointing: false\n"
    )
    out = tmp_path / "prm"
    assert main(["--config", str(recipe), "--output-dir", str(out), "--set", "seed=3"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["statistics"]["global_step"] == 2 and manifest["config"]["training_args"]["seed"] == 3
    assert manifest["inputs"]["sft_data"]["source"] == str(records)
    assert (out / "prm_spec.json").is_file() and (out / "model.safetensors").is_file()

    import trl

    monkeypatch.setattr(trl, "SFTTrainer", lambda *a, **k: pytest.fail("a finished run must not train again"))
    assert main(["--config", str(recipe), "--output-dir", str(out), "--set", "seed=3"]) == 0

    with pytest.raises(SystemExit) as info:
        main(["--config", str(recipe), "--output-dir", str(tmp_path / "other"), "--set", "learning_rat=1"])
    assert info.value.code == 2 and "unknown key learning_rat" in capsys.readouterr().err


def test_checkpoints_are_pushed_to_step_branches_and_load(hub_server, tmp_path):
    from hub_fixtures import unique_repo

    from spark_hub.prm import load_prm
    from spark_hub.train.prm import train_prm

    base = make_tiny_model(tmp_path / "base")
    repo_id = unique_repo("prm-ckpt")
    out = train_prm(str(base), tmp_path / "prm", records=_many(8, 2), variant="prm", eval_fraction=0.25,
                    training_args={"max_steps": 2, "save_steps": 1, "per_device_train_batch_size": 4,
                                   "max_length": 512},
                    push_checkpoints_to=repo_id)
    repo = hub_server.repo(repo_id)
    for step in (1, 2):
        files = repo.resolve(f"step-00000{step}").files
        assert {"model.safetensors", "prm_spec.json", "manifest.json", "tokenizer.json"} <= set(files)
        assert not any(name.endswith((".pt", ".pth", ".bin")) for name in files)
    assert not (out / ".spark" / "push" / "checkpoint-1").exists()  # staging removed after the push
    prm = load_prm(repo_id, revision="step-000002")
    assert prm.spec["variant"] == "prm" and prm.score("What is 1+1?", ["1+1 = 2."]).n_steps == 1


def test_train_prm_recipes_and_accelerate_configs():
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from trl import ModelConfig, SFTConfig

    from spark_hub.config import parse_config
    from spark_hub.train.prm import PRMTrainArgs

    pipelines = Path(__file__).parent.parent / "spark_hub" / "pipelines"
    kinds = {}
    for name in ("ddp", "zero2", "zero3", "fsdp"):
        config = load_config_from_file(str(pipelines / "accelerate" / f"{name}.yaml"))  # unknown keys raise
        assert isinstance(config, ClusterConfig) and config.mixed_precision == "bf16"
        kinds[name] = (config.distributed_type.value, (config.deepspeed_config or {}).get("zero_stage"))
    assert kinds == {"ddp": ("MULTI_GPU", None), "zero2": ("DEEPSPEED", 2), "zero3": ("DEEPSPEED", 3),
                     "fsdp": ("FSDP", None)}

    def parse(name):
        return parse_config((PRMTrainArgs, SFTConfig, ModelConfig), name, [], {"output_dir": "unused"},
                            accelerator=False)

    args, training, model = parse("train-prm/demo-cpu")
    assert (args.dataset, args.variant, model.model_name_or_path) == ("outputs/demo", "prm", "embedded")
    assert training.use_cpu and not training.bf16 and training.max_steps > 0

    variants = {}
    for path in sorted((pipelines / "spark-paper" / "train-prm").glob("*.yaml")):
        args, training, model = parse(f"spark-paper/train-prm/{path.stem}")
        assert model.model_name_or_path == "Qwen/Qwen2.5-14B-Instruct" and not model.use_peft
        assert args.dataset == "outputs/spark-step-consistency"  # what spark-paper/step_consistency builds
        assert "does NOT give the SFT hyperparameters" in path.read_text()
        variants[args.variant] = path.stem
    assert variants == {"orm": "step_consistency_orm", "prm": "step_consistency_prm",
                        "prm_cot": "step_consistency_prm_cot"}


def test_lora_trains_adapters_and_saves_a_merged_model_that_load_prm_loads(tmp_path):
    from peft import LoraConfig

    from spark_hub.prm import load_prm
    from spark_hub.train.prm import train_prm

    base = Path(make_tiny_model(tmp_path / "base"))
    out = tmp_path / "prm"
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    train_prm(str(base), out, records=_many(8, 2), variant="prm", eval_fraction=0.0, peft_config=lora,
              training_args={"max_steps": 3, "save_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 5e-2,
                             "max_length": 512})
    assert not (out / "adapter_config.json").exists() and not (out / "adapter_model.safetensors").exists()
    before, after = _weights(base), _weights(out)
    assert set(after) == set(before), "merged: the base model's tensors, no lora_A/lora_B"
    changed = {k for k in before if not (before[k] == after[k]).all()}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed), changed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["lora"]["r"] == 4 and manifest["config"]["lora"]["merged"] is True
    # the LoRA checkpoint is an adapter (resumable), the folder a plain model
    assert (out / ".spark" / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors").is_file()
    [s] = load_prm(out).score_batch([("What is 2+2?", ["2+2 = 4."])])
    assert s.n_steps == 1


def test_use_peft_in_a_recipe_trains_lora(tmp_path):
    from spark_hub.train.prm import main

    base = make_tiny_model(tmp_path / "base")
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in _many(6, 2)))
    recipe = tmp_path / "lora.yaml"
    recipe.write_text(f"dataset: {records}\nvariant: orm\neval_fraction: 0.0\nmodel_name_or_path: {base}\n"
                      "use_peft: true\nlora_r: 2\nlora_alpha: 4\nlora_dropout: 0.0\nlora_target_modules: [o_proj]\n"
                      "max_steps: 1\nper_device_train_batch_size: 2\nlearning_rate: 0.05\nmax_length: 512\n"
                      "gradient_checkpointing: false\nreport_to: none\n")
    out = tmp_path / "prm"
    assert main(["--config", str(recipe), "--output-dir", str(out)]) == 0
    changed = {k for k, v in _weights(Path(base)).items() if not (v == _weights(out)[k]).all()}
    assert changed and all(k.endswith("o_proj.weight") for k in changed), changed
    assert json.loads((out / "manifest.json").read_text())["config"]["lora"]["target_modules"] == ["o_proj"]


def test_stage_one_dataset_to_pushed_prm_with_processbench_f1_in_its_card(hub_server, tmp_path):
    """Issue 10 "done when", on a tiny model: train prm from a Stage I dataset folder, eval processbench
    writes per-split F1 into the manifest and card, the pushed repo loads with load_prm and scores."""
    from click.testing import CliRunner
    from huggingface_hub import ModelCard
    from hub_fixtures import unique_repo

    import arithmetic_task
    from spark_hub.cli import cli
    from spark_hub.hub import push
    from spark_hub.prm import load_prm

    base = make_tiny_model(tmp_path / "base")
    stage1 = Path(__file__).parent / "data" / "v1_dataset"  # a Stage I build (schema v1 rows, migrated on read)
    recipe = tmp_path / "train.yaml"
    recipe.write_text(f"dataset: {stage1}\nvariant: prm\neval_fraction: 0.0\nmodel_name_or_path: {base}\n"
                      "max_steps: 1\nper_device_train_batch_size: 2\nmax_length: 512\ngradient_checkpointing: false\n")
    out = tmp_path / "prm"
    result = CliRunner().invoke(cli, ["train", "prm", "--config", str(recipe), "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    data = arithmetic_task.write_processbench(tmp_path / "pb", arithmetic_task.step_records(2, seed=0), split="gsm8k")
    result = CliRunner().invoke(cli, ["eval", "processbench", "--prm", str(out), "--data", str(data), "--no-progress",
                                      "--output", str(tmp_path / "pb.json")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    stage1_manifest = (stage1 / "manifest.json").read_bytes()
    assert manifest["inputs"]["step_records"] == {
        "source": str(stage1.resolve()), "sha256": __import__("hashlib").sha256(stage1_manifest).hexdigest(),
        "build_key": json.loads(stage1_manifest)["build_key"]}
    f1 = manifest["results"]["processbench"]["gsm8k"]["f1"]
    assert isinstance(f1, (int, float))
    card = ModelCard((out / "README.md").read_text())
    [entry] = card.data.eval_results
    assert entry.dataset_split == "gsm8k" and entry.metric_type == "f1" and entry.metric_value == round(f1, 2)

    repo_id = unique_repo("done-when")
    pushed = push(out, repo_id)
    prm = load_prm(repo_id)
    assert prm.source["commit"] == pushed.commit_sha and prm.spec["variant"] == "prm"
    [s] = prm.score_batch([("Tom has 3 apples and buys 2. How many?", ["3 + 2 = 5.", "He has 5 apples."])])
    assert s.n_steps == 2 and isinstance(s.status, str)
    remote_card = ModelCard((Path(prm.source["folder"]) / "README.md").read_text())
    assert remote_card.data.eval_results[0].metric_value == round(f1, 2)
    assert remote_card.data.base_model is None or "tiny" not in str(remote_card.data.base_model)
