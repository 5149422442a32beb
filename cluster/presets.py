"""The presets and deployment files duet ships, found in a checkout or an installed wheel.

They live in the ``deploy`` package (``deploy/configs/*.yaml``, ``deploy/runtime_env.yaml``),
which the wheel carries as package data, so ``duet`` run from any folder after
``pip install`` finds its default preset and every named one. ``--config`` takes a file, a
preset's name (``qwen2.5-math-7b-g2``) or the path the README uses
(``deploy/configs/qwen2.5-math-7b-g2.yaml``), which outside a checkout means the shipped copy.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import List

from cluster.contract.config import ConfigError


def deploy_dir() -> Path:
    """The folder of the ``deploy`` package (found without importing anything from it)."""
    spec = importlib.util.find_spec("deploy")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("duet's 'deploy' package is not installed: reinstall duet "
                                "(pip install duet-rl, or pip install -e . in a checkout)")
    return Path(list(spec.submodule_search_locations)[0])


def preset_dir() -> Path:
    return deploy_dir() / "configs"


def default_preset() -> Path:
    """The embedded default (`make demo`, and any command given no --config)."""
    return preset_dir() / "tiny-cpu.yaml"


def runtime_env() -> Path:
    """The runtime env `duet submit` hands `ray job submit`."""
    return deploy_dir() / "runtime_env.yaml"


def preset_names() -> List[str]:
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def resolve_config(source: str) -> Path:
    """The config file ``--config source`` means.

    An existing file wins; otherwise a shipped preset by name, with or without ``.yaml``, or by
    a path ending in ``deploy/configs/<name>.yaml``.

    Raises:
        ConfigError: neither exists; the message lists the shipped presets.
    """
    path = Path(source)
    if path.is_file():
        return path
    name = path.name[:-len(".yaml")] if path.name.endswith(".yaml") else path.name
    shipped = preset_dir() / f"{name}.yaml"
    by_name = path.parent == Path(".") or path.parts[-3:-1] == ("deploy", "configs")
    if by_name and shipped.is_file():
        return shipped
    raise ConfigError("", "config file not found", source=str(source),
                      hint="give a YAML file or a shipped preset: " + ", ".join(preset_names()))
