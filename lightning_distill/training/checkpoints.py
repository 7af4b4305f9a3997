"""Safe checkpoint loading, and checks before Lightning loads one, so a bad checkpoint is one actionable line.

Every checkpoint vdistill reads (``--ckpt_path``, a student's ``teacher_checkpoint``, ``init_from``) is unpickled
with torch's restricted unpickler (``weights_only=True``): tensors, numbers, strings and containers only.
Checkpoints are shared and downloaded, and a full unpickler runs whatever a file asks it to; vdistill's own
checkpoints hold nothing else (LightningCLI records hyper-parameters as plain config dicts).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from lightning_distill.errors import ConfigError

M = TypeVar("M")

# torch names the first object its restricted unpickler refused as "Unsupported global: GLOBAL <name>".
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def read_checkpoint(path: str | Path, *, weights: bool = True) -> dict[str, Any]:
    """Load a Lightning checkpoint on the CPU with torch's restricted unpickler.

    Args:
        path: the checkpoint file.
        weights: read the tensors' data; False maps the file instead (nothing is read until used), which is
            enough to check a checkpoint before Lightning loads it.

    Raises:
        ConfigError: the file is missing, unreadable, not a Lightning checkpoint, or holds objects other than
            tensors and plain data (a pickle that would run code when loaded), naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist: pass a .ckpt written by `vdistill fit`")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=not weights)
    except pickle.UnpicklingError as error:
        refused = _REFUSED_GLOBAL.search(str(error))
        if refused is None:
            raise ConfigError(f"checkpoint {path} cannot be read ({_first_line(error)}): it is corrupt") from None
        raise ConfigError(
            f"checkpoint {path} holds Python objects, not only weights and settings (it names {refused.group(1)}), "
            "so loading it could run code: refused; use a checkpoint written by `vdistill fit`"
        ) from None
    except Exception as error:  # torch raises many types for a damaged file; all mean the same to a user
        raise ConfigError(
            f"checkpoint {path} cannot be read ({_first_line(error)}): it is corrupt or not a checkpoint"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"checkpoint {path} has no state_dict: it is not a Lightning checkpoint")
    return checkpoint


def load_module(module_class: type[M], path: str | Path) -> M:
    """``module_class.load_from_checkpoint(path)`` on the CPU, after ``read_checkpoint``'s checks, never unpickling
    anything but weights and plain data."""
    read_checkpoint(path, weights=False)
    return module_class.load_from_checkpoint(path, map_location="cpu", weights_only=True)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def checkpoint_class_path(checkpoint: dict[str, Any]) -> str | None:
    """The LightningModule class a checkpoint was trained as, when LightningCLI recorded it."""
    hparams = checkpoint.get("hyper_parameters") or {}
    return hparams.get("_class_path")


def check_checkpoint(path: str | Path, model_config: Any | None = None) -> None:
    """Fail with one line if ``path`` is not a safe, readable checkpoint of the module and encoder classes the
    config builds.

    LightningCLI rebuilds the model from the checkpoint's own hyper-parameters, so without this check an H-RNN
    checkpoint tested with a NetVLAD config would silently test the H-RNN.

    Args:
        path: the ``--ckpt_path`` given.
        model_config: the parsed ``model`` section (with ``class_path`` and ``init_args``), if any.
    """
    checkpoint = read_checkpoint(path, weights=False)
    if model_config is None:
        return
    hparams = checkpoint.get("hyper_parameters") or {}
    init_args = getattr(model_config, "init_args", None)
    pairs = {
        "module": (checkpoint_class_path(checkpoint), getattr(model_config, "class_path", None)),
        "encoder": (_class_path(hparams.get("encoder")), _class_path(getattr(init_args, "encoder", None))),
    }
    for part, (stored, configured) in pairs.items():
        if stored and configured and stored != configured:
            noun = "" if part == "module" else f" {part}"
            raise ConfigError(
                f"checkpoint {path} holds a {_short(stored)}{noun} but the config builds a {_short(configured)}"
                f"{noun}: use the config the checkpoint was trained with"
            )


def _class_path(section: Any) -> str | None:
    """The ``class_path`` of a config section, whether a dict (checkpoint) or a jsonargparse Namespace (config)."""
    if isinstance(section, Mapping):
        return section.get("class_path")
    return getattr(section, "class_path", None)


def _short(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1]


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
