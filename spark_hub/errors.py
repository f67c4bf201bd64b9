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
    """An optional dependency is not installed; the message names the extra to install.

    Args:
        package: the missing module.
        extra: the spark-hub extra that installs it (None: no extra does).
        feature: what needs it (``"the vllm backend"``).
        hint: the install command; default ``pip install 'spark-hub[EXTRA]'``.
    """

    def __init__(self, package: str, extra: str | None, feature: str, *, hint: str | None = None):
        self.package = package
        self.extra = extra
        super().__init__(
            f"{feature} needs the `{package}` package, which is not installed",
            hint=hint or (f"pip install 'spark-hub[{extra}]'" if extra else f"pip install {package}"),
        )


def __getattr__(name: str):
    # `require` lives in spark_hub.import_utils (with is_available and the tested version windows);
    # re-exported lazily here so `from spark_hub.errors import require` keeps working.
    if name == "require":
        from spark_hub.import_utils import require

        return require
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
