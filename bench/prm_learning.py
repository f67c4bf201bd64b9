"""The PRM learning check (issue 10 §6): does ``train_prm`` teach a model to find the first wrong step?

A tiny random GPT-2 with a word-level tokenizer (tests/arithmetic_task.py) is scored on held-out
problems of a synthetic arithmetic task (one injected error at a known step, half the solutions
correct) with the ProcessBench metric, then trained as a ``prm`` generative RM (``Step k:
Correct|Incorrect`` lines + the final verdict) with `spark_hub.train.prm.train_prm` on other problems
of the same task, and scored again with `spark_hub.load_prm` on the trained folder. Prints the
untrained and trained F1 with acc_error (overall and per error kind), acc_correct and the times.

    .venv/bin/python bench/prm_learning.py      # the check: facts, 3 steps, sign + result errors, 600 steps
    .venv/bin/python bench/prm_learning.py --style running --kinds sign operand --max-steps 1600

The check's task (``--style facts``): ``Compute 3 + 4, 2 + 2, 5 + 1.``, one step per addition
(``3 + 4 = 7.``), digits 0-9, the wrong step uniform among the 3; error kinds ``sign`` (the step
subtracts, correctly computed, where the problem only adds: visible from one token of the step) and
``result`` (the written sum off by 1-2: visible only from the three numbers together). Either way the
verdict must land on the exact step (ProcessBench's first-error index).

Measured (2 shared CPU cores, torch 1 thread, GPT-2 64-d 2 layers, init std 0.1, batch 32, lr 2e-3,
1500 training problems, 100 held-out problems = 200 solutions), the defaults:
untrained F1 0.0 (no readable verdict) -> trained F1 63.9 (acc_error 47.0: sign 100.0, result 0.0;
acc_correct 100.0, no unreadable output), 600 steps, train 82-87 s, eval ~2 s, total ~95 s.
1500 steps (233 s): the same figures (result errors still 0.0); ``--max-digit 3`` (16 facts), 1500
steps (196 s): F1 65.8 (sign 100.0, result 1.9, acc_correct 100.0), though with ONE step and digits 0-3
a plain loop does learn the wrong sums after ~600 steps (step-verdict loss 0.69 -> 0.28 by 800).
tests/test_learning_check.py runs it (slow, ~90 s) and fails when the step labels are shifted by
one (trained F1 0) or the saved folder holds the untrained weights (200 unreadable outputs); with
the loss on the prompt as well (completion_only_loss off) it still passes.

Earlier findings, short: every run before the init change sat on the "always Correct" plateau (the
model learns the format and "final = all steps correct", F1 0): running style (sign/operand, carry;
GPT-2 or Llama, 64/128-d, up to 1600 steps), facts style (result errors, 1-2 steps, digits 0-3/0-9,
with and without LM pretraining of the base). Not a bug in the training path: a plain-torch loop on
the very batches SFTTrainer builds (decoded: prompt and completion tokens right, no UNK, mask on the
completion only, EOS included) sits on the same plateau, and train_prm memorises a fixed set of 32
examples (loss 0.0008 in 300 steps) and load_prm + processbench then score them F1 100. The cause
was the model's start: at GPT-2's default init std 0.02 a 64-d model has near-uniform attention and
tiny logits and does not leave the plateau in hundreds of steps even for single-token evidence
(the check's task: F1 0.0, sign errors 0.0, at 600 steps); at std 0.1 (`make_arithmetic_model`'s
default now) it does by ~200 steps. Kinds that need two or three tokens compared (result; running-style sign/operand, F1
0.0 at 600 steps with std 0.1) stay unlearned in these budgets.

Error kinds (tests/arithmetic_task.py), running style: ``sign`` (the other operation than the
problem's), ``operand`` (another number than the problem's), ``carry`` (the previous result
miscopied), ``result`` (wrong sum/difference); facts style: ``result``, ``sign`` (above).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import arithmetic_task  # noqa: E402

#: Training settings of the check (SFTConfig fields): AdamW at a high rate for a model this small.
TRAINING_ARGS: dict[str, Any] = {
    "per_device_train_batch_size": 32,
    "learning_rate": 2e-3,
    "lr_scheduler_type": "constant_with_warmup",
    "warmup_steps": 30,
    "weight_decay": 0.0,
    "max_length": 256,
    "save_strategy": "no",
    "logging_steps": 50,
    "report_to": "none",
    "seed": 0,
    "activation_checkpointing": False,
    "gradient_checkpointing": False,
    "disable_tqdm": True,
    "dataloader_num_workers": 0,
}


def held_out(train: list[dict], n_problems: int, seed: int, **task) -> list[dict]:
    """Problems of the same task, none of whose texts occurs among the training problems."""
    seen = {r["problem"] for r in train}
    rows = arithmetic_task.step_records(n_problems * 2, seed=seed, prefix="heldout", **task)
    keep = [r for r in rows if r["problem"] not in seen]
    ids = sorted({r["problem_id"] for r in keep})[:n_problems]
    return [r for r in keep if r["problem_id"] in set(ids)]


def f1_of(folder: Path, data_dir: Path, spec: dict, kinds: dict[str, str] | None = None,
          batch_size: int = 64) -> dict[str, Any]:
    from spark_hub.evaluate import processbench
    from spark_hub.prm import load_prm

    prm = load_prm(folder, spec=spec, batch_size=batch_size)
    try:
        results = processbench.run(data_dir, prm=prm, batch_size=batch_size, per_case=True)
    finally:
        prm.close()
    split = results["splits"]["arith"]
    by_kind: dict[str, list[bool]] = {}
    for case in results["cases"]:
        kind = (kinds or {}).get(case["id"])
        if kind:
            by_kind.setdefault(kind, []).append(bool(case["match"]))
    # ProcessBench's F1 is undefined (None) when both accuracies are 0 (the untrained model writes no
    # readable verdict): 0 here
    return {"f1": split["f1"] or 0.0, "acc_error": split["acc_error"] or 0.0, "acc_correct": split["acc_correct"] or 0.0,
            "acc_error_by_kind": {k: round(100 * sum(v) / len(v), 1) for k, v in sorted(by_kind.items())},
            "cases": split["n"], "no_prediction": split["no_prediction"]}


#: Error kinds of each task style when none are given (the check's defaults: ``facts``).
DEFAULT_KINDS = {"facts": ("sign", "result"), "running": ("sign", "operand")}


def run(*, train_problems: int = 1500, eval_problems: int = 100, max_steps: int = 600,
        kinds: Sequence[str] | None = None, n_steps: int = 3, style: str = "facts", max_digit: int = 9,
        seed: int = 0, workdir: str | Path | None = None, training_args: dict | None = None,
        model_shape: dict | None = None, pretrain_steps: int = 0, threads: int | None = 1) -> dict[str, Any]:
    """Untrained vs trained ProcessBench-style F1 on held-out problems; times in seconds.

    ``kinds``: the error kinds (default `DEFAULT_KINDS` of ``style``).

    ``threads``: torch CPU threads (1 by default: on a small shared machine more threads than free
    cores make every step several times slower; None leaves torch's default)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from spark_hub.prm import generative_spec, write_spec
    from spark_hub.train.prm import train_prm
    from spark_hub.train.sft_data import make_sft_data

    task = {"n_steps": n_steps, "kinds": tuple(kinds or DEFAULT_KINDS[style]), "style": style, "max_digit": max_digit}
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="prm-learning-")
        workdir = tmp.name
    work = Path(workdir)
    started = time.perf_counter()
    base = Path(arithmetic_task.make_arithmetic_model(work / "base", seed=seed, **(model_shape or {})))
    t0 = time.perf_counter()
    if pretrain_steps:
        arithmetic_task.pretrain_arithmetic_model(base, steps=pretrain_steps, seed=seed, **task)
    pretrain_seconds = time.perf_counter() - t0
    train = arithmetic_task.step_records(train_problems, seed=seed, prefix="train", **task)
    evaluation = held_out(train, eval_problems, seed + 1000, **task)
    if not evaluation:
        raise ValueError(f"no held-out problems: the training problems cover the whole task {task}")
    data_dir = arithmetic_task.write_processbench(work / "processbench", evaluation)
    kind_of = {row["id"]: r["generator"].split("/")[-1] for row, r in
               zip(arithmetic_task.processbench_rows(evaluation), evaluation) if r["first_error_step"] >= 0}
    # greedy, and short: a target is ~50 tokens; an untrained model would otherwise babble for 1024
    spec = generative_spec("prm", generation={"max_tokens": 80})
    write_spec(base, spec)

    t0 = time.perf_counter()
    before = f1_of(base, data_dir, spec, kind_of)
    eval_seconds = time.perf_counter() - t0

    args = {**TRAINING_ARGS, "max_steps": max_steps, "seed": seed, **(training_args or {})}
    t0 = time.perf_counter()
    # ProcessBench cases have no separate final answer, so the PRM is asked without the "Answer:" line:
    # train it on the same prompts (a model this small reads steps by position)
    sft = make_sft_data(train, "prm", eval_fraction=0.0, include_answer=False)
    out = train_prm(str(base), work / "prm", sft=sft, training_args=args)
    train_seconds = time.perf_counter() - t0
    after = f1_of(out, data_dir, spec, kind_of)
    manifest = json.loads((out / "manifest.json").read_text())
    result = {
        "task": {**task, "kinds": list(task["kinds"]), "train_problems": train_problems, "train_solutions": len(train),
                 "eval_solutions": len(evaluation)},
        "untrained": before, "trained": after,
        "pretrain_steps": pretrain_steps, "pretrain_seconds": round(pretrain_seconds, 1),
        "train_seconds": round(train_seconds, 1), "eval_seconds": round(eval_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "max_steps": max_steps, "train_loss": manifest["statistics"]["train"].get("train_loss"),
    }
    if tmp is not None:
        tmp.cleanup()
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-problems", type=int, default=1500)
    parser.add_argument("--eval-problems", type=int, default=100)
    parser.add_argument("--max-steps", type=int, default=600)
    parser.add_argument("--kinds", nargs="+", default=None, choices=arithmetic_task.KINDS,
                        help="error kinds (default: facts sign result, running sign operand)")
    parser.add_argument("--n-steps", type=int, default=3)
    parser.add_argument("--style", default="facts", choices=["running", "facts"])
    parser.add_argument("--max-digit", type=int, default=9)
    parser.add_argument("--pretrain-steps", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=TRAINING_ARGS["learning_rate"])
    parser.add_argument("--architecture", default="gpt2", choices=["gpt2", "llama"])
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--init-range", type=float, default=0.1, help="std of the base model's random weights")
    parser.add_argument("--workdir", default=None, help="keep the models here (default: a temporary folder)")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = run(train_problems=ns.train_problems, eval_problems=ns.eval_problems, max_steps=ns.max_steps,
                 kinds=ns.kinds, n_steps=ns.n_steps, style=ns.style, max_digit=ns.max_digit, pretrain_steps=ns.pretrain_steps, seed=ns.seed, workdir=ns.workdir,
                 training_args={"learning_rate": ns.lr},
                 model_shape={"architecture": ns.architecture, "hidden_size": ns.hidden_size,
                              "num_hidden_layers": ns.layers, "initializer_range": ns.init_range})
    u, t = result["untrained"], result["trained"]
    print(f"task: {result['task']}")
    print(f"untrained F1 {u['f1']:.1f} (acc_error {u['acc_error']:.1f}, acc_correct {u['acc_correct']:.1f})")
    print(f"trained   F1 {t['f1']:.1f} (acc_error {t['acc_error']:.1f}, acc_correct {t['acc_correct']:.1f}); "
          f"acc_error by kind {t['acc_error_by_kind']}")
    print(f"train {result['train_seconds']} s ({result['max_steps']} steps, final loss {result['train_loss']}), "
          f"eval {result['eval_seconds']} s, total {result['total_seconds']} s")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
