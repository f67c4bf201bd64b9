"""Retries and error wording for every Hub call spark-hub makes.

* `with_retries` runs one step again on transient errors (HTTP 408/429/5xx, dropped connections,
  timeouts) with exponential backoff (`RetryPolicy`); anything else fails at once.
* `as_spark_error` turns a `huggingface_hub` or transport error into a one-line `SparkHubError`
  worded for the action (push, tag or download).
* `retry_download` does both for a download (a manifest, a snapshot, ``datasets.load_dataset``):
  ``download of ORG/NAME failed after N attempt(s): ...``.
* `quiet_hub` silences `huggingface_hub`'s progress bars while a commit runs, so an error is one
  line, not preceded by "Upload 0 LFS files" bars from each attempt.

``spark_hub.hub.DEFAULT_RETRY`` is read at call time (tests patch it to make retries instant).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from typing import Callable, Iterator, TypeVar

from spark_hub.errors import SparkHubError

logger = logging.getLogger("spark_hub.hub")

T = TypeVar("T")

#: HTTP statuses worth retrying.
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How transient Hub errors are retried.

    Args:
        attempts: total tries of one step (1 = no retry).
        base_delay: seconds before the first retry; doubled after each failure.
        max_delay: cap on one wait, in seconds.
    """

    attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 30.0

    def delay(self, failures: int) -> float:
        """Wait before the next try after ``failures`` consecutive failures."""
        return min(self.max_delay, self.base_delay * 2 ** max(0, failures - 1))


#: Used when a caller passes ``retry=None``; read through `default_retry` at call time.
DEFAULT_RETRY = RetryPolicy()


def default_retry() -> RetryPolicy:
    """``spark_hub.hub.DEFAULT_RETRY`` as it is now (patched by tests for instant retries)."""
    import spark_hub.hub as package

    return getattr(package, "DEFAULT_RETRY", DEFAULT_RETRY)


def _transport_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx", "requests"):
        try:
            mod = __import__(module)
        except ImportError:
            continue
        for name in ("TransportError", "ConnectionError", "Timeout", "TimeoutException"):
            cls = getattr(mod, name, None)
            if isinstance(cls, type) and issubclass(cls, BaseException):
                errors.append(cls)
    return tuple(errors)


def is_xet_unsupported(error: BaseException) -> bool:
    """hf_xet's error when the endpoint has no Xet storage (a mirror or test server): not transient."""
    return "xet-write-token" in str(error) or "xet-read-token" in str(error)


def _status(error: BaseException) -> int | None:
    return getattr(getattr(error, "response", None), "status_code", None)


def is_transient(error: BaseException) -> bool:
    """True for errors worth retrying: HTTP 408/429/5xx, dropped connections, timeouts.

    Errors wrapped by another library (``datasets`` raises its own types around the Hub client's)
    are judged by their cause.
    """
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    seen = 0
    while error is not None and seen < 5:
        if isinstance(error, OfflineModeIsEnabled) or is_xet_unsupported(error):
            return False
        if isinstance(error, HfHubHTTPError):
            status = _status(error)
            return status is not None and status in TRANSIENT_STATUS
        if isinstance(error, _transport_errors()):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def describe(error: BaseException) -> str:
    """One short line about ``error`` (status and first line of the message; never headers)."""
    status = _status(error)
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    text = f"{type(error).__name__}: {first}"
    if status is not None and str(status) not in text:
        text = f"HTTP {status} {text}"
    return text if len(text) <= 240 else text[:237] + "..."


def with_retries(step: Callable[[int], T], *, what: str, retry: RetryPolicy | None = None) -> T:
    """Run ``step(attempt)`` (attempt counts from 1), retrying transient errors with backoff."""
    retry = retry or default_retry()
    attempts = max(1, retry.attempts)
    for attempt in range(1, attempts + 1):
        try:
            return step(attempt)
        except Exception as error:
            if isinstance(error, SparkHubError) or not is_transient(error) or attempt == attempts:
                raise
            delay = retry.delay(attempt)
            logger.warning("%s failed (%s); retrying in %.2fs [attempt %d/%d]",
                           what, describe(error), delay, attempt + 1, attempts)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def as_spark_error(
    error: BaseException, *, action: str, target: str, retry: RetryPolicy | None = None
) -> SparkHubError:
    """Translate a `huggingface_hub` / transport error into a one-line `SparkHubError`.

    Args:
        action: ``"Pushing to"``, ``"Tagging"`` or ``"Downloading"``: downloads get their own
            wording (``download of TARGET failed after N attempt(s)``); pushes say that nothing was
            committed.
        target: what was addressed (``"dataset org/name@main"``).
    """
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    retry = retry or default_retry()
    download = action.lower().startswith("download")
    if isinstance(error, SparkHubError):
        return error
    if isinstance(error, RevisionNotFoundError):
        return SparkHubError(f"revision not found: {target}", hint="check the revision (a branch, tag or commit)")
    if isinstance(error, GatedRepoError):
        return SparkHubError(f"{target} is gated", hint="request access on the Hub, then retry")
    if isinstance(error, RepositoryNotFoundError):
        return SparkHubError(
            f"repository not found or not accessible: {target}",
            hint="check the repo id and the repo type, and that your token (HF_TOKEN or `hf auth login`) can read it",
        )
    if isinstance(error, RemoteEntryNotFoundError):
        return SparkHubError(f"file not found: {target}")
    if isinstance(error, OfflineModeIsEnabled):
        return SparkHubError(f"{action} {target} needs the network, but HF_HUB_OFFLINE is set",
                             hint="unset HF_HUB_OFFLINE, or use a local copy")
    if is_xet_unsupported(error):
        return SparkHubError(
            f"{action} {target} failed: the Hub endpoint does not offer Xet storage ({describe(error)})",
            hint="set HF_HUB_DISABLE_XET=1 before starting spark-hub to use LFS instead",
        )
    status = _status(error)
    if isinstance(error, HfHubHTTPError) and status in (401, 403):
        return SparkHubError(
            f"{action} {target} was refused (HTTP {status})",
            hint="set HF_TOKEN or run `hf auth login` with a token that has "
                 + ("read access" if download else "write access"),
        )
    if isinstance(error, HfHubHTTPError) and status == 412 and not download:
        return SparkHubError(
            f"{target} changed while {action.lower()} was in progress (someone else pushed)",
            hint="nothing was committed; re-run the command",
        )
    if is_transient(error):
        if download:
            return SparkHubError(
                f"download of {target} failed after {retry.attempts} attempt(s): {describe(error)}",
                hint="check the network and the Hub's status, then re-run the same command",
            )
        return SparkHubError(
            f"{action} {target} failed after {retry.attempts} attempt(s): {describe(error)}",
            hint="nothing was committed and the local folder is unchanged; re-run the same command",
        )
    if download:
        return SparkHubError(f"download of {target} failed: {describe(error)}")
    return SparkHubError(f"{action} {target} failed: {describe(error)}")


def retry_download(fetch: Callable[[], T], *, target: str, retry: RetryPolicy | None = None) -> T:
    """Call ``fetch()``, retrying transient errors; any error becomes a one-line `SparkHubError`.

    For every Hub download spark-hub makes (artifacts, ``--problems ORG/NAME`` through
    ``datasets.load_dataset``): transient failures (HTTP 408/429/5xx, dropped connections,
    timeouts, also when wrapped by ``datasets``) are retried with backoff; the final error reads
    ``download of TARGET failed after N attempt(s): <cause>``; a missing repo, revision or file
    fails at once with its own message.

    Args:
        fetch: the download, called with no arguments; its result is returned.
        target: what is downloaded, for messages (``"dataset openai/gsm8k@main"``).
        retry: backoff; default ``spark_hub.hub.DEFAULT_RETRY`` (5 attempts).

    Example:

    ```py
    >>> rows = retry_download(lambda: datasets.load_dataset(repo, name, split="test"),
    ...                       target=f"dataset {repo}")  # doctest: +SKIP
    ```
    """
    retry = retry or default_retry()
    try:
        return with_retries(lambda _attempt: fetch(), what=f"download of {target}", retry=retry)
    except SparkHubError:
        raise
    except Exception as error:
        raise as_spark_error(error, action="Downloading", target=target, retry=retry) from error


_QUIET_LOCK = threading.Lock()
_QUIET_DEPTH = 0
_QUIET_REENABLE = False


@contextlib.contextmanager
def quiet_hub() -> Iterator[None]:
    """Hide `huggingface_hub`'s progress bars for the duration (re-entrant, thread-safe).

    A user who set ``HF_HUB_DISABLE_PROGRESS_BARS`` keeps their choice.
    """
    global _QUIET_DEPTH, _QUIET_REENABLE
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    managed = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") is None
    if managed:
        with _QUIET_LOCK:
            if _QUIET_DEPTH == 0:
                _QUIET_REENABLE = not are_progress_bars_disabled()
                if _QUIET_REENABLE:
                    disable_progress_bars()
            _QUIET_DEPTH += 1
    try:
        yield
    finally:
        if managed:
            with _QUIET_LOCK:
                _QUIET_DEPTH -= 1
                if _QUIET_DEPTH == 0 and _QUIET_REENABLE:
                    enable_progress_bars()
                    _QUIET_REENABLE = False


__all__ = [
    "DEFAULT_RETRY",
    "RetryPolicy",
    "TRANSIENT_STATUS",
    "as_spark_error",
    "describe",
    "is_transient",
    "quiet_hub",
    "retry_download",
    "with_retries",
]
