"""A backend that replays canned completions from a JSONL file (tests, demos, dry runs).

Each line of the script is a rule::

    {"contains": ["Teacher Verification", "bakery"], "completions": ["## Step 1: ...", "..."]}

A request is answered by the first rule whose ``contains`` strings all occur in the request's
messages (a rule without ``contains`` matches everything). Completion j of a request with n
samples is ``completions[j % len(completions)]``. An optional ``"finish_reason"`` applies to all
of a rule's completions. A request no rule matches is a `SparkHubError` naming the script.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spark_hub.backends.base import BackendConfig, Completion, GenerationRequest
from spark_hub.errors import SparkHubError
from spark_hub.io import sha256_file


def _load_rules(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise SparkHubError(f"scripted backend file not found: {path}", hint="--set generator.model=FILE.jsonl")
    rules = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rule = json.loads(line)
        except json.JSONDecodeError as e:
            raise SparkHubError(f"invalid JSON ({e.msg})", where=f"{path}:{lineno}") from e
        completions = rule.get("completions") if isinstance(rule, dict) else None
        if not isinstance(completions, list) or not completions or not all(isinstance(c, str) for c in completions):
            raise SparkHubError("field 'completions' must be a non-empty list of strings", where=f"{path}:{lineno}")
        contains = rule.get("contains", [])
        if isinstance(contains, str):
            contains = [contains]
        rules.append({
            "contains": contains,
            "completions": completions,
            "tokens": [len(c.split()) for c in completions],  # whitespace tokens, a stand-in count
            "finish_reason": rule.get("finish_reason", "stop"),
        })
    if not rules:
        raise SparkHubError("scripted backend file has no rules", where=str(path))
    return rules


class ScriptedBackend:
    """Replays canned completions; `model` is the path of the JSONL script."""

    def __init__(self, config: BackendConfig):
        self.path = Path(config.model)
        self.rules = _load_rules(self.path)
        self.model_id = f"scripted:{self.path.name}"
        self._hash = sha256_file(self.path)
        self.calls = 0

    def fingerprint(self) -> str:
        return f"scripted-sha256:{self._hash}"

    def describe(self) -> dict[str, Any]:
        return {"id": self.model_id, "backend": "scripted", "revision": None, "file_hash": self._hash,
                "fingerprint": self.fingerprint()}

    def _match(self, request: GenerationRequest) -> dict[str, Any]:
        text = "\n".join(content for _, content in request.messages)
        for rule in self.rules:
            if all(s in text for s in rule["contains"]):
                return rule
        raise SparkHubError(
            f"no rule in {self.path} matches a request (first 80 chars: {text[:80]!r})",
            hint="add a rule without 'contains' as a fallback",
        )

    def generate(self, requests: list[GenerationRequest]) -> list[list[Completion]]:
        self.calls += 1
        out = []
        for request in requests:
            rule = self._match(request)
            texts, tokens = rule["completions"], rule["tokens"]
            out.append([
                Completion(
                    text=texts[j % len(texts)],
                    finish_reason=rule["finish_reason"],
                    completion_tokens=tokens[j % len(texts)],
                )
                for j in range(request.n)
            ])
        return out

    def count_tokens(self, request: GenerationRequest) -> int | None:
        return sum(len(content.split()) for _, content in request.messages)

    def close(self) -> None:
        pass
