"""Scripted backends for tests that need more than replay.

- `SlowScriptedBackend` sleeps on every call (``SPARK_TEST_DELAY`` seconds) so a test can kill a build
  mid-run, and, when ``SPARK_TEST_GATE`` names a file, touches ``GATE.waiting`` and blocks until the
  gate file exists: a test holds a build inside its first model call for as long as it needs.
- `SurrogateScriptedBackend` appends a lone UTF-16 surrogate (half an emoji, as some
  OpenAI-compatible servers send) to every completion.
- `RecordingScriptedBackend` keeps every request it receives in ``RecordingScriptedBackend.received``.
"""

import dataclasses
import os
import time
from pathlib import Path

from spark_hub.backends.scripted import ScriptedBackend


class SlowScriptedBackend(ScriptedBackend):
    def generate(self, requests):
        gate = os.environ.get("SPARK_TEST_GATE")
        if gate:
            Path(gate + ".waiting").touch()
            deadline = time.monotonic() + 120
            while not Path(gate).exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        time.sleep(float(os.environ.get("SPARK_TEST_DELAY", "0.3")))
        return super().generate(requests)


HALF_EMOJI = "\ud83d"


class SurrogateScriptedBackend(ScriptedBackend):
    def generate(self, requests):
        return [[dataclasses.replace(c, text=c.text + HALF_EMOJI) for c in out]
                for out in super().generate(requests)]


class RecordingScriptedBackend(ScriptedBackend):
    received: list = []

    def generate(self, requests):
        RecordingScriptedBackend.received.extend(requests)
        return super().generate(requests)
