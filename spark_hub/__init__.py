"""spark-hub: reference-free process reward models (SPARK, arXiv 2512.03244) as a Hugging Face tool.

The public entry points are imported lazily, so ``import spark_hub`` stays light:

>>> import spark_hub
>>> callable(spark_hub.load_prm)
True
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_prm", "read_records"]

_LAZY = {"load_prm": "spark_hub.prm", "read_records": "spark_hub.records"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'spark_hub' has no attribute {name!r}")
