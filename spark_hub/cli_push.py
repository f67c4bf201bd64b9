"""Moved to `spark_hub.cli.push`; kept so ``from spark_hub.cli_push import push`` still works."""

from spark_hub.cli.push import push

__all__ = ["push"]
