"""stages/generate.py: solution requests and step spans of generated and given solutions."""

from spark_hub.backends.base import Completion
from spark_hub.records import Problem
from spark_hub.stages.generate import given_solutions, parse_solutions, solution_request

PROBLEM = Problem(id="p", problem="What is 1+1?", reference="2", source="t")
SAMPLING = {"n": 2, "temperature": 0.7, "top_p": 0.95, "max_tokens": 16}


def test_constrained_is_not_a_generator_setting(caplog):
    plain = solution_request(PROBLEM, SAMPLING, 7)
    assert solution_request(PROBLEM, {**SAMPLING, "constrained": True}, 7).key("m") == plain.key("m")


def test_step_spans_locate_each_step_in_the_completion():
    text = "Step 1: 1 + 1\n  makes 2.\n\nStep 2: So the answer is 2.\nAnswer: 2"
    [solution] = parse_solutions(PROBLEM, [Completion(text=text, finish_reason="stop")])
    assert solution.step_spans and [text[a:b] for a, b in solution.step_spans] == solution.steps
    assert solution.steps[0] == "1 + 1\n  makes 2."


def test_given_solutions_carry_spans_into_their_text():
    [solution] = given_solutions(PROBLEM, [{"steps": ["1 + 1 = 2", "so 2"], "final_answer": "2"}])
    assert [solution.text[a:b] for a, b in solution.step_spans] == ["1 + 1 = 2", "so 2"]
