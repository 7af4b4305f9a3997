"""Writing a ``RawFramesClassifier`` as ONNX or TorchScript with the metadata needed to use it, and reading it back.

Metadata (ONNX ``metadata_props``; TorchScript extra file ``vdistill.json``), all strings:
``vdistill_version``, ``module`` (the Lightning module class), ``encoder`` (class path), ``num_classes``,
``frames`` (T, frames per video the graph takes), ``sampler`` (JSON ``{"class_path", "init_args"}``: how to
choose those frames from a video), ``max_frames`` (videos count as at most this long, as in training: the
sampler spaces its frames over the first ``max_frames``), ``normalization`` (JSON, applied inside the graph), ``inputs``, ``outputs``.

ONNX is written by ``torch.onnx.export`` (the dynamo exporter; needs ``onnx`` and ``onnxscript``) with a dynamic
batch axis; TorchScript by ``torch.jit.trace``, also with any batch size.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import logging
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_distill import __version__
from lightning_distill.class_paths import class_path
from lightning_distill.data.samplers import FrameSampler
from lightning_distill.data.yt8m import AUDIO_DIM, RGB_DIM
from lightning_distill.deployment.network import RawFramesClassifier
from lightning_distill.errors import ConfigError

FORMATS = ("onnx", "torchscript")
INPUTS = {"rgb": RGB_DIM, "audio": AUDIO_DIM}
OUTPUT = "probabilities"
_EXTRA_FILE = "vdistill.json"
_INSTALL = "pip install 'vdistill[export]'"

# Runs an exported model: {"rgb": (B, T, 1024) uint8, "audio": (B, T, 128) uint8} -> (B, C) float32 probabilities.
Runner = Callable[[dict[str, np.ndarray]], np.ndarray]


def class_config(obj: Any) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of a sampler or normaliser: its constructor's arguments, read back from the
    attributes of the same names (as every vdistill sampler and normaliser keeps them)."""
    cls = type(obj)
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    names = [name for name, p in inspect.signature(cls).parameters.items() if p.kind not in variadic]
    return {"class_path": class_path(cls), "init_args": {n: getattr(obj, n) for n in names}}


def build_from_config(config: dict[str, Any]) -> Any:
    """The object ``class_config`` describes."""
    module, _, name = config["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**config.get("init_args", {}))


def metadata_for(
    module_name: str, network: RawFramesClassifier, frames: int, sampler: FrameSampler, max_frames: int
) -> dict[str, str]:
    """The metadata written with an exported network (see the module docstring)."""
    encoder = network.encoder
    return {
        "vdistill_version": __version__,
        "module": module_name,
        "encoder": class_path(type(encoder)),
        "num_classes": str(network.head.num_classes),
        "frames": str(frames),
        "sampler": json.dumps(class_config(sampler)),
        "max_frames": str(max_frames),
        "normalization": json.dumps(class_config(network.normalization)),
        "inputs": f"rgb uint8 [B, {frames}, {RGB_DIM}]; audio uint8 [B, {frames}, {AUDIO_DIM}]",
        "outputs": f"{OUTPUT} float32 [B, {network.head.num_classes}]",
    }


def export_network(network: RawFramesClassifier, path: str | Path, *, fmt: str, metadata: dict[str, str]) -> Path:
    """Write ``network`` (on the CPU, eval mode) to ``path`` as ``fmt`` with ``metadata``.

    Raises:
        ConfigError: an unknown format, or the packages an ONNX export needs are missing.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r} is unknown: use one of {', '.join(FORMATS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    network = network.cpu().eval()
    frames = int(metadata["frames"])
    example = tuple(torch.zeros(2, frames, dim, dtype=torch.uint8) for dim in INPUTS.values())
    # torch's exporters report on their own internals (deprecated helpers, LSTM weight handling, progress lines,
    # TorchScript's deprecation) in ways a user cannot act on; the result is checked numerically instead
    # (``vdistill export`` compares it with the Lightning module on a real batch).
    with torch.no_grad(), warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            _export_onnx(network, example, path, metadata)
        else:
            traced = torch.jit.trace(network, example)
            torch.jit.save(traced, str(path), _extra_files={_EXTRA_FILE: json.dumps(metadata)})
    return path


def load_exported(path: str | Path) -> tuple[Runner, dict[str, str]]:
    """A function running the exported model at ``path`` (ONNX through onnxruntime, else TorchScript), and its
    metadata. Needs neither Lightning nor vdistill's model code."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such exported model; write one with `vdistill export`")
    if path.suffix == ".onnx":
        ort = _require("onnxruntime")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        metadata = dict(session.get_modelmeta().custom_metadata_map)
        return lambda inputs: session.run([OUTPUT], inputs)[0], _checked(metadata, path)
    files = {_EXTRA_FILE: ""}
    try:
        # torch 2.13 deprecates TorchScript as a whole; the format stays because deployed C++/mobile runtimes read it.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=DeprecationWarning)
            scripted = torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    except RuntimeError as error:
        raise ConfigError(f"{path}: not an ONNX (.onnx) or TorchScript file written by `vdistill export` ({error})") from None
    metadata = json.loads(files[_EXTRA_FILE] or "{}")

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return scripted(*(torch.from_numpy(inputs[name]) for name in INPUTS)).numpy()

    return run, _checked(metadata, path)


def _export_onnx(network: RawFramesClassifier, example: tuple, path: Path, metadata: dict[str, str]) -> None:
    onnx = _require("onnx")
    _require("onnxscript")
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        network,
        example,
        str(path),
        input_names=list(INPUTS),
        output_names=[OUTPUT],
        dynamic_shapes={name: {0: batch} for name in INPUTS},
        dynamo=True,
        verbose=False,
    )
    model = onnx.load(str(path))
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's progress prints and its logged notes (e.g. about torchvision ops it skips)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def _checked(metadata: dict[str, str], path: Path) -> dict[str, str]:
    missing = {"frames", "sampler", "num_classes", "max_frames"} - metadata.keys()
    if missing:
        raise ConfigError(f"{path}: lacks vdistill's metadata ({', '.join(sorted(missing))}); export it with `vdistill export`")
    return metadata


def _require(package: str) -> Any:
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ConfigError(f"exported models need the {package} package: {_INSTALL}") from None
