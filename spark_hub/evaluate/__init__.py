"""Evaluation of reward models and policies (ProcessBench; math benchmarks later).

Library code only: the ``spark-hub eval ...`` commands are thin wrappers around these functions.
"""

from spark_hub.evaluate.processbench import (
    compute_metrics,
    load_processbench,
    read_predictions,
    record_results,
    run,
    score_with_critic,
    score_with_prm,
)

__all__ = ["compute_metrics", "load_processbench", "read_predictions", "record_results", "run", "score_with_critic",
           "score_with_prm"]
