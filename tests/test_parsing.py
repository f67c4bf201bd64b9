"""Parsing of model text from data-driven cases (tests/data/parsing_cases.json)."""

import json
import os

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
