"""A deterministic synthetic arithmetic task for the PRM learning check (issue 10 §6).

Each problem is a running total: "Start at 7. Add 5, subtract 3, add 8, add 2. What is the result?".
A solution writes one step per operation, ``12 - 3 = 9.``, each step starting from the previous
step's result. Errors are injected at a KNOWN step, of four kinds:

- ``sign``: the step applies the other operation (adds where the problem says subtract, or the
  reverse), computed correctly;
- ``operand``: the step uses another number than the problem's (off by 1-3), computed correctly;
- ``carry``: the step starts from a wrong value (the previous result miscopied by 1-3); its own
  arithmetic is right, so the error is visible by comparing the step with the one before it;
- ``result``: the step's arithmetic is wrong (the result is off by 1-3).

Later steps continue correctly from the wrong value, so every step is labelled by its OWN
correctness and the first incorrect step is the error index (ProcessBench's ``label``). Half of the
solutions are correct. Everything comes from ``random.Random(seed)``: same arguments, same rows.

`step_records` gives Stage I-shaped step records (what `spark_hub.train.sft_data` and
``train prm`` read), `processbench_rows` the same solutions as ProcessBench cases, and
`make_word_tokenizer` / `make_arithmetic_model` a tiny model whose tokenizer has one token per word,
number or punctuation mark with its leading space (so " 12 - 3 = 9" is five tokens the model can
compare, and every step has the same length), with ChatML special tokens and chat template like
`tiny_models`.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

from spark_hub import rm_prompts

KINDS = ("sign", "operand", "carry", "result")
#: Error kinds of the ``facts`` style (see `_corrupt_fact`).
FACT_KINDS = ("result", "sign")
MAX_VALUE = 99

PAD, BOS, EOS, UNK = "<|pad|>", "<|im_start|>", "<|im_end|>", "<|unk|>"
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
PIECES = r" ?\w+| ?[^\w\s]|\s+"


def _solution(rng: random.Random, n_steps: int):
    """Problem text, correct step texts, labels and final answer of one problem."""
    while True:
        start = rng.randint(2, 30)
        ops = [(rng.choice("+-"), rng.randint(1, 9)) for _ in range(n_steps)]
        totals, value = [], start
        for op, b in ops:
            value = value + b if op == "+" else value - b
            totals.append(value)
        if all(4 <= t <= MAX_VALUE - 10 for t in totals):
            break
    words = {"+": "add", "-": "subtract"}
    problem = f"Start at {start}. " + ", ".join(f"{words[op]} {b}" for op, b in ops).capitalize() + \
        ". What is the result?"
    steps = [f"{a} {op} {b} = {c}." for a, (op, b), c in zip([start] + totals[:-1], ops, totals)]
    return problem, steps, [True] * n_steps, str(totals[-1])


def _fact_solution(rng: random.Random, n_steps: int, max_digit: int):
    """A "facts" problem: ``n_steps`` independent single-digit additions, one step each."""
    pairs = [(rng.randint(0, max_digit), rng.randint(0, max_digit)) for _ in range(n_steps)]
    problem = "Compute " + ", ".join(f"{a} + {b}" for a, b in pairs) + "."
    steps = [f"{a} + {b} = {a + b}." for a, b in pairs]
    return problem, steps, [True] * n_steps, str(sum(a + b for a, b in pairs))


def _corrupt_fact(steps: list[str], error_step: int, kind: str, rng: random.Random):
    """The step ``error_step`` made wrong; the others unchanged. ``kind``: ``result`` (the written sum is
    off by 1-2, never negative: wrong arithmetic, visible only from the three numbers together) or
    ``sign`` (the step subtracts where the problem adds, computed correctly, larger operand first:
    visible from the one token ``-``, as no problem of this style subtracts). The final answer is the
    sum of the written results."""
    out = list(steps)
    a, _, b, _, c = out[error_step].rstrip(".").split()
    a, b, c = int(a), int(b), int(c)
    if kind == "result":
        c += rng.choice([d for d in (-2, -1, 1, 2) if c + d >= 0])
        out[error_step] = f"{a} + {b} = {c}."
    elif kind == "sign":
        big, small = max(a, b), min(a, b)
        out[error_step] = f"{big} - {small} = {big - small}."
    else:
        raise ValueError(f"facts-style error kinds are {FACT_KINDS}, got {kind!r}")
    labels = [k != error_step for k in range(len(steps))]
    return out, labels, str(sum(int(s.rstrip(".").split()[-1]) for s in out)), kind


def step_records(n_problems: int, *, seed: int = 0, n_steps: int = 4, kinds: tuple[str, ...] | None = None,
                 prefix: str = "arith", style: str = "running", max_digit: int = 9) -> list[dict[str, Any]]:
    """Two solutions per problem, one correct and one with an error at a uniformly chosen step, as
    Stage I step records (schema v1 rows; readers migrate them). Problem ids are ``{prefix}-NNNN``.

    ``style``: ``running`` (a running total, errors of ``kinds``, default all `KINDS`) or ``facts``
    (independent additions of digits 0..``max_digit``, ``Compute 3 + 4, 2 + 5.``, errors of ``kinds``
    among `FACT_KINDS`, default ``result`` only: every step is checkable on its own, ~(max_digit+1)^2
    facts to learn). The kind of each error is drawn uniformly from ``kinds``."""
    if style not in ("running", "facts"):
        raise ValueError(f"style must be running or facts, got {style!r}")
    allowed = FACT_KINDS if style == "facts" else KINDS
    kinds = tuple(kinds) if kinds is not None else (("result",) if style == "facts" else KINDS)
    if not kinds or set(kinds) - set(allowed):
        raise ValueError(f"{style}-style error kinds are {allowed}, got {kinds}")
    rng = random.Random(seed)
    rows = []
    for p in range(n_problems):
        problem_id = f"{prefix}-{p:04d}"
        if style == "facts":
            problem, steps, labels, answer = _fact_solution(rng, n_steps, max_digit)
            rows.append(_record(problem_id, 0, problem, steps, labels, answer, None))
            error_step = rng.randrange(n_steps)
            kind = kinds[0] if len(kinds) == 1 else rng.choice(kinds)  # one kind: the draws of earlier versions
            bad_steps, bad_labels, bad_answer, kind = _corrupt_fact(steps, error_step, kind, rng)
            rows.append(_record(problem_id, 1, problem, bad_steps, bad_labels, bad_answer, kind))
            continue
        problem, steps, labels, answer = _solution(rng, n_steps)
        rows.append(_record(problem_id, 0, problem, steps, labels, answer, None))
        error_step = rng.randrange(n_steps)
        bad_steps, bad_labels, bad_answer, kind = _corrupt(steps, error_step, kinds, rng)
        rows.append(_record(problem_id, 1, problem, bad_steps, bad_labels, bad_answer, kind))
    return rows


def _corrupt(correct_steps: list[str], error_step: int, kinds: tuple[str, ...], rng: random.Random):
    """The correct solution with an error injected at ``error_step``; later steps recomputed from it.
    Every number stays in [0, MAX_VALUE] (a draw that leaves it is drawn again)."""
    parsed = []
    for text in correct_steps:
        a, op, b, _, _ = text.rstrip(".").split()
        parsed.append((int(a), op, int(b)))
    while True:
        kind = rng.choice(kinds)
        steps, labels = [], []
        value = parsed[0][0]
        in_range = True
        for k, (_, op, b) in enumerate(parsed):
            a = value
            if k == error_step and kind == "sign":
                op = "-" if op == "+" else "+"
            if k == error_step and kind == "operand":
                b = b + rng.choice([d for d in (-3, -2, -1, 1, 2, 3) if 1 <= b + d])
            if k == error_step and kind == "carry":
                a = value + rng.choice([d for d in (-3, -2, -1, 1, 2, 3) if 0 <= value + d])
            c = a + b if op == "+" else a - b
            if k == error_step and kind == "result":
                c = c + rng.choice([d for d in (-3, -2, -1, 1, 2, 3) if 0 <= c + d])
            in_range = in_range and 0 <= a <= MAX_VALUE and 0 <= c <= MAX_VALUE
            steps.append(f"{a} {op} {b} = {c}.")
            labels.append(k != error_step)
            value = c
        if in_range:
            return steps, labels, str(value), kind


def _record(problem_id: str, index: int, problem: str, steps: list[str], labels: list[bool], answer: str,
            kind: str | None) -> dict[str, Any]:
    n = len(steps)
    final = all(labels)
    return {
        "schema_version": "1",
        "id": f"{problem_id}/s{index}",
        "problem_id": problem_id,
        "problem": problem,
        "reference": None,
        "solution_index": index,
        "solution": "\n".join(f"Step {k}: {s}" for k, s in enumerate(steps, 1)) + f"\nAnswer: {answer}",
        "steps": steps,
        "final_answer": answer,
        "solution_status": "ok",
        "generator": f"arithmetic-task/{kind or 'correct'}",
        "verifier": "arithmetic-task",
        "method": "step_consistency",
        "status": "ok",
        "labels": labels,
        "final_label": final,
        "first_error_step": next((i for i, ok in enumerate(labels) if not ok), -1),
        "votes_correct": [1 if ok else 0 for ok in labels],
        "votes_incorrect": [0 if ok else 1 for ok in labels],
        "agreement": [1.0] * n,
        "final_votes_yes": int(final),
        "final_votes_no": int(not final),
        "n_verifications": 1,
        "n_parsed": 1,
        "cot_target": None,
        "cot_verification_index": None,
        "cot_verification_id": None,
        "cot_exact_match": None,
    }


def processbench_rows(records: list[dict[str, Any]], split: str = "arith") -> list[dict[str, Any]]:
    """The solutions as ProcessBench cases: ``id``, ``problem``, ``steps``, ``label`` (first error or -1)."""
    return [{"id": f"{split}-{i}", "problem": r["problem"], "steps": r["steps"], "label": r["first_error_step"],
             "final_answer_correct": r["final_label"]} for i, r in enumerate(records)]


def write_processbench(folder: str | os.PathLike, records: list[dict[str, Any]], split: str = "arith") -> Path:
    """Write ``<folder>/<split>.jsonl`` (a ProcessBench data folder of one split); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = processbench_rows(records, split)
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _corpus() -> list[str]:
    """Every text the model sees: PRM prompts and targets of the task, and the chat template pieces."""
    texts = [rm_prompts.PRM_TEMPLATE, rm_prompts.ORM_TEMPLATE, rm_prompts.FINAL_LINE, "user\nassistant\nsystem\n",
             "Step Correct Incorrect Answer Yes No Start at add subtract What is the result ? Compute",
             " ".join(str(i) for i in range(0, MAX_VALUE + 10)), "\n".join(str(i) for i in range(0, 10))]
    for r in step_records(20, seed=12345) + step_records(5, seed=12345, style="facts"):
        texts.append(rm_prompts.rm_prompt("prm", r["problem"], r["steps"], r["final_answer"]))
        texts.append(rm_prompts.prm_target(r["labels"], r["final_label"]))
    return texts


def make_word_tokenizer():
    """A word-level `PreTrainedTokenizerFast`: one token per word, number or punctuation mark (with its
    leading space) and per other whitespace run of the task's texts (others map to ``<|unk|>``),
    decoded by concatenation (exact round trip)."""
    import re

    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, BOS: 1, EOS: 2, UNK: 3}
    for text in _corpus():
        for piece in re.findall(PIECES, text):
            vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(PIECES), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
                                   clean_up_tokenization_spaces=False)
    fast.chat_template = CHATML_TEMPLATE
    return fast


def make_arithmetic_model(path: str | os.PathLike, *, architecture: str = "gpt2", hidden_size: int = 64,
                          num_hidden_layers: int = 2, num_attention_heads: int = 4, intermediate_size: int = 256,
                          initializer_range: float = 0.1, seed: int = 0) -> str:
    """Write a tiny random causal LM with the word-level tokenizer into ``path`` (like
    `tiny_models.make_tiny_model`).

    ``architecture``: ``gpt2`` (learned absolute positions, the default: every prompt of the task has
    the same layout, so "the verdict of step k looks at step k" is a fixed position lookup) or
    ``llama`` (rotary positions: measured not to learn the task in the CPU budget, see
    bench/prm_learning.py).

    ``initializer_range``: std of the random weights, 0.1 rather than the usual 0.02: at 0.02 a model
    this narrow starts with near-uniform attention and near-zero logits and sits for hundreds of steps
    on the "every step Correct" plateau (measured, bench/prm_learning.py); at 0.1 it leaves it early.
    """
    import torch
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    path = str(path)
    os.makedirs(path, exist_ok=True)
    tokenizer = make_word_tokenizer()
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    if architecture == "gpt2":
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=hidden_size, n_layer=num_hidden_layers,
                            n_head=num_attention_heads, n_inner=intermediate_size, tie_word_embeddings=True,
                            initializer_range=initializer_range,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids)
        cls = GPT2LMHeadModel
    elif architecture == "llama":
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=intermediate_size,
                             num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                             num_key_value_heads=num_attention_heads, max_position_embeddings=512,
                             initializer_range=initializer_range,
                             tie_word_embeddings=True, **ids)
        cls = LlamaForCausalLM
    else:
        raise ValueError(f"architecture must be gpt2 or llama, got {architecture!r}")
    torch.manual_seed(seed)
    model = cls(config).to(torch.float32)
    model.generation_config = GenerationConfig(**ids)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def pretrain_arithmetic_model(path: str | os.PathLike, *, n_problems: int = 2000, steps: int = 400,
                              batch_size: int = 32, learning_rate: float = 1e-3, seed: int = 0, **task) -> str:
    """Language-model pretraining of the base in ``path`` (in place) on CORRECT solutions only, asked
    as PRM prompts without targets: next-token loss on every token, so the model learns the sums and
    where the steps sit, like the pretrained LM a real PRM starts from. No verdicts, no labels, and
    other problems than the PRM training and evaluation ones (``prefix`` "pretrain", own seed)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    rows = [r for r in step_records(n_problems, seed=seed + 7777, prefix="pretrain", **task) if r["final_label"]]
    texts = [tokenizer.apply_chat_template(
        [{"role": "user", "content": rm_prompts.rm_prompt("prm", r["problem"], r["steps"])}], tokenize=False)
        for r in rows]
    encoded = [tokenizer(t).input_ids for t in texts]
    width = max(len(e) for e in encoded)
    ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(encoded):
        ids[i, :len(e)] = torch.tensor(e)
        mask[i, :len(e)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    model.train()
    for step in range(steps):
        batch = torch.randint(len(encoded), (batch_size,), generator=generator)
        loss = model(input_ids=ids[batch], attention_mask=mask[batch], labels=labels[batch]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 100 == 0 or step == steps - 1:
            logging.getLogger(__name__).warning("pretrain step %d loss %.4f", step, loss.item())
    model.eval()
    model.save_pretrained(path)
    return path
