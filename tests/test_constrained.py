"""Format-constrained verification (spark_hub.constrained) and token logprobs, on a tiny random Llama.

A random model writes gibberish, which is the point: whatever it samples, a constrained verification
must parse with status ok and exactly one block per solution step, within max_tokens.
"""

import hashlib
import json
import math
import re

import pytest

from spark_hub.backends.base import BackendConfig, Completion, GenerationRequest
from spark_hub.constrained import (
    critique_constraint,
    min_tokens,
    parse_constraint,
    verification_constraint,
    verification_regex,
)
from spark_hub.errors import SparkHubError
from spark_hub.parsing import parse_verification
from spark_hub.records import Solution
from spark_hub.stages.verify import parse_verifications, verdict_probabilities, verification_request
from tiny_models import make_tiny_model


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    from spark_hub.backends.transformers_ import TransformersBackend

    path = make_tiny_model(tmp_path_factory.mktemp("tiny-constrained"))
    backend = TransformersBackend(BackendConfig(model=path, batch_size=8))
    backend.load()
    return backend


def request(text="Grade this solution.", **sampling):
    return GenerationRequest.from_chat([{"role": "user", "content": text}], **sampling)


def budget(backend, constraint, extra):
    return min_tokens(constraint, backend.tokenizer, backend.model.get_output_embeddings().weight.shape[0]) + extra


@pytest.mark.parametrize("think", [False, True])
def test_constrained_outputs_always_parse_with_the_exact_step_count(backend, think):
    counts = (1, 3, 6)
    constraints = [verification_constraint(k, think=think) for k in counts]
    requests = [
        request(f"Grade solution {k} " * k, n=3, temperature=1.0, max_tokens=budget(backend, c, 10 * k), seed=k,
                constraint=c)
        for k, c in zip(counts, constraints)
    ]
    results = backend.generate(requests)
    for k, req, completions in zip(counts, requests, results):
        assert len(completions) == 3
        for completion in completions:
            parsed = parse_verification(completion.text, expected_steps=k)
            assert parsed.status == "ok", completion.text
            assert len(parsed.step_verdicts) == k and parsed.final_verdict is not None
            assert completion.finish_reason == "stop" and completion.completion_tokens <= req.max_tokens
            assert completion.text.startswith("<think>\n" if think else "## Step 1:")
            headers = re.findall(r"^## Step (\d+):", completion.text, flags=re.MULTILINE)
            assert headers == [str(i) for i in range(1, k + 1)]


def test_budget_forces_the_verdicts_when_max_tokens_is_tight(backend):
    constraint = verification_constraint(4)
    tight = budget(backend, constraint, 0)
    completions = backend.generate([request(n=2, temperature=1.0, max_tokens=tight, seed=3, constraint=constraint)])[0]
    for completion in completions:
        assert parse_verification(completion.text, expected_steps=4).status == "ok"
        assert completion.completion_tokens <= tight


def test_constrained_and_free_requests_share_a_batch(backend):
    constraint = verification_constraint(2)
    max_tokens = budget(backend, constraint, 10)
    free, constrained = backend.generate([
        request("plain", n=2, temperature=1.0, max_tokens=max_tokens, seed=1),
        request("plain", n=2, temperature=1.0, max_tokens=max_tokens, seed=1, constraint=constraint),
    ])
    assert all(parse_verification(c.text, 2).status == "ok" for c in constrained)
    assert all(parse_verification(c.text, 2).status != "ok" for c in free)  # random weights ramble


def test_critique_constraint_forces_the_opening(backend):
    out = backend.generate([request(n=1, temperature=1.0, max_tokens=30, seed=1, constraint=critique_constraint())])
    assert out[0][0].text.startswith("**Critique of the original verification**")


def test_constraint_and_logprobs_change_the_cache_key_only_when_set():
    base = request(n=2, temperature=0.8, max_tokens=64, seed=1)
    # the key of a request without the new fields is the one earlier builds computed
    old_payload = {"model": "m", "messages": [list(m) for m in base.messages], "n": 2, "temperature": 0.8,
                   "top_p": 1.0, "max_tokens": 64, "seed": 1}
    old_key = hashlib.sha256(json.dumps(old_payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    assert base.key("m") == old_key
    keys = {
        base.key("m"),
        request(n=2, temperature=0.8, max_tokens=64, seed=1, logprobs=True).key("m"),
        request(n=2, temperature=0.8, max_tokens=64, seed=1, constraint=verification_constraint(3)).key("m"),
        request(n=2, temperature=0.8, max_tokens=64, seed=1, constraint=verification_constraint(4)).key("m"),
        request(n=2, temperature=0.8, max_tokens=64, seed=1, constraint=verification_constraint(3, think=True)).key("m"),
    }
    assert len(keys) == 5


def test_verification_request_sets_the_constraint_from_the_step_count():
    from spark_hub.records import Problem

    problem = Problem(id="p", problem="1+1?", reference="2")
    solution = Solution(problem_id="p", index=0, text="Step 1: 1+1=2\nStep 2: so 2\nAnswer: 2",
                        steps=["1+1=2", "so 2"], final_answer="2", status="ok")
    sampling = {"n": 2, "temperature": 0.8, "top_p": 0.95, "max_tokens": 64}
    assert verification_request(problem, solution, sampling, 1).constraint is None
    req = verification_request(problem, solution, sampling, 1, constrained=True)
    assert parse_constraint(req.constraint).steps == 2
    assert verification_request(problem, solution, {**sampling, "constrained": True}, 1).constraint == req.constraint


def test_logprobs_are_present_shaped_and_match_the_model(backend):
    import torch

    constraint = verification_constraint(2)
    plain, constrained = backend.generate([
        request("logprobs", n=1, temperature=0.0, max_tokens=20, logprobs=True),
        request("logprobs", n=2, temperature=1.0, max_tokens=budget(backend, constraint, 20), seed=5,
                logprobs=True, constraint=constraint),
    ])
    for completion in plain + constrained:
        ids, lps, offsets = completion.token_ids, completion.logprobs, completion.token_offsets
        assert ids and len(ids) == len(lps) == len(offsets)
        assert len(ids) == completion.completion_tokens - (completion.finish_reason == "stop")
        assert all(lp <= 1e-6 for lp in lps)
        assert offsets == sorted(offsets) and offsets[0] == 0
        assert backend.tokenizer.decode(ids, skip_special_tokens=True) == completion.text
        restored = Completion.from_dict(json.loads(json.dumps(completion.to_dict())))
        assert restored == completion  # what the SQLite cache stores
    # unconstrained greedy: the recorded logprobs are the model's own log-softmax at each position
    completion = plain[0]
    prompt = backend._prompt_ids(request("logprobs", n=1, temperature=0.0, max_tokens=20))
    with torch.inference_mode():
        logits = backend.model(torch.tensor([prompt + completion.token_ids])).logits[0]
    expected = torch.log_softmax(logits.float(), -1)[len(prompt) - 1 : -1].gather(
        1, torch.tensor(completion.token_ids)[:, None]).squeeze(1)
    assert torch.allclose(expected, torch.tensor(completion.logprobs), atol=1e-3)
    # constrained: forced tokens have probability 1; verdict probabilities are read for every step
    solution = Solution(problem_id="p", index=0, text="", steps=["a", "b"], final_answer="1", status="ok")
    for completion in constrained:
        assert sum(1 for lp in completion.logprobs if lp == 0.0) >= 10
        verification = parse_verifications(solution, [completion], "tiny")[0]
        assert verification.parse_status == "ok"
        assert len(verification.step_probs) == 2 and all(0 < p < 1 for p in verification.step_probs)
        assert 0 < verification.final_prob < 1
        chosen = [p if v else 1 - p for p, v in zip(verification.step_probs, verification.step_verdicts)]
        assert all(p > 0 for p in chosen)


def test_verdict_probabilities_read_the_verdict_tokens():
    text = ("## Step 1: a\nok\n**This step is correct.**\n\n## Step 2: b\n**This step is incorrect.**\n\n"
            "Verification: Is the answer correct (Yes/No)? No")
    pieces = re.findall(r"\s*\S+", text)
    offsets = [sum(len(p) for p in pieces[:i]) for i in range(len(pieces))]
    chosen = {"correct.**": 0.9, "incorrect.**": 0.7, "No": 0.6}
    logprobs = [math.log(chosen.get(p.strip(), 1.0)) for p in pieces]
    completion = Completion(text=text, token_ids=list(range(len(pieces))), logprobs=logprobs, token_offsets=offsets)
    parsed = parse_verification(text, 2)
    step_probs, final_prob = verdict_probabilities(completion, parsed.step_verdicts, parsed.final_verdict)
    assert step_probs == pytest.approx([0.9, 0.3]) and final_prob == pytest.approx(0.4)
    assert verdict_probabilities(Completion(text=text), parsed.step_verdicts, parsed.final_verdict) == (None, None)
    # a <think> block before the verification shifts nothing
    thought = "<think>\n## Step 9: x\n**This step is incorrect.**\n</think>\n\n"
    shifted = Completion(text=thought + text, token_ids=[0] + completion.token_ids, logprobs=[0.0] + logprobs,
                         token_offsets=[0] + [o + len(thought) for o in offsets])
    parsed = parse_verification(shifted.text, 2)
    assert verdict_probabilities(shifted, parsed.step_verdicts, parsed.final_verdict)[0] == pytest.approx([0.9, 0.3])


def test_regex_accepts_the_format_and_rejects_injected_headers():
    text = ("## Step 1: a\nok 2*3\n\n**This step is correct.**\n\n## Step 2:\n**This step is incorrect.**\n\n"
            "Verification: Is the answer correct (Yes/No)? No")
    assert re.fullmatch(verification_regex(verification_constraint(2)), text)
    assert not re.fullmatch(verification_regex(verification_constraint(3)), text)
    assert not re.fullmatch(verification_regex(verification_constraint(2)), text.replace("ok 2", "## Step 3"))
    assert not re.fullmatch(verification_regex(verification_constraint(2)), text.replace("ok 2", "**Step 3"))
    thought = "<think>\nhmm\n</think>\n\n"
    assert re.fullmatch(verification_regex(verification_constraint(2, think=True)), thought + text)


def test_vllm_sampling_params_carry_constraint_and_logprobs():
    from spark_hub.backends.vllm_ import sampling_kwargs

    constraint = verification_constraint(3)
    kwargs = sampling_kwargs(request(n=4, temperature=0.7, max_tokens=99, seed=2, logprobs=True, constraint=constraint))
    assert kwargs["logprobs"] == 0 and kwargs["n"] == 4 and kwargs["seed"] == 2
    assert kwargs["structured_outputs"] == {"regex": verification_regex(constraint)}
    plain = sampling_kwargs(request(n=4, temperature=0.7))
    assert "logprobs" not in plain and "structured_outputs" not in plain


def test_openai_payload_carries_constraint_and_logprobs():
    from spark_hub.backends.openai_ import request_payload

    constraint = verification_constraint(2)
    req = request(n=3, temperature=0.5, seed=4, logprobs=True, constraint=constraint)
    payload = request_payload("m", req)
    assert payload["logprobs"] is True and payload["structured_outputs"] == {"regex": verification_regex(constraint)}
    assert request_payload("m", req, constraint_field="guided_regex")["guided_regex"] == verification_regex(constraint)
    assert "logprobs" not in request_payload("m", request()) and "structured_outputs" not in request_payload("m", request())


def test_bad_constraints_are_one_line_errors():
    for bad in ("nope", '{"kind": "poem"}', '{"kind": "verification", "steps": 0}'):
        with pytest.raises(SparkHubError):
            parse_constraint(bad)


ATTACKS = ["\n## Step 9: x", "\n**Step 2** y", "\n  ### step 3", " <think> z", "</think>", "\n**This step is correct.**"]


@pytest.mark.parametrize("think", [False, True])
def test_a_model_that_writes_headers_cannot_break_the_format(backend, think):
    """A scripted adversary pushes, token by token, texts that would break parsing (step headers
    inside the analysis, think tags); the processor must keep every output in the format."""
    import torch

    from spark_hub.constrained import ConstrainedLogitsProcessor, token_table

    vocab = backend.model.get_output_embeddings().weight.shape[0]
    table = token_table(backend.tokenizer, vocab)
    generator = torch.Generator().manual_seed(0)
    for trial in range(6):
        steps = trial % 3 + 1
        constraint = verification_constraint(steps, think=think)
        max_new = budget(backend, constraint, 60)
        processor = ConstrainedLogitsProcessor(table, [constraint], max_new)
        ids = torch.tensor([[backend.tokenizer.eos_token_id]])
        attack, position = ATTACKS[trial % len(ATTACKS)], 0
        for _ in range(max_new):
            scores = torch.randn(1, vocab, generator=generator)
            rest = attack[position:]
            wanted = [i for i, t in enumerate(table.texts) if t and rest.startswith(t)]
            if wanted:
                scores[0, max(wanted, key=lambda i: len(table.texts[i]))] += 30.0
            scores = processor(ids, scores)
            token = torch.multinomial(torch.softmax(scores, -1), 1, generator=generator)
            ids = torch.cat([ids, token], dim=1)
            text = table.texts[token.item()]
            position = position + len(text) if rest.startswith(text) and text else 0
            if position >= len(attack):
                position = 0
            if token.item() == backend.tokenizer.eos_token_id:
                break
        text = backend.tokenizer.decode(ids[0, 1:], skip_special_tokens=True)
        assert ids[0, -1].item() == backend.tokenizer.eos_token_id, text
        assert parse_verification(text, expected_steps=steps).status == "ok", text
        assert text.lower().count("<think>") == text.lower().count("</think>") == int(think), text
        body = text.split("</think>", 1)[1] if think else text
        for line in body.splitlines():
            if line.lstrip(" \t")[:1] in ("#", "*"):  # only the forced headers and verdicts
                assert re.fullmatch(r"## Step \d+:.*|\*\*This step is (in)?correct\.\*\*", line.strip()), text


def test_max_tokens_below_the_forced_text_is_warned(backend, caplog):
    constraint = verification_constraint(3)
    short = budget(backend, constraint, 0) - 5
    completion = backend.generate([request("short", n=1, temperature=1.0, max_tokens=short, seed=1,
                                           constraint=constraint)])[0][0]
    assert completion.finish_reason == "length"
    assert "max_tokens=%d is below the %d tokens" % (short, short + 5) in caplog.text


def test_vllm_completion_carries_token_ids_logprobs_and_offsets():
    from types import SimpleNamespace

    from spark_hub.backends.vllm_ import completion_from_sample

    pieces = ["## Step 1:", " fine", "\n**This step is", " correct", ".**", ""]  # "" = the EOS token
    ids = [11, 12, 13, 14, 15, 2]
    logprobs = [{i: SimpleNamespace(logprob=-0.1 * k, rank=1, decoded_token=p)}
                for k, (i, p) in enumerate(zip(ids, pieces))]
    sample = SimpleNamespace(text="".join(pieces), token_ids=ids, logprobs=logprobs, finish_reason="stop", index=0)
    completion = completion_from_sample(sample, prompt_tokens=7, with_logprobs=True)
    assert completion.token_ids == ids and completion.logprobs == pytest.approx([-0.1 * k for k in range(6)])
    assert completion.token_offsets == [0, 10, 15, 30, 38, 41]
    assert completion.token_span(31, 38) == [3]  # "correct"
    plain = completion_from_sample(sample, prompt_tokens=7, with_logprobs=False)
    assert plain.token_ids is None and plain.completion_tokens == 6 and plain.prompt_tokens == 7
