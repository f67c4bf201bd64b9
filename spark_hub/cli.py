"""The ``spark-hub`` command line.

Commands: ``build-dataset`` (Stage I), ``validate`` (schema check of any dataset), ``info``
(statistics of a built dataset), ``push`` (publish to the Hub). User errors print one line and
exit with code 2.
"""

from __future__ import annotations

import os

# torch's OpenMP threads spin while waiting: with other processes on the cores, CPU generation can
# get 10-20x slower. PASSIVE avoids that (read when torch is imported, so it is set first).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import functools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

import click  # noqa: E402

from spark_hub import __version__  # noqa: E402
from spark_hub.errors import SparkHubError  # noqa: E402

logger = logging.getLogger("spark_hub")


def _setup_logging(verbose: int) -> None:
    from rich.logging import RichHandler

    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose >= 0 else logging.WARNING
    root = logging.getLogger("spark_hub")
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        from spark_hub.progress import console

        handler = RichHandler(console=console(), show_path=False, show_time=False)
        root.addHandler(handler)
    root.setLevel(level)


def user_errors(fn):
    """Turn `SparkHubError` into a one-line message on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SparkHubError as e:
            click.echo(f"Error: {e.one_line()}", err=True)
            sys.exit(2)

    return wrapper


# Shared options, defined once.
config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                             help="YAML recipe (see pipelines/); built-in names like `demo-cpu` work too.")
set_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="Override a config key, e.g. --set verifier.n=8 (repeatable).")
output_option = click.option("--output-dir", type=click.Path(file_okay=False), help="Output folder.")
limit_option = click.option("--limit", type=int, help="Use only the first N problems.")
verbose_option = click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
quiet_option = click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spark-hub")
def cli():
    """spark-hub: reference-free process reward models (SPARK) on the Hugging Face stack."""


@cli.command("build-dataset")
@config_option
@click.option("--problems", help="Problems (.jsonl/.parquet) or a Hub dataset id ORG/NAME.")
@click.option("--revision", "problems_revision", help="Hub revision of --problems.")
@click.option("--solutions", type=click.Path(dir_okay=False),
              help="Existing step-split solutions (JSONL with problem + steps): skip generation.")
@limit_option
@set_option
@output_option
@click.option("--push", is_flag=True, default=None, help="Push the dataset to the Hub when done.")
@click.option("--hub-repo", help="Hub dataset repo id for --push.")
@click.option("--hub-revision", help="Branch for --push (default main; `auto` derives one from the config).")
@click.option("--overwrite", is_flag=True, help="With --push: replace an artifact already on that branch.")
@click.option("--decontaminate", is_flag=True, default=None,
              help="Drop problems that overlap with contamination.benchmarks before generation.")
@click.option("--dry-run", is_flag=True, help="Print the plan (calls, tokens, GPU-hours); no model calls, no writes.")
@click.option("--pilot", type=int, metavar="K", help="Run K problems for real and report label quality first.")
@click.option("--throughput", type=float, metavar="TOK/S", help="Decode throughput for --dry-run GPU-hours.")
@click.option("--no-progress", is_flag=True, help="No live progress display.")
@verbose_option
@quiet_option
@user_errors
def build_dataset(config_path, problems, problems_revision, solutions, limit, overrides, output_dir,
                  push, hub_repo, hub_revision, overwrite, decontaminate, dry_run, pilot, throughput, no_progress,
                  verbose, quiet):
    """Stage I: generate M solutions per problem, verify each N times without the reference,
    aggregate the verdicts into step labels, and write a step-verification dataset.

    Resumable: run the same command again after any interruption; a finished build re-runs with
    zero model calls.
    """
    _setup_logging(-1 if quiet else verbose)
    from spark_hub.config import load_build_config
    from spark_hub.stages import build

    overrides = list(overrides) + (["contamination.decontaminate=true"] if decontaminate else [])
    config = load_build_config(
        config_path, overrides, problems=problems, problems_revision=problems_revision,
        solutions=solutions, limit=limit, output_dir=output_dir, push=push, hub_repo=hub_repo,
        hub_revision=hub_revision,
    )
    if dry_run:
        from spark_hub.stages.plan import dry_run as plan_build, format_plan

        click.echo(format_plan(plan_build(config, throughput=throughput)))
        return
    if pilot is not None:
        from spark_hub.stages.plan import format_pilot, pilot as run_pilot

        click.echo(format_pilot(run_pilot(config, pilot, progress=not no_progress and not quiet)))
        return
    result = build.main(config, progress=not no_progress and not quiet)
    if not quiet:
        print_summary(result)
    if config.push:
        from spark_hub import hub

        revision = config.hub_revision or "main"
        if revision == "auto":
            revision = hub.default_revision(config.to_dict())
        pushed = hub.push(result.output_dir, config.hub_repo, revision=revision, overwrite=overwrite)
        click.echo(f"pushed {config.hub_repo}@{revision}: {pushed.commit_url}", err=True)


def print_summary(result) -> None:
    """The end-of-run table: counts, parse failures, label balance, agreement."""
    from rich.table import Table

    from spark_hub.progress import console

    s = result.statistics
    table = Table(title=f"spark-hub build-dataset: {result.output_dir}" + (" (already complete)" if result.reused else ""))
    table.add_column("metric")
    table.add_column("value", justify="right")

    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    rows = [
        ("problems", s.get("problems")),
        ("solutions", s.get("solutions")),
        ("verifications", s.get("verifications")),
        ("parse-failure rate", pct(s.get("parse_failure_rate"))),
        ("labelled solutions", s.get("records_labelled")),
        ("steps labelled", s.get("steps_labelled")),
        ("step labels correct", pct(s.get("step_label_balance"))),
        ("final verdict Yes", pct(s.get("final_label_balance"))),
        ("mean per-step agreement", pct(s.get("mean_step_agreement"))),
        ("unanimous steps", pct(s.get("unanimous_step_rate"))),
        ("model requests (gen/ver)", f"{result.model_requests.get('generator', 0)}/{result.model_requests.get('verifier', 0)}"),
        ("seconds", f"{result.seconds:.1f}"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    console().print(table)


@cli.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--max-errors", default=20, show_default=True, help="Stop after this many errors.")
@user_errors
def validate(path, max_errors):
    """Check a dataset folder, Parquet or JSONL file against the spark-hub schemas.

    Each error names the file, the record and the JSON path. Exit code 1 when invalid.
    """
    from spark_hub.validate import validate_path

    errors, checked = validate_path(path, max_errors=max_errors)
    for err in errors:
        click.echo(err, err=True)
    if errors:
        click.echo(f"invalid: {len(errors)} error(s) in {checked} record(s) checked", err=True)
        sys.exit(1)
    click.echo(f"valid: {checked} record(s)")


@cli.command()
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON.")
@user_errors
def info(path, as_json):
    """Print the statistics and provenance of a built dataset (from its manifest)."""
    from spark_hub.manifest import read_manifest

    manifest = read_manifest(path)
    if as_json:
        click.echo(json.dumps(manifest.get("statistics", {}), indent=2))
        return
    from rich.table import Table


    table = Table(title=f"{path} ({manifest['kind']}, spark-hub {manifest['spark_hub_version']})")
    table.add_column("key")
    table.add_column("value")
    for role, model in manifest.get("models", {}).items():
        table.add_row(f"model: {role}", f"{model.get('id')} ({model.get('fingerprint') or model.get('revision')})")
    for key, value in manifest.get("statistics", {}).items():
        table.add_row(key, json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    from rich.console import Console

    Console().print(table)


def _register_optional_commands() -> None:
    try:
        from spark_hub.cli_push import push
    except ImportError:  # pragma: no cover - cli_push ships with the package
        return
    cli.add_command(push)


_register_optional_commands()


def main() -> None:  # console script entry point
    cli(prog_name="spark-hub")


if __name__ == "__main__":
    main()
