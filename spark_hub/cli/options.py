"""Options shared by several commands, defined once (like huggingface_hub's ``cli/_cli_utils.py``).

Each name below is a decorator factory: ``@options.config()``; pass ``help=`` where a command needs
its own wording. `hub_push` bundles the publishing options that ``build-dataset --push`` and
``push`` share, so every command that publishes takes the same flags with the same meaning.

Naming rule for revisions, the same in every command:

- ``--revision`` is the revision of the command's positional repo argument: the branch ``push``
  writes to, the revision ``info`` / ``sft-data`` read;
- an input given by an option names its revision after it: ``--problems-revision``, ``--prm-revision``;
- ``--hub-revision`` is the branch a ``--push`` at the end of a command writes to.
"""

from __future__ import annotations

import click


def _option(*decls, **defaults):
    def factory(**overrides):
        return click.option(*decls, **{**defaults, **overrides})

    return factory


config = _option("--config", "config_path", type=click.Path(dir_okay=False), metavar="YAML",
                 help="YAML recipe, or the name of a built-in one (`spark-hub recipes` lists them).")
set_ = _option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
               help="Override a config key, e.g. --set verifier.n=8 (repeatable; wins over the recipe).")
output_dir = _option("--output-dir", type=click.Path(file_okay=False), help="Output folder.")
limit = _option("--limit", type=int, help="Use only the first N problems.")
dry_run = _option("--dry-run", is_flag=True, help="Print what would be done; change nothing.")
push = _option("--push", is_flag=True, default=None, help="Push the result to the Hub when done.")
hub_repo = _option("--hub-repo", metavar="ORG/NAME", help="Hub repo id to push to.")
hub_revision = _option("--hub-revision", metavar="BRANCH",
                       help="Branch to push to (default main; `auto` derives a name from the config).")
private = _option("--private", is_flag=True, help="Create the repo private (an existing repo keeps its visibility).")
overwrite = _option("--overwrite", is_flag=True,
                    help="Replace an artifact already on the branch (remote files it no longer has are deleted).")
hub_endpoint = _option("--hub-endpoint", envvar="HF_ENDPOINT", default=None, metavar="URL",
                       help="Hub URL (default: $HF_ENDPOINT, else https://huggingface.co).")
verbose = _option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
quiet = _option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")


def hub_push(fn):
    """``--push --hub-repo --hub-revision --private --overwrite --hub-endpoint`` for commands that
    can publish their output when done."""
    for decorator in reversed([
        push(), hub_repo(help="Hub repo id for --push."), hub_revision(help="Branch for --push (default main; `auto` derives one from the config)."),
        private(help="With --push: create the repo private."), overwrite(help="With --push: replace an artifact already on that branch."),
        hub_endpoint(help="Hub URL for --push (default: $HF_ENDPOINT, else https://huggingface.co)."),
    ]):
        fn = decorator(fn)
    return fn


__all__ = ["config", "dry_run", "hub_endpoint", "hub_push", "hub_repo", "hub_revision", "limit", "output_dir",
           "overwrite", "private", "push", "quiet", "set_", "verbose"]
