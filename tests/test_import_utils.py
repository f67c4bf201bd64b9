"""spark_hub.import_utils: optional dependencies checked without importing, errors naming the extra,
one warning outside the tested version window."""

from __future__ import annotations

import logging
import sys

import pytest

from spark_hub import import_utils
from spark_hub.errors import MissingExtraError, SparkHubError
from spark_hub.import_utils import Dependency, is_available, require


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A package `spark_fake_opt` (with a submodule) whose import leaves a trace in sys.modules."""
    pkg = tmp_path / "spark_fake_opt"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("VALUE = 1\n")
    (pkg / "sub.py").write_text("VALUE = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(import_utils.OPTIONAL, "spark_fake_opt",
                        Dependency("fake", ("spark-fake-opt",), ("1.0", "2.0")))
    yield "spark_fake_opt"
    for name in ("spark_fake_opt", "spark_fake_opt.sub"):
        sys.modules.pop(name, None)


def test_is_available_does_not_import(fake_package):
    assert is_available(fake_package) and is_available(f"{fake_package}.sub")
    assert fake_package not in sys.modules
    assert not is_available("spark_surely_missing_pkg")
    assert not is_available("spark_surely_missing_pkg.sub")


def test_require_imports_and_returns_the_module(fake_package):
    assert require(f"{fake_package}.sub", purpose="a test").VALUE == 2


def test_require_names_the_extra_and_the_purpose(monkeypatch):
    monkeypatch.setitem(import_utils.OPTIONAL, "spark_surely_missing_pkg",
                        Dependency("fake", ("spark-surely-missing-pkg",)))
    with pytest.raises(MissingExtraError) as info:
        require("spark_surely_missing_pkg", purpose="the fake backend")
    message = str(info.value)
    assert message == ("the fake backend needs the `spark_surely_missing_pkg` package, which is not installed "
                       "(pip install 'spark-hub[fake]')")
    assert isinstance(info.value, ImportError) and isinstance(info.value, SparkHubError)
    # an explicit extra wins; a package without an extra names the distribution
    with pytest.raises(MissingExtraError, match=r"spark-hub\[other\]"):
        require("spark_surely_missing_pkg", extra="other")
    with pytest.raises(MissingExtraError, match=r"\(pip install spark_unlisted_pkg\)$"):
        require("spark_unlisted_pkg", purpose="x")


def test_known_extras_match_pyproject():
    import tomllib
    from pathlib import Path

    extras = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name, dep in import_utils.OPTIONAL.items():
        assert dep.extra is None or dep.extra in extras, f"{name}: extra {dep.extra!r} is not in pyproject.toml"
    assert import_utils.install_hint("vllm") == "pip install 'spark-hub[vllm]'"


def test_version_outside_the_tested_window_warns_once(fake_package, monkeypatch, caplog):
    versions = {"spark-fake-opt": "2.1.0"}
    monkeypatch.setattr(import_utils.importlib.metadata, "version",
                        lambda dist: versions[dist] if dist in versions else (_ for _ in ()).throw(
                            import_utils.importlib.metadata.PackageNotFoundError(dist)))
    monkeypatch.setattr(import_utils, "_warned", set())
    assert import_utils.version(fake_package) == "2.1.0"
    assert import_utils.in_tested_window(fake_package) is False
    assert import_utils.in_tested_window(fake_package, "1.5.0+cpu") is True
    assert import_utils.in_tested_window(fake_package, "0.9") is False
    with caplog.at_level(logging.WARNING, logger="spark_hub.import_utils"):
        require(fake_package)
        require(fake_package)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "spark_fake_opt 2.1.0" in warnings[0] and ">= 1.0 and < 2.0" in warnings[0]
    caplog.clear()
    versions["spark-fake-opt"] = "1.2"
    monkeypatch.setattr(import_utils, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="spark_hub.import_utils"):
        require(fake_package)
    assert not caplog.records


def test_errors_module_keeps_its_exports():
    from spark_hub import errors
    from spark_hub.errors import require as old_require

    assert old_require is require and errors.MissingExtraError is import_utils.MissingExtraError
    with pytest.raises(MissingExtraError, match=r"the ray backend needs .*spark-hub\[ray\]"):
        old_require("spark_surely_missing_pkg", "ray", "the ray backend")
    with pytest.raises(AttributeError):
        errors.no_such_name  # noqa: B018
