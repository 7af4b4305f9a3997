"""The paper's Figure 3: t-SNE of teacher and student representations of the same test videos.

The teacher and a distilled student are loaded from their cells' checkpoints and run on the test videos of
the 5 most frequent classes; both sets of representations are embedded together, so a student that learnt
to match its teacher (L_rep) puts each video's light dot on its dark one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from jsonargparse import ArgumentParser
from sklearn.manifold import TSNE

from lightning_distill.data.batch import FrameView
from lightning_distill.data.datamodule import YT8MDataModule
from lightning_distill.data.frame_store import FrameStore
from lightning_distill.data.samplers import FrameSampler
from lightning_distill.config_files import load_config
from lightning_distill.experiment.grid import Cell, Grid, representation_terms
from lightning_distill.experiment.layout import ExperimentLayout
from lightning_distill.experiment.plots import plot_tsne
from lightning_distill.models.encoder import VideoEncoder
from lightning_distill.training.checkpoints import load_module
from lightning_distill.training.distill import DistillModule
from lightning_distill.training.student import StudentModule
from lightning_distill.training.teacher import TeacherModule

TOP_CLASSES = 5
# Labels are counted this many videos at a time, so a 1.4M-video test store never becomes one dense matrix.
_LABEL_CHUNK = 8192


def pick_student(layout: ExperimentLayout, grid: Grid, cells: list[Cell]) -> Cell | None:
    """The finished student to draw: first seed, largest k, serial before parallel, one trained with a
    representation term if there is one (that is what the figure checks), of its own family's teacher alone
    before one of an ensemble, Uniform frames before frames chosen per video (students of another family's teachers
    alone are left out)."""
    done = [
        c
        for c in cells
        if c.variant and c.seed == grid.seeds[0] and layout.done(c.name).is_file()
        and (c.role == "parallel" or c.teacher is not None)
    ]
    done.sort(
        key=lambda c: (
            -c.k,
            c.role != "serial",
            not set(c.variant.losses) & representation_terms(),
            bool(c.ensemble),
            bool(c.scorer),
        )
    )
    return done[0] if done else None


def plot_representations(layout: ExperimentLayout, grid: Grid, cells: list[Cell]) -> Path | None:
    """Write ``<output>/tsne.png`` for the student ``pick_student`` chooses; None if no student has finished or
    the test split has too few labelled videos."""
    student_cell = pick_student(layout, grid, cells)
    if student_cell is None:
        return None
    teacher_encoder, teacher_sampler, student_encoder, student_sampler = load_encoders(layout, student_cell)
    data = load_datamodule(layout.config(student_cell.name))
    data.views = {"teacher": teacher_sampler, "student": student_sampler}
    data.prepare_data()
    data.setup("test")
    top = top_classes(FrameStore(data.store_path("test")))
    teacher_rep, student_rep, classes = [], [], []
    with torch.no_grad():
        for batch in data.test_dataloader():
            batch = data.on_after_batch_transfer(batch, 0)
            chosen = class_of(batch.labels, top)
            keep = chosen >= 0
            teacher_rep.append(_represent(teacher_encoder, batch.views["teacher"])[keep])
            student_rep.append(_represent(student_encoder, batch.views["student"])[keep])
            classes.append(chosen[keep])
            if sum(len(c) for c in classes) >= grid.tsne_videos:
                break
    count = min(grid.tsne_videos, sum(len(c) for c in classes))
    if count < 2:  # t-SNE needs at least two videos to place anything
        return None
    teacher_points = np.concatenate(teacher_rep)[:count]
    student_points = np.concatenate(student_rep)[:count]
    embedded = embed(np.concatenate([teacher_points, student_points]))
    title = f"{student_cell.method}, k={student_cell.k}: dark = teacher, light = student"
    names = [f"class {c}" for c in top]
    path = layout.root / "tsne.png"
    return plot_tsne(embedded[:count], embedded[count:], np.concatenate(classes)[:count], names, title, path)


def load_encoders(
    layout: ExperimentLayout, student: Cell
) -> tuple[VideoEncoder, FrameSampler, VideoEncoder, FrameSampler]:
    """(teacher encoder, its sampler, student encoder, its sampler), in eval mode, from the cells' checkpoints.

    A serial student's teacher is its teacher cell's model; a parallel cell holds both encoders.
    """
    path = layout.checkpoint(student.name)
    if student.role == "parallel":
        module = load_module(DistillModule, path).eval()
        return module.teacher_encoder, module.teacher_sampler, module.encoder, module.sampler
    teacher = load_module(TeacherModule, layout.checkpoint(student.teacher))
    module = load_module(StudentModule, path)
    return teacher.eval().encoder, teacher.sampler, module.eval().encoder, module.sampler


def load_datamodule(config: Path) -> YT8MDataModule:
    """The data module a cell's config builds (so frames are normalised as the cell's model saw them)."""
    parser = ArgumentParser()
    parser.add_class_arguments(YT8MDataModule, "data")
    # Read in this process: the figure embeds a few hundred videos, not worth starting loader workers.
    parsed = parser.parse_object({"data": {**load_config(config).get("data", {}), "num_workers": 0}})
    return parser.instantiate_classes(parsed).data


def top_classes(store: FrameStore) -> list[int]:
    """The ``TOP_CLASSES`` most frequent classes of a store, most frequent first (classes never seen left out)."""
    counts = np.zeros(store.num_classes)
    for start in range(0, len(store), _LABEL_CHUNK):
        counts += store.multi_hot(np.arange(start, min(start + _LABEL_CHUNK, len(store)))).sum(axis=0)
    return [int(c) for c in np.argsort(-counts, kind="stable")[:TOP_CLASSES] if counts[c] > 0]


def class_of(labels: torch.Tensor, top: list[int]) -> np.ndarray:
    """(B, C) multi-hot labels -> (B,) index into ``top`` of each video's least frequent top class, -1 if none.

    The least frequent is the most specific (a "Car" video is also a "Vehicle" one); taking the most frequent
    would give every video to the broad classes and leave the specific ones empty.
    """
    present = labels[:, top].numpy() > 0
    last = len(top) - 1 - present[:, ::-1].argmax(axis=1)
    return np.where(present.any(axis=1), last, -1)


def embed(points: np.ndarray) -> np.ndarray:
    """(N, E) -> (N, 2) t-SNE coordinates (PCA start and a fixed seed, so a rerun draws the same figure)."""
    perplexity = min(30.0, (len(points) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0).fit_transform(points)


def _represent(encoder: VideoEncoder, view: FrameView) -> np.ndarray:
    """(B, E) representations of one view as float32 numpy."""
    return encoder(view.frames, view.mask).representation.float().numpy()
