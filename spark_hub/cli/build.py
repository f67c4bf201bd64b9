"""``spark-hub build-dataset``: Stage I from the command line."""

from __future__ import annotations

import click

from spark_hub.cli import options
from spark_hub.cli.app import setup_logging, user_errors


def _renamed_revision(ctx, param, value):
    if value is not None:
        raise click.BadParameter("renamed to --problems-revision (the Hub revision of --problems); "
                                 "--hub-revision is the branch to push to", ctx=ctx, param=param)
    return value


@click.command("build-dataset")
@options.config()
@click.option("--problems", help="Problems (.jsonl/.parquet) or a Hub dataset id ORG/NAME.")
@click.option("--problems-revision", help="Hub revision (branch, tag, commit) of --problems.")
@click.option("--problems-config", help="Hub dataset config (subset) of --problems, e.g. main for openai/gsm8k.")
@click.option("--problems-split", help="Split of --problems when it is a Hub dataset (default train).")
@click.option("--revision", "old_revision", hidden=True, expose_value=False, callback=_renamed_revision)
@click.option("--solutions", type=click.Path(dir_okay=False),
              help="Existing step-split solutions (JSONL with problem + steps): skip generation.")
@options.limit()
@options.set_()
@options.output_dir()
@options.hub_push
@click.option("--decontaminate", is_flag=True, default=None,
              help="Drop problems that overlap with contamination.benchmarks before generation.")
@options.dry_run(help="Print the plan (calls, tokens, GPU-hours); no model calls, no writes.")
@click.option("--pilot", type=int, metavar="K", help="Run K problems for real and report label quality first.")
@click.option("--throughput", type=float, metavar="TOK/S", help="Decode throughput for --dry-run GPU-hours.")
@click.option("--no-progress", is_flag=True, help="No live progress display.")
@options.verbose()
@options.quiet()
@user_errors
def build_dataset(config_path, problems, problems_revision, problems_config, problems_split, solutions, limit, overrides, output_dir,
                  push, hub_repo, hub_revision, private, overwrite, hub_endpoint, decontaminate, dry_run, pilot,
                  throughput, no_progress, verbose, quiet):
    """Stage I: generate M solutions per problem, verify each N times without the reference,
    aggregate the verdicts into step labels, and write a step-verification dataset.

    Resumable: run the same command again after any interruption; a finished build re-runs with
    zero model calls.
    """
    setup_logging(-1 if quiet else verbose)
    from spark_hub.config import load_build_config
    from spark_hub.stages import build

    config = load_build_config(
        config_path, list(overrides), problems=problems, problems_revision=problems_revision,
        problems_config=problems_config, problems_split=problems_split,
        solutions=solutions, limit=limit, output_dir=output_dir, push=push, hub_repo=hub_repo,
        hub_revision=hub_revision, **{"contamination.decontaminate": decontaminate},
    )
    if dry_run:
        from spark_hub.stages.plan import dry_run as plan_build, format_plan

        click.echo(format_plan(plan_build(config, throughput=throughput)))
        if config.limit is not None and limit is None:
            click.echo(f"  limit:                  first {config.limit} problems, from "
                       f"{'--set limit' if any(o.startswith('limit=') for o in overrides) else config_path} "
                       "(--set limit=null for all)")
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
        pushed = hub.push(result.output_dir, config.hub_repo, revision=revision, private=private,
                          overwrite=overwrite, endpoint=hub_endpoint)
        click.echo(pushed.summary() + (f": {pushed.commit_url}" if pushed.commit_url else ""), err=True)


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
        ("mean per-step agreement", pct(s.get("mean_step_agreement"))
         + (f" ({s['mean_votes_per_step']:.1f} votes/step)" if s.get("mean_votes_per_step") is not None else "")),
        ("unanimous steps", pct(s.get("unanimous_step_rate"))),
        ("model requests (gen/ver)", f"{result.model_requests.get('generator', 0)}/{result.model_requests.get('verifier', 0)}"),
        ("seconds", f"{result.seconds:.1f}"),
    ]
    if s.get("single_vote_steps"):
        rows.insert(-2, ("steps with a single vote", s["single_vote_steps"]))
    for name, value in rows:
        table.add_row(name, str(value))
    out = console()
    out.print(table)
    for warning in s.get("warnings") or []:  # the last thing the user sees: what went wrong and what to try
        out.print(f"Warning: {warning}", style="yellow", markup=False, highlight=False, soft_wrap=True)
