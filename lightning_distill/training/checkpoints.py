"""Checks on a checkpoint before Lightning loads it, so a bad ``--ckpt_path`` is one actionable line."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_distill.errors import ConfigError


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint on the CPU, raising ``ConfigError`` if it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist: pass a .ckpt written by `vdistill fit`")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a damaged file; all mean the same to a user
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"checkpoint {path} cannot be read ({reason}): it is corrupt or not a checkpoint") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"checkpoint {path} has no state_dict: it is not a Lightning checkpoint")
    return checkpoint


def checkpoint_class_path(checkpoint: dict[str, Any]) -> str | None:
    """The LightningModule class a checkpoint was trained as, when LightningCLI recorded it."""
    hparams = checkpoint.get("hyper_parameters") or {}
    return hparams.get("_class_path")


def check_checkpoint(path: str | Path, model_config: Any | None = None) -> None:
    """Fail with one line if ``path`` is not a readable checkpoint of the module class the config builds.

    Args:
        path: the ``--ckpt_path`` given.
        model_config: the parsed ``model`` section (with ``class_path``), if any.
    """
    checkpoint = read_checkpoint(path)
    stored = checkpoint_class_path(checkpoint)
    configured = getattr(model_config, "class_path", None) if model_config is not None else None
    if stored and configured and stored != configured:
        raise ConfigError(
            f"checkpoint {path} holds a {stored.rsplit('.', 1)[-1]} but the config builds a "
            f"{configured.rsplit('.', 1)[-1]}: use the config the checkpoint was trained with"
        )


def check_state_fits(stored: Mapping[str, Tensor], expected: Mapping[str, Tensor], *, source: str) -> None:
    """Fail with one line naming the first parameter a checkpoint lacks, adds, or holds in another shape.

    Lightning would raise the same problem as a multi-line ``load_state_dict`` traceback; the usual cause is a
    checkpoint trained on data with another class count, or with other encoder sizes.

    Args:
        stored: the checkpoint's state dict.
        expected: the state dict of the module about to load it.
        source: names the checkpoint in the message.
    """
    advice = "use the config and data it was trained with (class count, encoder sizes)"
    for key, value in expected.items():
        if key not in stored:
            raise ConfigError(f"{source} does not fit this model: it has no {key}; {advice}")
        if tuple(stored[key].shape) != tuple(value.shape):
            raise ConfigError(
                f"{source} does not fit this model: {key} is {list(stored[key].shape)} there but "
                f"{list(value.shape)} here; {advice}"
            )
    unexpected = sorted(set(stored) - set(expected))
    if unexpected:
        raise ConfigError(f"{source} does not fit this model: it has {unexpected[0]}, unknown here; {advice}")
