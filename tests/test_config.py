"""Config resolution: precedence (defaults < recipe < --set < flags), unknown keys, errors that name the
role and the source of the value, and one YAML for spark-hub and TRL dataclasses (`parse_config`)."""

import dataclasses
import os

import pytest

from helpers import scripted_recipe
from spark_hub.config import RoleConfig, load_build_config, parse_config, read_recipe
from spark_hub.errors import SparkHubError


def line_of(path, text):
    """1-based line of the first line of ``path`` containing ``text``."""
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(SparkHubError) as info:
        fn(*args, **kwargs)
    message = info.value.one_line()
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- build config


def test_precedence_defaults_recipe_set_flags(tmp_path):
    recipe = scripted_recipe(tmp_path)
    recipe.write_text(recipe.read_text() + "limit: 5\nseed: 7\nchunk_size: 9\n")
    config = load_build_config(recipe)
    assert (config.limit, config.seed, config.chunk_size, config.verifier.n) == (5, 7, 9, 3)  # recipe
    assert config.shard_rows == 50000  # default

    config = load_build_config(recipe, ["limit=4", "verifier.n=2", "chunk_size=8"])
    assert (config.limit, config.verifier.n, config.chunk_size, config.seed) == (4, 2, 8, 7)  # --set wins

    config = load_build_config(recipe, ["limit=4", "chunk_size=8"], limit=3, chunk_size=None)
    assert (config.limit, config.chunk_size) == (3, 8)  # a flag wins; an unset flag (None) does not


def test_unknown_keys_list_the_valid_ones_and_name_the_line(tmp_path):
    recipe = scripted_recipe(tmp_path)
    recipe.write_text(recipe.read_text() + "verifer:\n  n: 2\n")
    message = error_of(load_build_config, recipe)
    assert message.startswith(f"{recipe}:{line_of(recipe, 'verifer:')}: unknown key verifer (did you mean verifier? valid keys: ")
    assert "problems, " in message and "aggregation, " in message

    message = error_of(load_build_config, scripted_recipe(tmp_path), ["verifier.temprature=0.1"])
    assert message.startswith("--set verifier.temprature: unknown key verifier.temprature (did you mean temperature? "
                              "valid keys under verifier: backend, model,")


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["verifier.n=0"], "--set verifier.n: n must be >= 1, got 0 (verifier)"),
        (["generator.temperature=-1"], "--set generator.temperature: temperature must be >= 0, got -1.0 (generator)"),
        (["verifier.top_p=1.5"], "--set verifier.top_p: top_p must be in (0, 1], got 1.5 (verifier)"),
        (["generator.n=two"], "--set generator.n: generator.n must be an integer, got 'two' (generator)"),
        (["generator.backend=quantum"], "--set generator.backend: unknown backend 'quantum' (generator; valid backends: "),
        (["verifier.backend=transformers", "verifier.model=./no-such-model"],
         "--set verifier.model: model path './no-such-model' does not exist (verifier; "),
        (["limit=0"], "--set limit: limit must be >= 1, got 0"),
        (["balance.by=vibes"], "--set balance.by: balance.by must be one of"),
    ],
    ids=["n", "temperature", "top_p", "type", "backend", "model-path", "limit", "other-section"],
)
def test_errors_name_the_role_and_the_set_override(tmp_path, overrides, expected):
    assert error_of(load_build_config, scripted_recipe(tmp_path), overrides).startswith(expected)


def test_errors_name_the_recipe_line_or_the_flag(tmp_path):
    recipe = scripted_recipe(tmp_path)
    text = recipe.read_text().replace("  n: 3", "  n: 0").replace("  model: generator.jsonl", "  model: missing.jsonl")
    recipe.write_text(text)
    assert error_of(load_build_config, recipe) == (
        f"{recipe}:{line_of(recipe, 'n: 0')}: n must be >= 1, got 0 (verifier)")
    # the recipe's value is fixed by --set: the next error is the generator's missing file, at its line
    assert error_of(load_build_config, recipe, ["verifier.n=2"]).startswith(
        f"{recipe}:{line_of(recipe, 'missing.jsonl')}: model path 'missing.jsonl' does not exist (generator; ")
    # a flag is named as the flag
    assert error_of(load_build_config, recipe, ["verifier.n=2", "generator.model=generator.jsonl"], limit=0) == (
        "--limit: limit must be >= 1, got 0")


def test_the_generator_model_is_not_checked_when_solutions_are_given(tmp_path):
    recipe = scripted_recipe(tmp_path)
    solutions = tmp_path / "solutions.jsonl"
    solutions.write_text('{"problem": "1+1?", "steps": ["2"]}\n')
    config = load_build_config(recipe, ["generator.model=./gone.jsonl"], solutions=str(solutions))
    assert config.solutions == str(solutions)


def test_input_flags_and_request_settings(tmp_path):
    config = load_build_config(scripted_recipe(tmp_path), ["verifier.logprobs=true"], problems_config="main",
                               problems_split="test", problems_revision="v1")
    assert (config.problems_config, config.problems_split, config.problems_revision) == ("main", "test", "v1")
    # request settings enter the sampling dict (and so the build key) only when set
    assert config.verifier.sampling() == {"n": 3, "temperature": 0.7, "top_p": 0.95, "max_tokens": 512, "logprobs": True}
    assert "logprobs" not in config.generator.sampling() and "constrained" not in config.generator.sampling()
    config = load_build_config(scripted_recipe(tmp_path), ["verifier.constrained=true"])
    assert config.verifier.sampling()["constrained"] is True


# ----------------------------------------------------------------------------- TRL dataclasses

trl = pytest.importorskip("trl")


@dataclasses.dataclass
class SparkTrainArgs:
    """A stand-in for a Stage II script's own arguments: a flat field, a shared one, a role section."""

    dataset: str = dataclasses.field(default="org/data", metadata={"help": "Step records."})
    seed: int = 0
    verifier: RoleConfig = dataclasses.field(default_factory=RoleConfig)


RECIPE = """\
# one recipe for three dataclasses
env:
  SPARK_HUB_TEST_VAR: from-recipe
dataset: org/steps
model_name_or_path: my-org/tiny-model
lora_r: 8
learning_rate: 1e-5
num_train_epochs: 2
per_device_train_batch_size: 4
output_dir: {out}
seed: 7
verifier:
  n: 2
"""


def test_trl_and_spark_dataclasses_from_one_yaml(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARK_HUB_TEST_VAR", raising=False)
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(RECIPE.format(out=tmp_path / "from-recipe"))
    spark, training, model = parse_config((SparkTrainArgs, trl.SFTConfig, trl.ModelConfig), recipe, accelerator=False)
    assert isinstance(training, trl.SFTConfig) and isinstance(model, trl.ModelConfig)
    assert (spark.dataset, spark.verifier.n, spark.verifier.temperature) == ("org/steps", 2, 0.7)
    assert (model.model_name_or_path, model.lora_r) == ("my-org/tiny-model", 8)
    assert training.learning_rate == 1e-5  # YAML 1.1 reads `1e-5` as a string: coerced for a float field
    assert (training.num_train_epochs, training.per_device_train_batch_size) == (2, 4)
    assert spark.seed == training.seed == 7  # a key two dataclasses declare goes to both, as in TrlParser
    assert os.environ["SPARK_HUB_TEST_VAR"] == "from-recipe"


def test_trl_precedence_recipe_set_flags(tmp_path):
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(RECIPE.format(out=tmp_path / "from-recipe"))
    types = (SparkTrainArgs, trl.SFTConfig, trl.ModelConfig)
    overrides = ["learning_rate=2e-5", "output_dir=" + str(tmp_path / "from-set"), "verifier.n=3"]
    spark, training, model = parse_config(types, recipe, overrides, accelerator=False)
    assert (training.learning_rate, training.output_dir, spark.verifier.n) == (2e-5, str(tmp_path / "from-set"), 3)
    spark, training, model = parse_config(types, recipe, overrides, {"output_dir": str(tmp_path / "flag"),
                                                                     "lora_r": None}, accelerator=False)
    assert training.output_dir == str(tmp_path / "flag") and model.lora_r == 8


def test_cpu_defaults_without_an_accelerator(tmp_path):
    with pytest.raises(ValueError, match="bf16"):  # TRL's own default does not run on a CPU-only machine...
        trl.SFTConfig(output_dir=str(tmp_path), use_cpu=False)
    training, = parse_config((trl.SFTConfig,), flags={"output_dir": str(tmp_path)}, accelerator=False)
    assert training.use_cpu is True and training.bf16 is False  # ...the parser's does
    training, = parse_config((trl.SFTConfig,), overrides=["bf16=true"], flags={"output_dir": str(tmp_path)},
                             accelerator=False)
    assert training.bf16 is True and training.use_cpu is True  # what the user sets is kept


def test_trl_errors_name_the_source(tmp_path):
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(RECIPE.format(out=tmp_path) + "learnin_rate: 0.1\n")
    types = (SparkTrainArgs, trl.SFTConfig, trl.ModelConfig)
    message = error_of(parse_config, types, recipe, accelerator=False)
    assert message.startswith(f"{recipe}:{line_of(recipe, 'learnin_rate')}: unknown key learnin_rate "
                              "(did you mean learning_rate? valid keys: ")
    assert "lora_r, " in message and "dataset, " in message and "per_device_train_batch_size, " in message

    message = error_of(parse_config, (trl.SFTConfig,), overrides=["bf16=true", "fp16=true"],
                       flags={"output_dir": str(tmp_path)}, accelerator=False)
    assert message.startswith("--set bf16, --set fp16: ") and "fp16 and bf16" in message
    message = error_of(parse_config, (trl.SFTConfig,), overrides=["lr_scheduler_type=sometimes"],
                       flags={"output_dir": str(tmp_path)}, accelerator=False)
    assert message.startswith("--set lr_scheduler_type: sometimes is not a valid SchedulerType")
    message = error_of(parse_config, types, overrides=["verifier.n=0"], flags={"output_dir": str(tmp_path)},
                       accelerator=False)
    assert message == "--set verifier.n: n must be >= 1, got 0 (verifier)"


def test_grpo_config_from_one_yaml_with_its_own_checks(tmp_path):
    recipe = tmp_path / "grpo.yaml"
    recipe.write_text("model_name_or_path: my-org/policy\nlearning_rate: 1e-6\nnum_generations: 4\n"
                      "per_device_train_batch_size: 4\nmax_completion_length: 64\nbeta: 0.04\n")
    grpo, model = parse_config((trl.GRPOConfig, trl.ModelConfig), recipe, flags={"output_dir": str(tmp_path / "out")},
                               accelerator=False)
    assert (grpo.learning_rate, grpo.num_generations, grpo.beta, grpo.use_cpu, grpo.bf16) == (1e-6, 4, 0.04, True, False)
    assert model.model_name_or_path == "my-org/policy"
    # TRL's cross-field rule on a derived value: the message is TRL's, the blame goes to the key the user set
    message = error_of(parse_config, (trl.GRPOConfig, trl.ModelConfig), recipe, ["per_device_train_batch_size=3"],
                       {"output_dir": str(tmp_path / "out")}, accelerator=False)
    assert message.startswith(f"{recipe}:3: generation_batch_size (3) must be divisible by num_generations (4)")
    message = error_of(parse_config, (trl.GRPOConfig, trl.ModelConfig), recipe, ["num_generations=1"],
                       {"output_dir": str(tmp_path / "out")}, accelerator=False)
    assert message.startswith("--set num_generations: GRPO requires at least 2 generations per prompt")


def test_input_paths_are_read_relative_to_the_recipe(tmp_path, monkeypatch):
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "held-out.jsonl").write_text('{"problem": "1+1?", "answer": "2"}\n')
    (folder / "records").mkdir()

    @dataclasses.dataclass
    class Inputs:
        dataset: str = ""
        monitor_problems: str = ""
        prm: str = ""

    recipe = folder / "r.yaml"
    recipe.write_text("dataset: records\nmonitor_problems: held-out.jsonl\nprm: my-org/prm\n")
    monkeypatch.chdir(tmp_path)  # not the recipe's folder
    inputs, = parse_config((Inputs,), recipe)
    assert inputs.dataset == str(folder / "records") and inputs.monitor_problems == str(folder / "held-out.jsonl")
    assert inputs.prm == "my-org/prm"  # a Hub id stays a Hub id


def test_a_recipe_reads_its_own_files_from_any_working_directory(tmp_path, monkeypatch):
    """`problems: ../p.jsonl` means the file next to the recipe, even when the working directory has one too."""
    (tmp_path / "recipes" / "r").mkdir(parents=True)
    (tmp_path / "recipes" / "p.jsonl").write_text('{"problem": "from the recipe"}\n')
    (tmp_path / "cwd").mkdir()
    (tmp_path / "p.jsonl").write_text('{"problem": "from the working directory"}\n')
    recipe = tmp_path / "recipes" / "r" / "recipe.yaml"
    recipe.write_text("problems: ../p.jsonl\n")
    monkeypatch.chdir(tmp_path / "cwd")  # here ../p.jsonl is the other file
    data, _ = read_recipe(recipe)
    assert data["problems"] == str(tmp_path / "recipes" / "p.jsonl")
