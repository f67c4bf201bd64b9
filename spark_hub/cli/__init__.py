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
from spark_hub.cli.build import build_dataset, print_summary  # noqa: E402
from spark_hub.cli.inspect_ import info, validate  # noqa: E402
from spark_hub.cli.push import push  # noqa: E402
from spark_hub.cli.stage2 import eval_group, sft_data, train_group  # noqa: E402
from spark_hub.cli.tools import env, recipes  # noqa: E402

for _command in (build_dataset, validate, info, push, sft_data, train_group, eval_group, recipes, env):
    cli.add_command(_command)

__all__ = ["cli", "main", "print_summary", "setup_logging", "user_errors"]
