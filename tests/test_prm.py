"""load_prm: specs, the generative reader, and the two published conventions on tiny random models."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from hub_fixtures import hub_server  # noqa: F401 - a fixture

from spark_hub import rm_prompts
from spark_hub.errors import SparkHubError
from spark_hub.prm import (
    BUILTIN_SPECS,
    GenerativePRM,
    StepScores,
    StepSeparatorPRM,
    StepTagPRM,
    aggregate,
    builtin_spec,
    generative_spec,
    load_prm,
    validate_spec,
    write_spec,
)

PROBLEM = "Tom has 3 apples and buys 4 more. How many apples does he have?"
STEPS = ["Tom starts with 3 apples.", "He buys 4 more, so 3 + 4 = 7.", "The answer is 7."]


# ------------------------------------------------------------------------------------------------
# Specs
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BUILTIN_SPECS))
def test_builtin_specs_validate(name):
    assert validate_spec(builtin_spec(name))["kind"] in ("step_separator", "step_tag")


@pytest.mark.parametrize("variant", rm_prompts.VARIANTS)
def test_generative_specs_validate(variant):
    spec = generative_spec(variant)
    assert spec["prompt"]["template"] == rm_prompts.TEMPLATES[variant]
    assert spec["aggregation"] == ("final" if variant == "orm" else "min")


def test_spec_errors_name_the_problem():
    spec = generative_spec("prm")
    spec["prompt"]["template"] += " Be strict."
    with pytest.raises(SparkHubError, match="template_sha256"):
        validate_spec(spec)
    spec = generative_spec("prm")
    spec["verdicts"]["reader"] = "orm"
    with pytest.raises(SparkHubError, match="does not match variant"):
        validate_spec(spec)
    with pytest.raises(SparkHubError, match=r"prm_spec.json: \$\.kind"):
        validate_spec({**builtin_spec("math-shepherd"), "kind": "magic"})
    with pytest.raises(SparkHubError, match="aggregation"):
        validate_spec({**builtin_spec("math-shepherd"), "aggregation": "median"})


def test_aggregate():
    values = [0.9, 0.5, 0.8]
    assert aggregate(values, "min") == 0.5
    assert aggregate(values, "product") == pytest.approx(0.36)
    assert aggregate(values, "last") == 0.8
    assert aggregate(values, "mean") == pytest.approx(2.2 / 3)
    assert aggregate(values, "final", final=0.7) == 0.7
    assert aggregate([0.9, None], "min") is None and aggregate([], "mean") is None


@pytest.mark.parametrize(
    "verdicts, n, expected",
    [([True, True], 2, -1), ([True, False, False], 3, 1), ([True, None, False], 3, None),
     ([True], 2, None), ([], 0, None)],
)
def test_first_error(verdicts, n, expected):
    assert StepScores(n_steps=n, step_verdicts=verdicts).first_error == expected


# ------------------------------------------------------------------------------------------------
# Reading generative outputs
# ------------------------------------------------------------------------------------------------


def test_parse_prm_lines():
    v = rm_prompts.parse_prm_lines(
        "Step 1: Correct\n**Step 2:** Incorrect\nStep 3: Incorrect\n"
        "Verification: Is the answer correct (Yes/No)? No", expected_steps=3)
    assert (v.step_verdicts, v.final_verdict, v.status) == ([True, False, False], False, "ok")
    assert rm_prompts.parse_prm_lines("Step 1: Correct\nStep 3: Correct\nVerification: Is the answer correct "
                                      "(Yes/No)? Yes", 3).status == "missing_step_verdict"
    assert rm_prompts.parse_prm_lines("Step 1: Correct", 1).status == "no_final_verdict"
    assert rm_prompts.parse_prm_lines("Step 1: Correct\nVerification: Is the answer correct (Yes/No)? Yes",
                                      2).status == "step_count_mismatch"
    assert rm_prompts.parse_prm_lines("", 2).status == "empty"
    assert rm_prompts.parse_prm_lines("I think it is fine.", 2).status == "no_steps"


def test_parse_orm():
    assert rm_prompts.parse_orm(" **Yes.**\n").final_verdict is True
    assert rm_prompts.parse_orm("No").final_verdict is False
    assert rm_prompts.parse_orm("Yes, but step 2 is wrong").status == "unparsed"
    assert rm_prompts.parse_orm("").status == "empty"


def test_parse_prm_cot_agrees_with_the_stage_one_parser():
    from spark_hub.parsing import parse_verification

    text = ("<think>hmm</think>## Step 1: Start\nFine.\n**This step is correct.**\n\n## Step 2: Add\n"
            "3 + 4 = 8 is wrong.\n**This step is incorrect.**\n\nVerification: Is the answer correct (Yes/No)? No")
    ours = rm_prompts.parse_prm_cot(text, 2)
    stage1 = parse_verification(text, 2)
    assert ours.step_verdicts == stage1.step_verdicts == [True, False]
    assert ours.final_verdict is stage1.final_verdict is False and ours.status == stage1.status == "ok"
    assert text[ours.step_positions[1]:].startswith("incorrect")


def test_rm_prompt_and_targets_golden():
    assert rm_prompts.rm_prompt("prm", " What is 2+2? ", ["2+2 = 4. "], "4") == (
        "Problem: What is 2+2?\n\nStudent Solution:\nStep 1: 2+2 = 4.\nAnswer: 4\n\nLet's verify step by step.")
    assert rm_prompts.prm_target([True, False], False) == (
        "Step 1: Correct\nStep 2: Incorrect\nVerification: Is the answer correct (Yes/No)? No")


# ------------------------------------------------------------------------------------------------
# Generative PRMs
# ------------------------------------------------------------------------------------------------


def _completion(pieces):
    """A completion made of (text, logprob) tokens, with offsets like a backend's."""
    offsets, position = [], 0
    for piece, _ in pieces:
        offsets.append(position)
        position += len(piece)
    return SimpleNamespace(text="".join(p for p, _ in pieces), token_ids=list(range(len(pieces))),
                           logprobs=[lp for _, lp in pieces], token_offsets=offsets)


class FakeBackend:
    model_id = "fake"

    def __init__(self, completions):
        self.completions = completions
        self.calls = 0
        self.requests = []

    def generate(self, requests):
        self.calls += 1
        self.requests.extend(requests)
        return [[self.completions[i % len(self.completions)]] for i in range(len(requests))]


def _prm_folder(tmp_path, spec):
    folder = tmp_path / "prm"
    folder.mkdir(exist_ok=True)
    write_spec(folder, spec)
    return folder


def test_generative_prm_probabilities_from_logprobs(tmp_path):
    good = _completion([("Step 1:", -0.1), (" Correct", math.log(0.9)), ("\nStep 2:", -0.1),
                        (" Incorrect", math.log(0.8)), ("\nVerification: Is the answer correct (Yes/No)?", -0.2),
                        (" No", math.log(0.7))])
    garbage = SimpleNamespace(text="I cannot tell.", token_ids=None, logprobs=None, token_offsets=None)
    backend = FakeBackend([good, garbage])
    prm = load_prm(_prm_folder(tmp_path, generative_spec("prm")), backend=backend)
    assert isinstance(prm, GenerativePRM)
    first, second, third = prm.score_batch([(PROBLEM, STEPS[:2]), {"problem": PROBLEM, "steps": STEPS[:2]},
                                            (PROBLEM, STEPS[:2], "7")])
    assert backend.calls == 1 and prm.calls == 1 and len(backend.requests) == 3
    request = backend.requests[2]
    assert request.temperature == 0.0 and request.n == 1
    assert dict(request.messages)["user"] == rm_prompts.rm_prompt("prm", PROBLEM, STEPS[:2], "7")
    if hasattr(request, "logprobs"):
        assert request.logprobs is True

    assert first.step_verdicts == [True, False] and first.status == "ok" and first.first_error == 1
    assert first.step_probs == pytest.approx([0.9, 0.2])
    assert first.final_verdict is False and first.final_prob == pytest.approx(0.3)
    assert first.solution_score == pytest.approx(0.2)  # min
    assert second.status == "no_steps" and second.step_verdicts == [None, None] and second.first_error is None
    assert second.solution_score is None and second.text == "I cannot tell."
    json.dumps([s.to_dict() for s in (first, second, third)])


def test_generative_prm_without_logprobs_scores_verdicts_as_one_and_zero(tmp_path):
    backend = FakeBackend([SimpleNamespace(text="Step 1: Correct\nStep 2: Correct\nStep 3: Correct\n"
                                                "Verification: Is the answer correct (Yes/No)? Yes")])
    spec = generative_spec("prm", aggregation="mean")
    [s] = load_prm(_prm_folder(tmp_path, spec), backend=backend).score_batch([(PROBLEM, STEPS)])
    assert s.step_probs == [None, None, None] and s.solution_score == 1.0 and s.first_error == -1


def test_orm(tmp_path):
    backend = FakeBackend([_completion([("Yes", math.log(0.6))])])
    prm = load_prm(_prm_folder(tmp_path, generative_spec("orm")), backend=backend)
    s = prm.score(PROBLEM, STEPS)
    assert s.outcome_only and s.final_verdict is True and s.final_prob == pytest.approx(0.6)
    assert s.solution_score == pytest.approx(0.6) and s.first_error == -1 and s.step_verdicts == []
    assert dict(backend.requests[0].messages)["user"].endswith("Is the answer correct (Yes/No)?")


def test_generative_prm_on_a_tiny_transformers_model(tmp_path):
    """The real backend: one generate call per batch; random text never raises."""
    from tiny_models import make_tiny_model

    folder = Path(make_tiny_model(tmp_path / "tiny"))
    write_spec(folder, generative_spec("prm_cot", generation={"max_tokens": 6}))
    prm = load_prm(folder, batch_size=8)
    calls = []
    original = prm.backend._generate_batch
    prm.backend._generate_batch = lambda *a, **k: calls.append(1) or original(*a, **k)
    results = prm.score_batch([(PROBLEM, STEPS), (PROBLEM, STEPS[:1]), (PROBLEM + " Twice?", STEPS[:2])])
    assert len(calls) == 1 and prm.calls == 1
    for s, n in zip(results, (3, 1, 2)):
        assert s.n_steps == n and len(s.step_verdicts) == n and isinstance(s.status, str)
    assert prm.describe()["kind"] == "generative"


# ------------------------------------------------------------------------------------------------
# Published conventions on tiny random models
# ------------------------------------------------------------------------------------------------


def _tokenizer(extra_special=(), extra=()):
    from tiny_models import make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    if extra_special:
        tok.add_tokens(list(extra_special), special_tokens=True)
    if extra:
        tok.add_tokens(list(extra))
    return tok


def _qwen_prm_folder(path: Path, seed: int = 0):
    """A tiny model in the Qwen2.5-Math-PRM layout: Qwen2 backbone (model.*) + score.0/score.2 head."""
    import torch
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2Model

    tok = _tokenizer(extra_special=["<extra_0>"])
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    backbone = Qwen2Model(config).eval()
    head = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2)).eval()
    tensors = {f"model.{k}": v.contiguous() for k, v in backbone.state_dict().items()}
    tensors.update({f"score.{k}": v.contiguous() for k, v in head.state_dict().items()})
    path.mkdir(parents=True)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    config.architectures = ["Qwen2ForProcessRewardModel"]
    config.auto_map = {"AutoModel": "modeling_qwen2_rm.Qwen2ForProcessRewardModel"}  # remote code we never run
    config.save_pretrained(path)
    tok.save_pretrained(path)
    return tok, backbone, head


def _qwen_reference(tok, backbone, head, problem, steps):
    """The model card's recipe: chat with the steps joined by <extra_0>, softmax[1] at each separator."""
    import torch

    messages = [
        {"role": "system", "content": "Please reason step by step, and put your final answer within \\boxed{}."},
        {"role": "user", "content": problem},
        {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        probs = head(backbone(input_ids=ids).last_hidden_state).softmax(-1)
    sep = tok.encode("<extra_0>", add_special_tokens=False)[0]
    return probs[0][ids[0] == sep][:, 1].tolist()


def test_qwen_math_prm_convention(tmp_path):
    folder = tmp_path / "qwen-prm"
    tok, backbone, head = _qwen_prm_folder(folder)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)  # as the model card does (model_type qwen2: Qwen2Tokenizer)
    prm = load_prm(folder)  # no prm_spec.json: recognised from config.json's architecture, no remote code
    assert isinstance(prm, StepSeparatorPRM) and prm.spec["name"] == "Qwen2.5-Math-PRM"
    items = [(PROBLEM, STEPS), (PROBLEM + " And then?", STEPS[:1]), ("Short?", STEPS[:2])]
    results = prm.score_batch(items)
    assert prm.calls == 1
    for (problem, steps), s in zip(items, results):
        expected = _qwen_reference(tok, backbone, head, problem, steps)
        assert len(expected) == len(steps)
        assert s.step_probs == pytest.approx(expected, abs=1e-5)
        assert s.status == "ok" and s.step_verdicts == [p >= 0.5 for p in expected]
        assert s.solution_score == pytest.approx(min(expected), abs=1e-5)
    # padding in a batch changes nothing
    single = prm.score(PROBLEM, STEPS)
    assert single.step_probs == pytest.approx(results[0].step_probs, abs=1e-5)


def test_qwen_convention_as_token_classification_and_truncation(tmp_path):
    import torch
    from transformers import LlamaConfig, LlamaForTokenClassification

    tok = _tokenizer(extra_special=["<extra_0>"])
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=2, pad_token_id=tok.pad_token_id)
    torch.manual_seed(1)
    model = LlamaForTokenClassification(config).eval()
    folder = tmp_path / "tc"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    spec = builtin_spec("qwen2.5-math-prm")
    spec["model"]["head"] = "token_classification"
    prm = load_prm(folder, spec=spec)
    s = prm.score(PROBLEM, STEPS)
    ids = torch.tensor([tok.encode(prm.text(PROBLEM, STEPS))])
    with torch.no_grad():
        probs = model(input_ids=ids).logits.softmax(-1)[0, :, 1]
    sep = tok.convert_tokens_to_ids("<extra_0>")
    assert s.step_probs == pytest.approx(probs[ids[0] == sep].tolist(), abs=1e-5)

    spec["input"]["max_length"] = int((ids[0] == sep).nonzero()[1]) + 1  # room for two separators only
    short = load_prm(folder, spec=spec).score(PROBLEM, STEPS)
    assert short.status == "truncated" and short.step_probs[2] is None and short.first_error in (None, 0, 1)
    assert short.step_probs[:2] == pytest.approx(s.step_probs[:2], abs=1e-5)


def _shepherd_folder(path: Path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer(extra=["ки"])
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=False)
    torch.manual_seed(2)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return tok, model


def test_math_shepherd_convention(tmp_path):
    import torch

    folder = tmp_path / "shepherd"
    tok, model = _shepherd_folder(folder)
    plus, minus = tok.convert_tokens_to_ids("+"), tok.convert_tokens_to_ids("-")
    spec = builtin_spec("math-shepherd")
    spec["score"].update(positive_token_id=plus, negative_token_id=minus)
    prm = load_prm(folder, spec=spec)
    assert isinstance(prm, StepTagPRM)
    items = [(PROBLEM, STEPS), ("What is 1+1?", ["1+1 = 2. The answer is: 2"])]
    results = prm.score_batch(items)
    assert prm.calls == 1
    for (problem, steps), s in zip(items, results):
        # the model card's recipe: "{question} {output}", output = "Step k: ... ки" lines
        output = "\n".join(f"Step {k}: {step} ки" for k, step in enumerate(steps, start=1))
        ids = torch.tensor([tok.encode(f"{problem} {output}")])
        with torch.no_grad():
            scores = model(ids).logits[:, :, [plus, minus]].softmax(dim=-1)[:, :, 0]
        expected = scores[ids == tok.convert_tokens_to_ids("ки")].tolist()
        assert len(expected) == len(steps)
        assert s.step_probs == pytest.approx(expected, abs=1e-5) and s.status == "ok"

    default = load_prm(folder, spec="math-shepherd")  # candidate ids from tokenizing "+ -"
    assert len(default.candidates) == 2 and default.candidates[0] != default.candidates[1]


def test_loading_rules(tmp_path):
    import torch

    folder = tmp_path / "pickle"
    folder.mkdir()
    write_spec(folder, builtin_spec("math-shepherd"))
    (folder / "config.json").write_text("{}")
    torch.save({}, folder / "pytorch_model.bin")
    with pytest.raises(SparkHubError, match="safetensors only"):
        load_prm(folder)
    spec = builtin_spec("math-shepherd")
    spec["model"]["trust_remote_code"] = True
    write_spec(folder, spec)
    with pytest.raises(SparkHubError, match="trust_remote_code=True"):
        load_prm(folder)
    with pytest.raises(SparkHubError, match="neither an existing folder nor a Hub repo"):
        load_prm(tmp_path / "missing" / "deeper")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SparkHubError, match="no prm_spec.json"):
        load_prm(empty)
    write_spec(empty, generative_spec("prm"))
    with pytest.raises(SparkHubError, match="unknown backend option"):
        load_prm(empty, backend="scripted", temperature=0.3)
    with pytest.raises(SparkHubError, match="transformers only"):
        load_prm(folder, spec="math-shepherd", backend="vllm")


# ------------------------------------------------------------------------------------------------
# Hub round trip
# ------------------------------------------------------------------------------------------------


def _generative_prm_folder(path: Path, kind: str = "prm") -> Path:
    from tiny_models import make_tiny_model

    from spark_hub.manifest import new_manifest, write_manifest

    folder = Path(make_tiny_model(path))
    spec = generative_spec("prm", generation={"max_tokens": 4})
    write_spec(folder, spec)
    write_manifest(folder, new_manifest(kind, config={"prm_format": "prm"}, prompts={"prm": spec["prompt"]["template_sha256"]},
                                        models={"base_model": {"id": "tiny", "revision": None}}))
    return folder


def test_load_prm_from_the_loopback_hub(hub_server, tmp_path):
    from hub_fixtures import unique_repo

    from spark_hub.hub import push

    folder = _generative_prm_folder(tmp_path / "prm")
    repo_id = unique_repo("prm")
    result = push(folder, repo_id, revision="v1")
    prm = load_prm(repo_id, revision="v1")
    assert isinstance(prm, GenerativePRM)
    assert prm.source["revision"] == "v1" and prm.source["commit"] == result.commit_sha
    assert (Path(prm.source["folder"]) / "prm_spec.json").read_text() == (folder / "prm_spec.json").read_text()
    [s] = prm.score_batch([(PROBLEM, STEPS)])
    assert s.n_steps == 3 and isinstance(s.status, str)
    with pytest.raises(SparkHubError, match="not found|no model"):
        load_prm(repo_id, revision="missing-branch")


def test_load_prm_refuses_an_artifact_that_is_not_a_prm(tmp_path):
    folder = _generative_prm_folder(tmp_path / "ds", kind="dataset")
    with pytest.raises(SparkHubError, match="'dataset' artifact, not a PRM"):
        load_prm(folder)


def test_constrained_prm_cot_on_a_tiny_model_gives_exact_step_probabilities(tmp_path):
    """A random model decoded in the verifier format always parses; verdict probabilities are exact."""
    from tiny_models import make_tiny_model

    from spark_hub.backends.base import GenerationRequest

    if "constraint" not in {f.name for f in __import__("dataclasses").fields(GenerationRequest)}:
        pytest.skip("no constrained decoding in this checkout")
    folder = Path(make_tiny_model(tmp_path / "tiny"))
    write_spec(folder, generative_spec("prm_cot", generation={"max_tokens": 160, "constrained": True}))
    prm = load_prm(folder, batch_size=8)
    results = prm.score_batch([(PROBLEM, STEPS), (PROBLEM, STEPS[:1])])
    assert prm.calls == 1
    for s, n in zip(results, (3, 1)):
        assert s.status == "ok", s.text
        assert len(s.step_probs) == n and all(p is not None and 0 < p < 1 for p in s.step_probs)
        # greedy decoding picks the likelier branch: the verdict agrees with its probability
        assert s.step_verdicts == [p >= 0.5 for p in s.step_probs]
        assert s.final_prob is not None and s.final_verdict == (s.final_prob >= 0.5)
        assert s.solution_score == pytest.approx(min(s.step_probs))
    with pytest.raises(SparkHubError, match="only defined for the prm_cot"):
        generative_spec("prm", generation={"constrained": True})


def test_verdict_probability_spans_every_token_of_the_word(tmp_path):
    """" Incorrect" as " " + "In" + "correct": P(incorrect) is the product, P(correct) its complement."""
    split = _completion([("Step 1:", -0.1), (" ", math.log(0.5)), ("In", math.log(0.6)), ("correct", 0.0),
                         ("\nVerification: Is the answer correct (Yes/No)?", 0.0), (" ", 0.0), ("No", math.log(0.9))])
    prm = load_prm(_prm_folder(tmp_path, generative_spec("prm")), backend=FakeBackend([split]))
    s = prm.score(PROBLEM, STEPS[:1])
    assert s.step_verdicts == [False] and s.step_probs == pytest.approx([1 - 0.5 * 0.6])
    assert s.final_prob == pytest.approx(0.1)


def test_published_convention_from_the_hub_fetches_safetensors_only(hub_server, tmp_path):
    """A non spark-hub repo (no manifest) with spec=...: configs, tokenizer and safetensors, never pickles."""
    import torch
    from huggingface_hub import HfApi
    from hub_fixtures import unique_repo

    folder = tmp_path / "qwen-prm"
    _qwen_prm_folder(folder)
    torch.save({"decoy": torch.zeros(1)}, folder / "pytorch_model.bin")
    repo_id = unique_repo("qwen-prm")
    api = HfApi(endpoint=hub_server.endpoint)
    api.create_repo(repo_id)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder))

    prm = load_prm(repo_id, spec="qwen2.5-math-prm")
    fetched = Path(prm.source["folder"])
    assert (fetched / "model.safetensors").is_file() and not (fetched / "pytorch_model.bin").exists()
    local = load_prm(folder, spec="qwen2.5-math-prm").score(PROBLEM, STEPS)
    assert prm.score(PROBLEM, STEPS).step_probs == pytest.approx(local.step_probs, abs=1e-6)
    with pytest.raises(SparkHubError, match="no manifest.json|not a spark-hub artifact"):
        load_prm(repo_id)  # without a spec it must be a spark-hub artifact
