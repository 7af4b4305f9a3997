"""Config files: YAML read for vdistill, and composed from parts.

A config may be the sum of small parts (``configs/role``, ``configs/family``, ``configs/data``)::

    # configs/tiny/student_hrnn.yaml
    compose: [../role/serial.yaml, ../family/hrnn-tiny.yaml, ../data/synthetic.yaml]
    model: {init_args: {sampler: {init_args: {k: 6}}}}

The parts (paths relative to the file) are merged in order, then the file's other keys on top: mappings merge key
by key, anything else replaces, and a mapping naming another ``class_path`` replaces the old one whole (as
LightningCLI's ``-c a.yaml -c b.yaml`` stacks configs). ``vdistill`` commands and experiment grids read composed
and plain configs alike.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import reduce
from pathlib import Path
from typing import Any

import yaml

from lightning_distill.errors import ConfigError

COMPOSE = "compose"
_CONFIG_FLAGS = ("-c", "--config")


def deep_merge(base: Any, override: Any) -> Any:
    """``override`` merged into ``base`` (neither is changed): mappings merge key by key, anything else replaces.

    A mapping that names a different ``class_path`` replaces the base's entirely, since the old class's
    ``init_args`` would not fit the new class.
    """
    if not isinstance(base, dict) or not isinstance(override, dict):
        return copy.deepcopy(override)
    if "class_path" in override and override["class_path"] != base.get("class_path"):
        return copy.deepcopy(override)
    merged = copy.deepcopy(base)
    for key, value in override.items():
        merged[key] = deep_merge(base[key], value) if key in base else copy.deepcopy(value)
    return merged


def load_config(path: str | Path) -> dict[str, Any]:
    """The config at ``path``, its ``compose`` parts merged in (recursively); ``ConfigError`` naming the file."""
    path = Path(path)
    config = _read_mapping(path)
    parts = config.pop(COMPOSE, [])
    if not isinstance(parts, list):
        raise ConfigError(f"{path}: `{COMPOSE}` must list config files, e.g. [../role/serial.yaml, ...]")
    return reduce(deep_merge, [*(load_config(path.parent / part) for part in parts), config], {})


def expand_composed(argv: Sequence[str]) -> list[str]:
    """``argv`` with every ``--config FILE`` whose file composes parts replaced by the merged config (as a YAML
    string, which LightningCLI's ``--config`` reads like a file); other arguments unchanged."""
    expanded: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        flag, given, value = arg.partition("=")
        if flag in _CONFIG_FLAGS and not given and args:
            value = args.pop(0)
        if flag in _CONFIG_FLAGS and value and _composes(Path(value)):
            expanded += [flag, yaml.safe_dump(load_config(value), sort_keys=False)]
        else:
            expanded += [arg] if given or flag not in _CONFIG_FLAGS else [flag, value]
    return expanded


def dump_yaml(config: dict[str, Any]) -> str:
    """The YAML text a config is saved as (key order kept, so a saved config reads like its parts)."""
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def _composes(path: Path) -> bool:
    return path.suffix in (".yaml", ".yml") and path.is_file() and COMPOSE in _read_mapping(path)


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read config {path} ({type(error).__name__}): check the path and its YAML") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config {path} is not a mapping of config sections: give a `vdistill fit` config")
    return loaded
