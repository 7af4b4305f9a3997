"""Lightning modules (teacher, Serial student, Parallel teacher + student) and the distillation losses."""

from lightning_distill.training.distill import DistillModule
from lightning_distill.training.losses import (
    ClassificationLoss,
    DistillLoss,
    IntermediateRepresentationLoss,
    LossTerm,
    PredictionLoss,
    RepresentationLoss,
)
from lightning_distill.training.module import VideoClassifierModule
from lightning_distill.training.outputs import ModelOutput
from lightning_distill.training.student import StudentModule
from lightning_distill.training.teacher import TeacherModule

__all__ = [
    "ClassificationLoss",
    "DistillLoss",
    "DistillModule",
    "IntermediateRepresentationLoss",
    "LossTerm",
    "ModelOutput",
    "PredictionLoss",
    "RepresentationLoss",
    "StudentModule",
    "TeacherModule",
    "VideoClassifierModule",
]
