"""Test configuration: offline, CPU-only, loopback Hub.

Hub-related environment variables are read when huggingface_hub / datasets are imported, so they
are set here, before anything else imports them.
"""

import os
import tempfile

_HF_HOME = tempfile.mkdtemp(prefix="spark-hub-test-hf-")
os.environ.setdefault("HF_HOME", _HF_HOME)
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("HF_HUB_OFFLINE", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch threads must not spin on a shared 2-core machine
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

import pytest  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "data")
SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))


def pytest_collection_modifyitems(config, items):
    """`gpu` tests also skip themselves when no CUDA device is present."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch is a core dependency
        has_cuda = False
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip)


@pytest.fixture
def data_dir():
    return DATA
