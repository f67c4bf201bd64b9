"""spark-hub: reference-free process reward models (SPARK, arXiv 2512.03244) as a Hugging Face tool."""

__version__ = "0.1.0"

__all__ = ["__version__"]
