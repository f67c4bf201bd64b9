"""Publish spark-hub artifacts to the Hugging Face Hub, and fetch them back.

A spark-hub artifact is a folder with a ``manifest.json`` (see `spark_hub.manifest`): a dataset built by
``build-dataset``, a PRM or a policy. The package has four parts:

* `spark_hub.hub.revisions`: branch names (``--revision auto``, checkpoint branches);
* `spark_hub.hub.retries`: backoff on transient errors and one-line error wording (pushes and
  downloads alike), `retry_download` for any Hub download;
* `spark_hub.hub.push`: plan, check, write: idempotent single-commit pushes (an identical artifact
  already there is "already up to date"), tags, background checkpoint pushes;
* `spark_hub.hub.download`: artifacts and Hub datasets pinned to a commit and checked.

The token comes from the usual `huggingface_hub` sources (``HF_TOKEN``, ``hf auth login``) and is
never printed, logged or written; a file that contains it is refused and cards redact it.

Example:

```py
>>> from spark_hub import hub
>>> print(hub.push("out/spark-demo", "my-org/spark-demo", dry_run=True).render())  # doctest: +SKIP
>>> hub.push("out/spark-demo", "my-org/spark-demo", revision=hub.default_revision(config))  # doctest: +SKIP
>>> folder = hub.download("my-org/spark-prm")  # doctest: +SKIP
```
"""

from __future__ import annotations

from spark_hub.hub.download import download, read_remote_manifest, resolve_hub_dataset
from spark_hub.hub.push import (
    ALWAYS_IGNORED,
    CARD_NAME,
    CHECKPOINT_IGNORED,
    REPO_TYPE_FOR_KIND,
    PlannedFile,
    PushResult,
    collect_files,
    format_size,
    known_tokens,
    plan_push,
    push,
    push_checkpoint_async,
    require_token,
    tag_release,
)
from spark_hub.hub.retries import (
    DEFAULT_RETRY,
    TRANSIENT_STATUS,
    RetryPolicy,
    as_spark_error,
    is_transient,
    quiet_hub,
    retry_download,
    with_retries,
)
from spark_hub.hub.revisions import (
    DEFAULT_REVISION,
    check_revision,
    checkpoint_revision,
    default_revision,
    sanitize_revision,
)

__all__ = [
    "ALWAYS_IGNORED",
    "CARD_NAME",
    "CHECKPOINT_IGNORED",
    "DEFAULT_RETRY",
    "DEFAULT_REVISION",
    "PlannedFile",
    "PushResult",
    "REPO_TYPE_FOR_KIND",
    "RetryPolicy",
    "TRANSIENT_STATUS",
    "as_spark_error",
    "check_revision",
    "checkpoint_revision",
    "collect_files",
    "default_revision",
    "download",
    "format_size",
    "is_transient",
    "known_tokens",
    "plan_push",
    "push",
    "push_checkpoint_async",
    "quiet_hub",
    "read_remote_manifest",
    "require_token",
    "resolve_hub_dataset",
    "retry_download",
    "sanitize_revision",
    "tag_release",
    "with_retries",
]
