"""``spark-hub push``: publish an output folder (dataset, PRM or policy) to the Hub.

The work is done by `spark_hub.hub.push`; this module only maps options and turns `SparkHubError`
into one line on stderr and exit code 2.

Examples:

```
spark-hub push out/demo my-org/spark-demo --dry-run
spark-hub push out/demo my-org/spark-demo --revision auto --private
spark-hub push out/prm my-org/spark-prm --revision main --overwrite --tag v1.0
```
"""

from __future__ import annotations

from pathlib import Path

import click

from spark_hub.cli import options
from spark_hub.errors import SparkHubError


@click.command("push")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.argument("repo_id")
@click.option(
    "--revision", "--hub-revision", "revision", default="main", show_default=True,
    help="Branch to push to (created from main if missing). 'auto' derives a name from the config "
         "in manifest.json: {aggregation}-{verifier}-m{M}-n{N}-{hash8}.",
)
@click.option("--repo-type", type=click.Choice(["dataset", "model"]), default=None,
              help="Hub repo type. Default: from the manifest kind (dataset -> dataset, prm/policy -> model).")
@options.private()
@options.overwrite()
@options.dry_run(help="Print the files and the card that would be pushed; send nothing.")
@options.hub_endpoint()
@click.option("--tag", default=None, help="Also tag the pushed commit (e.g. v1.0).")
@click.option("-m", "--commit-message", default=None, help="Commit summary (default names the artifact kind).")
def push(directory: Path, repo_id: str, revision: str, repo_type: str | None, private: bool, overwrite: bool,
         dry_run: bool, hub_endpoint: str | None, tag: str | None, commit_message: str | None) -> None:
    """Push DIRECTORY (a spark-hub output folder) to the Hub repo REPO_ID in one commit.

    The manifest is validated first; local state (.spark/) is never pushed. The token comes from
    HF_TOKEN or `hf auth login` and is never printed.
    """
    from spark_hub import hub

    try:
        if revision == "auto":
            from spark_hub.manifest import read_manifest

            revision = hub.default_revision(read_manifest(directory)["config"])
        result = hub.push(
            directory, repo_id, repo_type=repo_type, revision=revision, private=private, overwrite=overwrite,
            dry_run=dry_run, endpoint=hub_endpoint, commit_message=commit_message, tag=tag,
        )
    except SparkHubError as e:
        click.echo(f"Error: {e.one_line()}", err=True)
        raise click.exceptions.Exit(2) from e
    if dry_run:
        click.echo(result.render())
        return
    click.echo(result.summary())
    click.echo(result.commit_url or result.commit_sha)


__all__ = ["push"]
