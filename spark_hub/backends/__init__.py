"""Model backends behind one protocol (see `spark_hub.backends.base`)."""

from spark_hub.backends.base import Backend, Completion, GenerationRequest, load_backend

__all__ = ["Backend", "Completion", "GenerationRequest", "load_backend"]
