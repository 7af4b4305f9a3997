"""A Trainer with two more verbs, ``profile`` and ``export``, so they take the same config as ``vdistill fit``."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningDataModule, Trainer
from torch import nn

from lightning_distill.cli.summary import print_summary
from lightning_distill.data.datamodule import YT8MDataModule
from lightning_distill.data.samplers import UniformSampler
from lightning_distill.data.yt8m import MAX_FRAMES, RGB_DIM
from lightning_distill.deployment.export import export_network, load_exported, metadata_for
from lightning_distill.deployment.network import RawFramesClassifier
from lightning_distill.errors import ConfigError
from lightning_distill.evaluation.flops import CostProfile, profile_model
from lightning_distill.evaluation.tables import print_cost
from lightning_distill.training.checkpoints import read_checkpoint
from lightning_distill.training.module import InferenceNetwork, VideoClassifierModule, check_blocks, describe


class VDistillTrainer(Trainer):
    """``lightning.pytorch.Trainer`` plus ``profile`` (the inference cost of the configured model) and ``export``
    (its predicting network as ONNX or TorchScript)."""

    def profile(
        self,
        model: VideoClassifierModule,
        datamodule: LightningDataModule | None = None,
        frames: int | None = None,
        batch_size: int = 32,
        output: str | None = None,
    ) -> CostProfile:
        """Report parameters, multiply-accumulates and FLOPs per video, and measured inference videos/s.

        Args:
            model: the configured module; its inference network is profiled (a student at its k frames).
            datamodule: supplies ``max_frames`` for models that see every frame.
            frames: frames per video to profile at; default: the sampler's k, else the data's max_frames.
            batch_size: videos per timed forward pass.
            output: also write the profile as JSON here.
        """
        network = fixed_network(model)
        num_frames = frames or network.frames_per_video(getattr(datamodule, "max_frames", MAX_FRAMES))
        cost = profile_model(
            network.encoder,
            network.head,
            num_frames=num_frames,
            batch_size=batch_size,
            device=self.strategy.root_device,
        )
        summary = cost.to_dict()
        print_cost(cost, f"{type(model).__name__} ({describe(network.encoder)}, {model.head.num_classes:,} classes)")
        if output:
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            Path(output).write_text(json.dumps(summary, indent=2) + "\n")
        if self.logger is not None:
            self.logger.log_hyperparams({f"cost/{k}": v for k, v in summary.items()})
        return cost

    def export(
        self,
        model: VideoClassifierModule,
        datamodule: YT8MDataModule,
        ckpt_path: str | None = None,
        output: str = "model.onnx",
        format: str = "onnx",  # noqa: A002 - the CLI flag's name
        frames: int | None = None,
        tolerance: float = 1e-4,
    ) -> ExportReport:
        """Write the model's predicting network, from raw uint8 frames to probabilities, and check it.

        The exported file is run (onnxruntime, or TorchScript) on a real batch of the config's data and compared
        with the Lightning module on the same frames; the largest difference is printed, and the export fails
        above ``tolerance``.

        Args:
            model: the configured module; its predicting network is exported (a Parallel module's student).
            datamodule: the data; one batch of it checks the export.
            ckpt_path: the trained weights (a checkpoint of this config); without it the weights are untrained.
            output: the file to write.
            format: ``onnx`` or ``torchscript``.
            frames: T for a model that sees every frame (a teacher): the graph takes exactly T frames, chosen
                evenly over each video; default: the data's max_frames. A k-frame model always takes its k.
            tolerance: the largest difference allowed between the file's and the module's probabilities.
        """
        if ckpt_path is not None:
            checkpoint = read_checkpoint(ckpt_path)
            model.on_load_checkpoint(checkpoint)
            model.load_state_dict(checkpoint["state_dict"])
        inference = fixed_network(model)
        sampler = inference.sampler
        if sampler.k is None:
            sampler = UniformSampler(frames or datamodule.max_frames)
        elif getattr(sampler, "over_padded", False):
            raise ConfigError(
                "an exported graph takes k real frames per video, but UniformSampler(over_padded=True) leaves "
                "padding in short videos: export a model trained with over_padded: false"
            )
        # The encoder as its module uses it (a teacher's H-RNN keeps its all-frames blocks), which must tile T.
        inference.encoder.for_frames(inference.sampler.k)
        check_blocks(inference.encoder, sampler, "exported model", adapt=False)
        network = RawFramesClassifier(copy.deepcopy(inference.encoder), copy.deepcopy(inference.head),
                                      datamodule.normalization)
        metadata = metadata_for(type(model).__name__, network, sampler.k, sampler, datamodule.max_frames)
        path = export_network(network, output, fmt=format, metadata=metadata)
        difference = _export_difference(path, inference.encoder, inference.head, datamodule, sampler)
        report = ExportReport(path, format, sampler.k, difference, trained=ckpt_path is not None)
        print_summary("export", report.rows())
        if difference > tolerance:
            path.unlink()
            raise ConfigError(
                f"the exported model differs from the Lightning module by {difference:.2e} (> {tolerance:g}) on a "
                "real batch: not written; please report this with the config"
            )
        return report


def fixed_network(model: VideoClassifierModule) -> InferenceNetwork:
    """The module's inference network, for profiling or export.

    Raises:
        ConfigError: the module has none (it reads each video as far as it decides).
    """
    network = model.inference_network()
    if network is None:
        raise ConfigError(
            f"{type(model).__name__} reads each video as far as its gate says, so it has no fixed network to profile "
            "or export: profile or export its student (the init_from checkpoint) at each stage's k"
        )
    return network


@dataclass(frozen=True)
class ExportReport:
    """What ``export`` wrote: the file, its format, frames per video and the checked difference."""

    path: Path
    format: str
    frames: int
    difference: float
    trained: bool

    def rows(self) -> dict[str, str]:
        return {
            "model": str(self.path),
            "format": self.format,
            "frames per video": str(self.frames),
            "max |difference| vs Lightning": f"{self.difference:.2e} on a real batch",
            "weights": "from --ckpt_path" if self.trained else "untrained (no --ckpt_path)",
        }


def _export_difference(path: Path, encoder: nn.Module, head: nn.Module, datamodule: YT8MDataModule, sampler) -> float:
    """Largest |p_file - p_module| over one real batch read with ``sampler``: the module runs on the frames as
    training prepares them (dequantised, normalised, masked), the file on the raw uint8 frames."""
    run, _ = load_exported(path)
    batch = datamodule.first_batch({"view": sampler})
    raw = batch.views["view"].frames.numpy()
    exported = run({"rgb": raw[..., :RGB_DIM], "audio": raw[..., RGB_DIM:]})
    view = datamodule.on_after_batch_transfer(batch, 0).views["view"]
    was_training = encoder.training, head.training
    encoder.eval(), head.eval()
    try:
        with torch.no_grad():
            expected = head(encoder(view.frames, view.mask).representation).numpy()
    finally:
        encoder.train(was_training[0])
        head.train(was_training[1])
    return float(np.abs(exported - expected).max())
