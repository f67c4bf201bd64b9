"""train_prm: a CPU SFT run on a tiny model, resume after an interruption, a no-op re-run, load_prm on it."""

import json
from pathlib import Path

import pytest

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
