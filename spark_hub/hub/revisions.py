"""Hub revisions: branch names for pushes, derived names for runs and checkpoints.

Every push goes to a branch (`check_revision`); ``--revision auto`` derives one from the run's
config (`default_revision`), training checkpoints go to ``step-NNNNNN`` (`checkpoint_revision`).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from spark_hub.errors import SparkHubError

DEFAULT_REVISION = "main"
_REF_INVALID = re.compile(r"[^A-Za-z0-9._/-]+")


def sanitize_revision(name: str) -> str:
    """Turn ``name`` into a valid branch name (git check-ref-format rules, Hub-safe characters).

    >>> sanitize_revision("Step Level / Qwen3:32B..lock")
    'step-level/qwen3-32b-lock'
    """
    ref = _REF_INVALID.sub("-", name.strip().lower())
    ref = re.sub(r"\.{2,}", ".", ref)
    ref = re.sub(r"/{2,}", "/", ref)
    ref = re.sub(r"-{2,}", "-", ref)
    parts = [p.strip(".-") for p in ref.split("/")]
    parts = [p[:-5] + "-lock" if p.endswith(".lock") else p for p in parts if p]
    ref = "/".join(parts)
    if not ref or ref == "head" or re.fullmatch(r"[0-9a-f]{40}", ref):
        raise SparkHubError(f"cannot derive a branch name from {name!r}", hint="pass --revision NAME")
    return ref[:200]


def check_revision(revision: str) -> str:
    """Return ``revision`` if it is a usable branch name, else raise `SparkHubError` with a fix."""
    if (
        not revision
        or revision.startswith(("refs/", "/", "-", "."))
        or revision.endswith(("/", ".", ".lock"))
        or ".." in revision
        or "//" in revision
        or _REF_INVALID.search(revision)
        or re.fullmatch(r"[0-9a-f]{40}", revision)
    ):
        raise SparkHubError(
            f"invalid revision {revision!r}: pushes go to a branch name",
            hint=f"use letters, digits and . _ - /, e.g. {sanitize_revision(revision or 'my-run')!r}"
            if (revision or "").strip(" ./-") else "e.g. --revision my-run",
        )
    return revision


def default_revision(config: dict[str, Any]) -> str:
    """A branch name that identifies a run by its config, like search-and-learn's revisions.

    The name is ``{aggregation}-{verifier}-m{M}-n{N}-{hash8}``: the aggregation method, the short
    name of the verifier model, solutions per problem, verifications per solution, and the first 8
    hex digits of the sha256 of the whole config (canonical JSON), so two different configs never
    share a branch. Values are read by `spark_hub.cards.method_summary` (``aggregation.method``,
    ``verifier.model``, ``generator.n``, ``verifier.n``, or flat keys); missing parts are left out.

    >>> default_revision({"aggregation": {"method": "step_consistency"}, "generator": {"n": 8},
    ...                   "verifier": {"model": "Qwen/Qwen3-32B", "n": 16}})[:33]
    'step-consistency-qwen3-32b-m8-n16'
    """
    from spark_hub.cards import method_summary

    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:8]
    method = method_summary(config)
    parts = []
    if method["aggregation"]:
        parts.append(str(method["aggregation"]).replace("_", "-"))
    if method["verifier"]:
        short = re.split(r"[/\\]", str(method["verifier"]).rstrip("/\\"))[-1]
        parts.append(re.sub(r"\.(gguf|safetensors|bin|jsonl)$", "", short))
    if method["m"] is not None:
        parts.append(f"m{method['m']}")
    if method["n"] is not None:
        parts.append(f"n{method['n']}")
    parts.append(digest)
    return sanitize_revision("-".join(parts))


def checkpoint_revision(step: int) -> str:
    """Branch of a training checkpoint: ``step-000010`` for step 10."""
    return f"step-{int(step):06d}"


__all__ = ["DEFAULT_REVISION", "check_revision", "checkpoint_revision", "default_revision", "sanitize_revision"]
