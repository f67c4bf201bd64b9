"""The ``spark-hub`` command line.

Commands: ``build-dataset`` (Stage I), ``validate`` (schema check of any dataset), ``info``
(provenance and statistics of a built artifact, local or on the Hub), ``push`` (publish to the Hub),
``sft-data`` (SFT pairs for a generative RM), ``train prm``, ``eval processbench``, ``recipes`` (the built-in
recipes), ``env`` (versions and devices). Options shared by several
commands are defined once in `spark_hub.cli.options`. User errors print one line and exit 2.
"""

from __future__ import annotations

import os

# torch's OpenMP threads spin while waiting: with other processes on the cores, CPU generation can
# get 10-20x slower. PASSIVE avoids that (read when torch is imported, so it is set first).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from spark_hub.cli.app import cli, main, setup_logging, user_errors  # noqa: E402


def __getattr__(name: str):
    if name == "print_summary":  # kept importable from here; the command module loads on demand
        from spark_hub.cli.build import print_summary

        return print_summary
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["cli", "main", "print_summary", "setup_logging", "user_errors"]
