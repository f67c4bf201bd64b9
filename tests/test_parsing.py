"""Parsing of model text from data-driven cases (tests/data/parsing_cases.json)."""

import json
import os
import random
import re

import pytest

from spark_hub.parsing import parse_solution, parse_verification, strip_think

CASES = json.load(open(os.path.join(os.path.dirname(__file__), "data", "parsing_cases.json")))


@pytest.mark.parametrize("case", CASES["verification"], ids=[c["name"] for c in CASES["verification"]])
def test_parse_verification(case):
    parsed = parse_verification(case["text"], expected_steps=case["expected_steps"])
    for key, expected in case["expected"].items():
        assert getattr(parsed, key) == expected, f"{case['name']}: {key}"
    assert "<think>" not in parsed.text


@pytest.mark.parametrize("case", CASES["solution"], ids=[c["name"] for c in CASES["solution"]])
def test_parse_solution(case):
    parsed = parse_solution(case["text"])
    for key, expected in case["expected"].items():
        assert getattr(parsed, key) == expected, f"{case['name']}: {key}"
    # every step is the exact text of its span in the completion
    assert len(parsed.spans) == len(parsed.steps)
    for step, (start, end) in zip(parsed.steps, parsed.spans):
        assert case["text"][start:end] == step
        assert step == step.strip() and step


SPAN_TEXTS = [
    "Step 1: a\r\nStep 2: b\r\nAnswer: 1",
    "**Step 1.** Let $x=2$.\n\n$$x^2 = 4$$\n\n**Step 2.** So 4.\n\n**Final Answer:** \\boxed{4}",
    "<think>Step 1: no</think>\n\nStep 1: yes\n  indented line\nAnswer: 7",
    "Step 1: é ünïcode 😀 text\nStep 2: ✓\nAnswer: ✓",
    "1. first\n2. second\nAnswer: 3",
]


@pytest.mark.parametrize("text", SPAN_TEXTS)
def test_solution_spans_are_exact(text):
    parsed = parse_solution(text)
    assert parsed.steps
    assert [text[a:b] for a, b in parsed.spans] == parsed.steps
    assert all(a < b for a, b in parsed.spans) and parsed.spans == sorted(parsed.spans)


@pytest.mark.parametrize("text", [None, "", "\x00\x01", "## Step", "## Step 99999999999999999999: x", "*" * 10000,
                                  "Verification: Is the answer correct (Yes/No)?", "<think>" * 50])
def test_parsers_never_raise(text):
    parse_verification(text, expected_steps=3)
    parse_solution(text)


def test_strip_think_keeps_text_outside_blocks():
    assert strip_think("a<think>b</think>c") == "ac"


# ----------------------------------------------------------------------------- optimised parser vs the spec

_REF_HEADER = re.compile(r"^[ \t]*(?:#{1,6}[ \t]*(?:\*\*)?|\*\*)[ \t]*step[ \t]*(\d+)\b", re.I | re.M)
_REF_VERDICT = re.compile(r"this[ \t]+step[ \t]+is[ \t]+(?:\*\*)?[ \t]*(correct|incorrect|wrong|right)\b", re.I)
_REF_FINAL = re.compile(r"is[ \t]+the[ \t]+answer[ \t]+correct[ \t]*\(?[ \t]*yes[ \t]*/[ \t]*no[ \t]*\)?[ \t]*\??"
                        r"[ \t*_:]*(?:\\boxed\{)?[ \t*_]*(yes|no)\b", re.I)


def reference_parse(text, expected_steps):
    """The documented rules, written plainly (slow): what `parse_verification` must return."""
    clean = strip_think(text or "")
    if not clean:
        return ([], None, "empty")
    starts = [m.start() for m in _REF_HEADER.finditer(clean)]
    verdicts = [None] * len(starts)
    for v in _REF_VERDICT.finditer(clean):
        blocks = [i for i, s in enumerate(starts) if s <= v.start()]
        if blocks:
            verdicts[blocks[-1]] = v.group(1).lower() in ("correct", "right")
    finals = list(_REF_FINAL.finditer(clean))
    final = finals[-1].group(1).lower() == "yes" if finals else None
    status = ("no_steps" if not starts else "no_final_verdict" if final is None else "missing_step_verdict"
              if None in verdicts else "step_count_mismatch" if expected_steps is not None and len(verdicts) != expected_steps
              else "ok")
    return (verdicts, final, status)


FRAGMENTS = ["## Step 1: a\n", "### **Step 2** b\n", "**Step 3:** c\n", "step 4 ", "This step is correct.",
             "this  step is **incorrect**", "\nthis step\tis wrong", "<think>", "</think>", "\n####### Step 9\n",
             "Verification: Is the answer correct (Yes/No)? Yes", "is the answer correct (yes/no)? no", "\n", "  ",
             "#", "**", "footstep 5", "\n## STEP 12\n", "\n> ## Step 2\n", "this step is right", "\n\t** step 7 x"]


def test_parse_verification_agrees_with_the_plain_reference():
    rng = random.Random(0)
    for _ in range(3000):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 20)))
        for expected in (None, 2):
            parsed = parse_verification(text, expected_steps=expected)
            assert (parsed.step_verdicts, parsed.final_verdict, parsed.status) == reference_parse(text, expected), text
