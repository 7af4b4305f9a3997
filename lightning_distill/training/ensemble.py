"""Several frozen teachers as one target (beyond the paper: "train a student with an ensemble of teachers,
preferably from different families").

The ensemble's probabilities are the mean of its teachers' (what L_pred compares with); its representation is
the teachers' representations side by side (what L_rep compares with). The student's representation is matched
to each teacher's part by a ``RepresentationAdapter``: as it is for a teacher of the student's own family and
sizes (the paper's L_rep), through a learned linear projection for any other, whose representation has another
meaning and size. So raw L_rep against the ensemble is the sum of the per-teacher L_rep, standardised L_rep the
mean over all teachers' dimensions (each scaled by its own teacher's spread).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor, nn

from lightning_distill.training.outputs import ModelOutput


def ensemble_output(teachers: list[ModelOutput], represented: list[bool] | None = None) -> ModelOutput:
    """Several teachers' video-level outputs as one: probabilities averaged, representations concatenated.

    One teacher is returned as it is.

    Args:
        teachers: each teacher's outputs for the same B videos (representations (B, E_i), probabilities (B, C)).
        represented: per teacher, whether its representation is part of the ensemble's (what L_rep compares with);
            default: every teacher's.
    """
    if len(teachers) == 1:
        return teachers[0]
    represented = represented or [True] * len(teachers)
    return ModelOutput(
        representation=torch.cat([t.representation for t, kept in zip(teachers, represented) if kept], dim=1),
        intermediate=None,
        probabilities=torch.stack([t.probabilities for t in teachers]).mean(dim=0),
        positions=None,
        mask=None,
    )


class RepresentationAdapter(nn.Module):
    """The student's representation (B, E_S) -> its counterpart of the ensemble's, (B, sum of E_i).

    Trained with the student (it is part of the fit's parameters) but not part of the predicting network: a
    student's checkpoint keeps it only so that a resumed fit continues with it.

    Args:
        student_dim: E_S.
        teacher_dims: E_i of each teacher, in the ensemble's order.
        projected: per teacher, whether its part goes through a learned projection (a teacher of another family
            or size) or is the student's representation itself (which needs E_i == E_S).
    """

    def __init__(self, student_dim: int, teacher_dims: list[int], projected: list[bool]) -> None:
        super().__init__()
        if any(not p and d != student_dim for d, p in zip(teacher_dims, projected)):
            raise ValueError(f"unprojected teacher parts must have the student's size {student_dim}: {teacher_dims}")
        self.projections = nn.ModuleList(
            nn.Linear(student_dim, dim) if p else nn.Identity() for dim, p in zip(teacher_dims, projected)
        )

    def forward(self, representation: Tensor) -> Tensor:
        """(B, E_S) -> (B, sum of E_i)."""
        return torch.cat([projection(representation) for projection in self.projections], dim=1)

    def adapt(self, student: ModelOutput) -> ModelOutput:
        """``student`` with its representation mapped onto the ensemble's."""
        return replace(student, representation=self(student.representation))


__all__ = ["RepresentationAdapter", "ensemble_output"]
