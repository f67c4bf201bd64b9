"""A scripted backend that sleeps on every call: lets tests kill a build mid-run."""

import os
import time

from spark_hub.backends.scripted import ScriptedBackend


class SlowScriptedBackend(ScriptedBackend):
    def generate(self, requests):
        time.sleep(float(os.environ.get("SPARK_TEST_DELAY", "0.3")))
        return super().generate(requests)
