"""User-facing errors.

`SparkHubError` is raised for anything the user can fix (bad input file, unknown option, missing
extra). It subclasses `ValueError` and renders as one line: what was wrong, where, and what to do
next. Errors that mean spark-hub has a bug stay plain exceptions.
"""

from __future__ import annotations


class SparkHubError(ValueError):
    """A user error with an optional location and hint.

    Args:
        message: what was wrong, including the offending value.
        where: the file, line and field (e.g. ``"problems.jsonl:3: field 'problem'"``).
        hint: the next thing to try (e.g. a command or a valid value list).
    """

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f" ({self.hint})"
        return " ".join(text.split("\n"))


class MissingExtraError(SparkHubError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, package: str, extra: str, feature: str):
        super().__init__(
            f"{feature} needs the `{package}` package, which is not installed",
            hint=f"pip install 'spark-hub[{extra}]'",
        )


def require(module: str, extra: str, feature: str):
    """Import an optional dependency or raise `MissingExtraError` naming the extra."""
    import importlib
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(module, extra, feature)
    return importlib.import_module(module)
