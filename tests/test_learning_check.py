"""The PRM learning check (issue 10 §6): a tiny PRM trained with train_prm on a synthetic arithmetic
task must find the first wrong step on held-out problems far better than before training.

The fast tests check the task itself (deterministic, labels where the errors were injected, the
tokenizer's exact round trip); the slow one trains (bench/prm_learning.py, a few minutes on CPU).
"""

import sys
from pathlib import Path

import pytest

import arithmetic_task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))


def _check_step(step: str, previous: int) -> tuple[bool, int]:
    a, op, b, _, c = step.rstrip(".").split()
    a, b, c = int(a), int(b), int(c)
    return a == previous and c == (a + b if op == "+" else a - b), c


def test_the_task_is_deterministic_and_labels_the_injected_error():
    rows = arithmetic_task.step_records(200, seed=3, n_steps=4)
    assert rows == arithmetic_task.step_records(200, seed=3, n_steps=4)
    assert rows != arithmetic_task.step_records(200, seed=4, n_steps=4)
    kinds = set()
    for correct, wrong in zip(rows[::2], rows[1::2]):
        assert correct["problem"] == wrong["problem"] and correct["problem_id"] == wrong["problem_id"]
        assert correct["labels"] == [True] * 4 and correct["final_label"] and correct["first_error_step"] == -1
        first = wrong["first_error_step"]
        assert wrong["labels"] == [k != first for k in range(4)] and not wrong["final_label"]
        kind = wrong["generator"].split("/")[-1]
        kinds.add(kind)
        # the problem's own operations, read back from the correct solution
        ops = [(s.split()[1], int(s.split()[2])) for s in correct["steps"]]
        value = int(correct["steps"][0].split()[0])
        for k, step in enumerate(wrong["steps"]):
            ok, value_after = _check_step(step, value)
            same_op = (step.split()[1], int(step.split()[2])) == ops[k]
            assert (ok and same_op) == wrong["labels"][k], (kind, k, step)
            value = value_after
        assert wrong["final_answer"] == str(value) != correct["final_answer"]
    assert kinds == set(arithmetic_task.KINDS)


def test_the_records_are_stage_one_step_records_and_processbench_cases(tmp_path):
    from spark_hub.evaluate.processbench import load_processbench
    from spark_hub.records import StepRecord
    from spark_hub.train.sft_data import make_sft_data

    rows = arithmetic_task.step_records(20, seed=0, n_steps=3)
    assert all(StepRecord.from_dict(dict(r)).first_error_step == r["first_error_step"] for r in rows)
    data = make_sft_data(rows, "prm", eval_fraction=0.25)
    assert len(data.train) + len(data.eval) == 40 and data.statistics["train"]["final_no"] > 0
    folder = arithmetic_task.write_processbench(tmp_path / "pb", rows)
    cases = load_processbench(folder).cases()
    assert [c.label for c in cases] == [r["first_error_step"] for r in rows]


def test_the_word_tokenizer_sees_every_number_and_keeps_steps_aligned():
    from spark_hub import rm_prompts

    tokenizer = arithmetic_task.make_word_tokenizer()
    rows = arithmetic_task.step_records(50, seed=1, n_steps=3)
    lengths = set()
    for r in rows:
        prompt = rm_prompts.rm_prompt("prm", r["problem"], r["steps"])
        target = rm_prompts.prm_target(r["labels"], r["final_label"])
        for text in (prompt, target):
            ids = tokenizer(text).input_ids
            assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids) == text
        lengths.add(len(tokenizer(prompt).input_ids))
        for step in r["steps"]:
            assert len(tokenizer(" " + step).input_ids) == 6  # " a", " +", " b", " =", " c", "."
    assert len(lengths) == 1, "every prompt has the same length: steps sit at the same positions"


def test_the_facts_style_labels_the_wrong_sum_and_keeps_prompts_aligned():
    from spark_hub import rm_prompts

    rows = arithmetic_task.step_records(100, seed=5, n_steps=2, style="facts", max_digit=5)
    assert rows == arithmetic_task.step_records(100, seed=5, n_steps=2, style="facts", max_digit=5)
    tokenizer = arithmetic_task.make_word_tokenizer()
    lengths, first_errors = set(), []
    for correct, wrong in zip(rows[::2], rows[1::2]):
        assert correct["problem"] == wrong["problem"] and correct["labels"] == [True, True]
        for row in (correct, wrong):
            for step, ok in zip(row["steps"], row["labels"]):
                a, _, b, _, c = step.rstrip(".").split()
                assert 0 <= int(a) <= 5 and 0 <= int(b) <= 5
                assert (int(a) + int(b) == int(c)) == ok, (row["id"], step)
            ids = tokenizer(rm_prompts.rm_prompt("prm", row["problem"], row["steps"])).input_ids
            assert tokenizer.unk_token_id not in ids
            lengths.add(len(ids))
        first_errors.append(wrong["first_error_step"])
        assert wrong["generator"] == "arithmetic-task/result" and not wrong["final_label"]
    assert len(lengths) == 1 and set(first_errors) == {0, 1}
    with pytest.raises(ValueError):
        arithmetic_task.step_records(1, style="other")


def test_the_facts_style_sign_error_subtracts_where_the_problem_adds():
    rows = arithmetic_task.step_records(200, seed=2, n_steps=3, style="facts", kinds=("sign", "result"))
    kinds = set()
    for correct, wrong in zip(rows[::2], rows[1::2]):
        kind = wrong["generator"].split("/")[-1]
        kinds.add(kind)
        first = wrong["first_error_step"]
        assert wrong["labels"] == [k != first for k in range(3)] and correct["steps"][:first] == wrong["steps"][:first]
        assert correct["steps"][first + 1:] == wrong["steps"][first + 1:]
        a, op, b, _, c = wrong["steps"][first].rstrip(".").split()
        if kind == "sign":  # computed correctly, but a subtraction: the problem only adds
            assert op == "-" and int(a) >= int(b) and int(c) == int(a) - int(b) and "-" not in wrong["problem"]
        else:
            assert op == "+" and int(c) != int(a) + int(b)
    assert kinds == {"sign", "result"}
    with pytest.raises(ValueError):
        arithmetic_task.step_records(1, style="facts", kinds=("carry",))


@pytest.mark.slow
def test_a_tiny_prm_learns_to_find_the_first_wrong_step(tmp_path):
    """Untrained vs trained ProcessBench metric on held-out problems (load_prm on the trained folder),
    defaults of bench/prm_learning.py (facts style, 3 steps, sign and result errors, 600 steps, ~100 s
    on 2 cores). The untrained model writes no readable verdict (F1 0); trained, it must always write
    one, keep correct solutions correct and find the exact first wrong step of the ``sign`` errors.
    Measured to fail when the step labels are shifted by one step (trained F1 0) and when the saved
    folder holds the untrained weights (no readable verdict). ``result`` errors (a wrong sum) are
    reported, not asserted: measured not learned in this budget (see the bench docstring)."""
    import prm_learning

    result = prm_learning.run(workdir=tmp_path)
    before, after = result["untrained"], result["trained"]
    print(result)
    assert after["no_prediction"] == 0, "the trained PRM always writes readable verdicts"
    assert after["f1"] >= before["f1"] + 40.0, (before, after)
    assert after["acc_error_by_kind"]["sign"] >= 80.0 and after["acc_correct"] >= 80.0, after
