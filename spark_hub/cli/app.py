"""The ``spark-hub`` group: one-line errors, Ctrl-C handling, logging setup.

Every error a user can cause prints ONE line on stderr and exits 2: our own `SparkHubError` and
click's usage errors alike (click's default is three lines: usage, a "Try --help" line, the error).
Ctrl-C exits 130 and, for a command that resumes (``build-dataset``), prints the command to resume.
"""

from __future__ import annotations

import functools
import logging
import shlex
import sys

import click

from spark_hub import __version__
from spark_hub.errors import SparkHubError

logger = logging.getLogger("spark_hub")

#: Commands that pick up where an interrupted run stopped when run again with the same arguments.
RESUMABLE = {"build-dataset": "the build is resumable: model calls made so far are cached",
             "train": "training is resumable: it continues from the last saved checkpoint"}


#: Subcommands, loaded when invoked (``module:attribute``): ``spark-hub build-dataset`` does not
#: import the training or Hub commands.
COMMANDS = {
    "build-dataset": "spark_hub.cli.build:build_dataset",
    "validate": "spark_hub.cli.inspect_:validate",
    "info": "spark_hub.cli.inspect_:info",
    "push": "spark_hub.cli.push:push",
    "sft-data": "spark_hub.cli.stage2:sft_data",
    "train": "spark_hub.cli.stage2:train_group",
    "eval": "spark_hub.cli.stage2:eval_group",
    "recipes": "spark_hub.cli.tools:recipes",
    "env": "spark_hub.cli.tools:env",
}


class _PlainHandler(logging.StreamHandler):
    """Log lines as plain text on stderr (a pipe or a file: no terminal layout to keep)."""


def setup_logging(verbose: int) -> None:
    """spark-hub's log lines: through rich on a terminal (the console of the progress display),
    plain ``LEVEL message`` lines otherwise (logs redirected to a file stay one line per record)."""
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose >= 0 else logging.WARNING
    root = logging.getLogger("spark_hub")
    root.setLevel(level)
    if any(isinstance(h, _PlainHandler) or type(h).__name__ == "RichHandler" for h in root.handlers):
        return
    if not sys.stderr.isatty():
        handler = _PlainHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)-8s %(message)s"))
        root.addHandler(handler)
        return
    from rich.logging import RichHandler

    from spark_hub.progress import console

    root.addHandler(RichHandler(console=console(), show_path=False, show_time=False))


def user_errors(fn):
    """Turn `SparkHubError` into a one-line message on stderr and exit code 2 (also when the command
    is invoked on its own, outside the group)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SparkHubError as e:
            click.echo(f"Error: {e.one_line()}", err=True)
            sys.exit(2)

    return wrapper


def one_line(text: str) -> str:
    return " ".join(str(text).split())


_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class SparkGroup(click.Group):
    """A click group whose errors are one line, whose Ctrl-C says how to resume, and whose
    subcommands (`COMMANDS`) are imported only when used."""

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None and name in COMMANDS:
            import importlib

            module, attr = COMMANDS[name].split(":")
            command = getattr(importlib.import_module(module), attr)
            self.add_command(command, name)
        return command

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        args = list(sys.argv[1:] if args is None else args)
        prog_name = prog_name or "spark-hub"
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _NO_ARGS_IS_HELP as e:  # `spark-hub` alone, or a group without a command: the help text
            e.show()
            sys.exit(e.exit_code)
        except click.UsageError as e:
            command = e.ctx.command_path if e.ctx is not None else prog_name
            click.echo(f"Error: {one_line(e.format_message())} (see `{command} --help`)", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            click.echo(f"Error: {one_line(e.format_message())}", err=True)
            sys.exit(e.exit_code)
        except SparkHubError as e:
            click.echo(f"Error: {e.one_line()}", err=True)
            sys.exit(2)
        except (click.Abort, KeyboardInterrupt):
            click.echo(interrupted_message(prog_name, args), err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


def interrupted_message(prog_name: str, args: list[str]) -> str:
    """What Ctrl-C prints: for a resumable command, that it is resumable and the exact command."""
    command = next((a for a in args if not a.startswith("-")), None)
    if command in RESUMABLE and "--dry-run" not in args:
        return (f"Interrupted: {RESUMABLE[command]}. Resume with the same command: "
                f"{shlex.join([prog_name, *args])}")
    return "Interrupted."


@click.group(cls=SparkGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="spark-hub")
def cli():
    """spark-hub: reference-free process reward models (SPARK) on the Hugging Face stack."""


def main() -> None:  # console script entry point
    cli(prog_name="spark-hub")
