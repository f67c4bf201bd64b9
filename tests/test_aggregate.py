"""Aggregation from data-driven cases (tests/data/aggregation_cases.json): votes -> labels."""

import json
import os

import pytest

from spark_hub.errors import SparkHubError
from spark_hub.parsing import ParsedVerification
from spark_hub.records import Verification
from spark_hub.stages.aggregate import AggregationConfig, aggregate

CASES = json.load(open(os.path.join(os.path.dirname(__file__), "data", "aggregation_cases.json")))


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_aggregation_case(case):
    # the records the build aggregates (with the probabilities a logprobs backend fills in)
    verifications = [
        Verification(problem_id="p", solution_index=0, index=i, verifier="v", raw_text=f"v{i}", text=f"v{i}",
                     step_verdicts=v["v"], final_verdict=v["final"], parse_status=v.get("status", "ok"),
                     expected_steps=case["n_steps"], step_probs=v.get("p"), final_prob=v.get("fp"))
        for i, v in enumerate(case["verifications"])
    ]
    result = aggregate(verifications, case["n_steps"], AggregationConfig(**case["config"]))
    for key, expected in case["expected"].items():
        assert getattr(result, key) == expected, f"{case['name']}: {key}"


def test_invalid_option_is_a_user_error():
    with pytest.raises(SparkHubError, match="aggregation.tie_break must be one of"):
        AggregationConfig(tie_break="coin")


def test_parsed_verifications_aggregate_without_probabilities():
    vs = [ParsedVerification(text="a", step_verdicts=[True], final_verdict=True)]
    result = aggregate(vs, 1, AggregationConfig())
    assert (result.labels, result.step_probs, result.final_prob) == ([True], None, None)
