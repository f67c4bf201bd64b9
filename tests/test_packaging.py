"""The built wheel ships every data file of the package, and an installed wheel finds the demo's
problems (issue 8 §6.3: a wheel install could not run the demo)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "spark_hub"

DEMO_CHECK = textwrap.dedent("""
    import sys
    from pathlib import Path
    import spark_hub
    from spark_hub.config import load_build_config
    from spark_hub.inputs import load_inputs

    here = Path(spark_hub.__file__).resolve().parent
    assert here.is_relative_to(Path(sys.argv[1]).resolve()), f"imported {here}, not the installed wheel"
    config = load_build_config("demo-cpu", ["limit=null"])
    assert Path(config.problems).resolve().is_relative_to(here), config.problems
    print(len(load_inputs(config).problems))
""")


def _data_files(folder: Path) -> set[str]:
    return {p.relative_to(folder.parent).as_posix() for p in folder.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the source tree (the shared checkout gets no build/ folder)."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(PACKAGE, src / "spark_hub", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", str(work / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [path] = (work / "dist").glob("spark_hub-*.whl")
    return path


def test_wheel_ships_every_data_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = _data_files(PACKAGE)
    assert {"spark_hub/pipelines/data/gsm8k-demo.jsonl", "spark_hub/pipelines/data/README.md",
            "spark_hub/pipelines/demo-cpu.yaml"} <= expected
    assert sorted(expected - names) == []
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "spark-hub = spark_hub.cli:main" in entry_points


def test_unpacked_wheel_reads_the_demo_problems(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-c", DEMO_CHECK, str(site)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "8"


@pytest.mark.slow
def test_wheel_in_a_clean_venv_runs(wheel, tmp_path):
    """pip-install the wheel into a new virtual environment (dependencies borrowed from this one,
    offline) and run the CLI and the demo's input loading from there."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        text=True).strip())
    deps = Path(next(p for p in sys.path if p.endswith("site-packages")))
    (site / "_spark_hub_test_deps.pth").write_text(f"{deps}\n")
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   timeout=300)
    result = subprocess.run([str(python), "-c", DEMO_CHECK, str(site)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "8"
    help_text = subprocess.run([str(venv / "bin" / "spark-hub"), "--help"], cwd=tmp_path, capture_output=True,
                               text=True, timeout=300)
    assert help_text.returncode == 0 and "build-dataset" in help_text.stdout, help_text.stderr
