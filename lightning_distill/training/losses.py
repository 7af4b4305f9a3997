"""The paper's losses (section 4) as pure functions, and as named weighted terms that YAML composes.

Every function computes in float32 with autocast off, so ``bf16-mixed`` training keeps full-precision logs and
sums over thousands of classes. Every teacher-side input is detached: no loss here sends a gradient into the
teacher (in Parallel training the teacher learns from its own L_CE only).

A student's loss in YAML (``StudentModule``/``DistillModule`` argument ``loss``), e.g. the weights of a public
NeXtVLAD re-implementation::

    loss:
      ce: ClassificationLoss
      pred: {class_path: PredictionLoss, init_args: {weight: 0.01}}
      rep: {class_path: RepresentationLoss, init_args: {weight: 0.001}}
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_distill.class_paths import Keyed
from lightning_distill.errors import ConfigError
from lightning_distill.training.outputs import ModelOutput

# How L_rep and L_rep^I compare representations (see representation_loss).
RepresentationForm = Literal["raw", "standardized", "cosine"]
FORMS = get_args(RepresentationForm)
PredictionDistance = Literal["kl", "squared", "binary_kl"]
DISTANCES = get_args(PredictionDistance)

# The YouTube-8M starter code's epsilon in its cross-entropy (written there as 10e-6).
CE_EPSILON = 1e-5
# logit(p) clamps p to [eps, 1 - eps], so a probability that saturated to 0 or 1 keeps a finite logit.
LOGIT_EPSILON = 1e-7


def _float32_context(tensor: Tensor) -> torch.autocast:
    """Autocast off on ``tensor``'s device, so bf16-mixed training computes the loss in float32."""
    return torch.autocast(device_type=tensor.device.type, enabled=False)


def classification_loss(probs: Tensor, labels: Tensor) -> Tensor:
    """L_CE (paper eq. 1): binary cross-entropy summed over the C classes, averaged over the B videos.

    ``-[y log(p + eps) + (1 - y) log(1 - p + eps)]`` on probabilities (an MoE head has no logits), eps = 1e-5 as
    in the YouTube-8M starter code.

    Args:
        probs: (B, C) predicted probabilities.
        labels: (B, C) multi-hot ground truth.
    """
    with _float32_context(probs):
        p, y = probs.float(), labels.float()
        per_class = y * torch.log(p + CE_EPSILON) + (1 - y) * torch.log(1 - p + CE_EPSILON)
        return -per_class.sum(dim=1).mean()


def representation_loss(e_teacher: Tensor, e_student: Tensor, form: RepresentationForm = "raw") -> Tensor:
    """L_rep (paper eq. 2), averaged over the B videos, in one of three forms:

    - ``"raw"``, the paper's: ``||E_T - E_S||^2`` summed over the E dims. Its scale is the representation's:
      it grows with E (4096 for the paper's H-RNN, 32 for a tiny one) and with the magnitude of its values (H-RNN's
      are LSTM cell states, unbounded), so a sensible weight differs by family and size.
    - ``"standardized"``: every dimension's difference divided by the teacher's standard deviation of that
      dimension over the batch (``teacher_scale``), squared and averaged over the E dims: 0 when the student matches,
      about 2 when it is unrelated (independent, equally spread), whatever the family, size or value range.
    - ``"cosine"``: ``1 - cos(E_T, E_S)``, in [0, 2]: direction only.

    Args:
        e_teacher: (B, E) teacher representation (detached here).
        e_student: (B, E) student representation.
        form: ``"raw"``, ``"standardized"`` or ``"cosine"``.
    """
    form = _checked_form(form)
    with _float32_context(e_student):
        e_t = e_teacher.detach().float()
        return _distance(e_t, e_student.float(), form).mean()


def _distance(teacher: Tensor, student: Tensor, form: RepresentationForm, real: Tensor | None = None) -> Tensor:
    """(..., E) teacher and student states -> (...) distance over the last dim in ``form``. ``standardized`` divides
    by the teacher's spread (``teacher_scale``) over its real rows: ``teacher[real]`` for a mask, else every row."""
    if form == "raw":
        return (teacher - student).pow(2).sum(dim=-1)
    if form == "standardized":
        scale = teacher_scale(teacher if real is None else teacher[real])
        return ((teacher - student) / scale).pow(2).mean(dim=-1)
    return 1 - F.cosine_similarity(student, teacher, dim=-1)


def teacher_scale(values: Tensor) -> Tensor:
    """(N, E) teacher values -> (E,) per-dimension standard deviation over the N rows, floored at 1% of the mean
    one (plus a tiny constant), so a dimension the batch happens to keep constant does not blow the loss up."""
    std = values.std(dim=0, unbiased=False) if len(values) > 1 else values.abs().mean(dim=0)
    return std.clamp(min=0.01 * float(std.mean()) + 1e-8)


def intermediate_representation_loss(
    i_teacher: Tensor, i_student: Tensor, student_positions: Tensor, mask: Tensor, form: RepresentationForm = "raw"
) -> Tensor:
    """L_rep^I (paper eq. 3): the distance between the teacher's and the student's state at each frame the
    student saw, summed over the student's frames, averaged over the B videos. Per frame, as ``representation_loss``
    per video: ``"raw"`` sums squared errors over the H dims (the paper's), ``"standardized"`` scales each dim by
    the teacher's spread over the batch's real frames and averages, ``"cosine"`` is ``1 - cos``.

    The teacher's view must be the all-frames view, whose slot t holds frame t, so the teacher's state for the
    student's frame f is slot f.

    Args:
        i_teacher: (B, T, H) teacher state per frame (detached here).
        i_student: (B, K, H) student state per slot.
        student_positions: (B, K) long, the frame index of each student slot, -1 at padding.
        mask: (B, K) bool, True where the student slot holds a real frame.
        form: ``"raw"``, ``"standardized"`` or ``"cosine"``.
    """
    form = _checked_form(form)
    with _float32_context(i_student):
        # Padding (-1) reads slot 0 and is then zeroed by the mask.
        index = student_positions.clamp(min=0).unsqueeze(-1).expand(-1, -1, i_teacher.shape[-1])
        teacher_at_student = i_teacher.detach().float().gather(1, index)
        per_slot = _distance(teacher_at_student, i_student.float(), form, mask)
        return (per_slot * mask.float()).sum(dim=1).mean()


def _temper(probs: Tensor, temperature: float) -> Tensor:
    """``sigmoid(logit(p) / T)``: T > 1 pulls probabilities towards 0.5 (softer), T < 1 towards 0 or 1."""
    if temperature == 1.0:
        return probs
    return torch.sigmoid(torch.logit(probs, eps=LOGIT_EPSILON) / temperature)


def prediction_loss(
    p_teacher: Tensor,
    p_student: Tensor,
    distance: PredictionDistance = "kl",
    temperature: float = 1.0,
) -> Tensor:
    """L_pred (paper eq. 4): a distance between teacher and student class probabilities, averaged over videos.

    - ``"kl"``: KL(P̂_T || P̂_S) = sum_c P̂_T,c log(P̂_T,c / P̂_S,c) of the class-normalised probabilities
      P̂ = P / sum_c P (as in the paper authors' code: the sigmoid outputs made one distribution per video).
    - ``"squared"``: sum_c (p_T,c - p_S,c)^2.
    - ``"binary_kl"``: sum_c KL(Bernoulli(p_T,c) || Bernoulli(p_S,c)), each class's own yes/no. Its gradient is
      L_CE's with the teacher's probabilities as labels, so its scale is L_CE's in every family and at every class
      count; ``"kl"`` is far smaller (tiny H-RNN, 16 classes: ~0.05 against L_CE's ~3.5 in training) because
      normalising over classes discards how sure the teacher is of each label.

    Args:
        p_teacher: (B, C) teacher probabilities (detached here).
        p_student: (B, C) student probabilities.
        distance: ``"kl"``, ``"squared"`` or ``"binary_kl"``.
        temperature: T; both sides become ``sigmoid(logit(p) / T)`` first. 1 leaves them as they are.
    """
    return prediction_distance(p_teacher, p_student, distance, temperature).mean()


def prediction_distance(
    p_teacher: Tensor,
    p_student: Tensor,
    distance: PredictionDistance = "kl",
    temperature: float = 1.0,
) -> Tensor:
    """``prediction_loss`` per video: (B, C) teacher and student probabilities -> (B,) distances (float32)."""
    distance = checked_distance(distance)
    with _float32_context(p_student):
        p_t = _temper(p_teacher.detach().float(), temperature)
        p_s = _temper(p_student.float(), temperature)
        if distance == "squared":
            return (p_t - p_s).pow(2).sum(dim=1)
        if distance == "kl":
            q_t = p_t / p_t.sum(dim=1, keepdim=True)
            q_s = p_s / p_s.sum(dim=1, keepdim=True)
            # xlogy makes 0 log 0 = 0; the clamp keeps log finite where a student probability underflowed.
            kl = torch.xlogy(q_t, q_t) - q_t * _log(q_s)
            return kl.sum(dim=1)
        yes = torch.xlogy(p_t, p_t) - p_t * _log(p_s)
        no = torch.xlogy(1 - p_t, 1 - p_t) - (1 - p_t) * _log(1 - p_s)
        return (yes + no).sum(dim=1)


def _log(probs: Tensor) -> Tensor:
    """``log``, finite where a student probability underflowed to 0."""
    return torch.log(probs.clamp(min=torch.finfo(probs.dtype).tiny))


def checked_distance(distance: str) -> str:
    """``distance`` if it names a ``prediction_distance``, else a ``ConfigError`` listing those that do."""
    if distance not in DISTANCES:
        raise ConfigError(f"prediction distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
    return distance


class LossTerm(Keyed, nn.Module, ABC):
    """One named part of a student's loss: ``forward`` returns its unweighted value, ``DistillLoss`` weighs it.

    Args:
        weight: multiplies the term in the total (>= 0).

    Attributes:
        teacher_outputs: the ``ModelOutput`` fields of the teacher the term reads (empty: it needs no teacher).
            A term that reads only video-level outputs (``representation``, ``probabilities``) can be trained
            from a teacher's cached targets.
        key: the term's name in losses and experiment grids (``losses: [rep, pred, ce]``); a subclass that sets
            it is registered in ``LossTerm.registry``.
        symbol: its symbol in the paper's tables, e.g. ``L_rep``.
        trains_head: whether its gradient reaches the classifier head (terms on the student's probabilities do;
            representation terms do not, hence the paper's second, L_CE stage after L_rep alone).
    """

    teacher_outputs: frozenset[str] = frozenset()
    symbol: ClassVar[str] = ""
    trains_head: ClassVar[bool] = True
    registry: ClassVar[dict[str, type[LossTerm]]] = {}

    @property
    def needs_teacher(self) -> bool:
        """Whether the term compares with the teacher's outputs."""
        return bool(self.teacher_outputs)

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        if weight < 0:
            raise ConfigError(f"{type(self).__name__} weight must be >= 0, got {weight}: use 0 to switch it off")
        self.weight = weight

    @abstractmethod
    def forward(self, student: ModelOutput, teacher: ModelOutput | None, labels: Tensor) -> Tensor:
        """The term's unweighted value: a scalar tensor.

        Args:
            student: outputs of the model being trained.
            teacher: outputs of the teacher; None when no term of the loss needs them.
            labels: (B, C) multi-hot ground truth.
        """


class ClassificationLoss(LossTerm):
    """L_CE: the student's cross-entropy against the true labels (see ``classification_loss``).

    Args:
        weight: multiplies the term in the total.
    """

    key = "ce"
    symbol = "L_CE"

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, labels: Tensor) -> Tensor:
        return classification_loss(student.probabilities, labels)


class RepresentationLoss(LossTerm):
    """L_rep: distance between the teacher's and the student's video representations (see
    ``representation_loss``).

    Args:
        weight: multiplies the term in the total.
        form: ``"raw"`` (the paper's sum of squares, whose scale depends on the encoder), ``"standardized"``
            (per-dimension, by the teacher's spread: far less dependent on the family than raw) or ``"cosine"``.
    """

    key = "rep"
    symbol = "L_rep"
    trains_head = False

    teacher_outputs = frozenset({"representation"})

    def __init__(self, weight: float = 1.0, form: RepresentationForm = "raw") -> None:
        super().__init__(weight)
        self.form = _checked_form(form)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, labels: Tensor) -> Tensor:
        return representation_loss(teacher.representation, student.representation, self.form)


class IntermediateRepresentationLoss(LossTerm):
    """L_rep^I: squared distance between the teacher's and the student's per-frame states at the student's frames.

    Needs an encoder that returns per-frame states (``EncoderOutput.intermediate``, e.g. H-RNN) and a teacher
    that sees all frames.

    Args:
        weight: multiplies the term in the total.
        form: ``"raw"``, ``"standardized"`` or ``"cosine"``, as for ``RepresentationLoss``.
    """

    key = "rep_i"
    symbol = "L_rep^I"
    trains_head = False

    teacher_outputs = frozenset({"intermediate"})

    def __init__(self, weight: float = 1.0, form: RepresentationForm = "raw") -> None:
        super().__init__(weight)
        self.form = _checked_form(form)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, labels: Tensor) -> Tensor:
        if student.intermediate is None or teacher.intermediate is None:
            raise ConfigError(
                "IntermediateRepresentationLoss needs per-frame encoder states but the encoder returns none: "
                "use an encoder that returns them (HRNN) or drop the term"
            )
        return intermediate_representation_loss(
            teacher.intermediate, student.intermediate, student.positions, student.mask, self.form
        )


class PredictionLoss(LossTerm):
    """L_pred: distance between the teacher's and the student's class probabilities (see ``prediction_loss``).

    Args:
        weight: multiplies the term in the total.
        distance: ``"kl"`` (KL of class-normalised probabilities, the authors' code), ``"squared"``, or
            ``"binary_kl"`` (per-class KL, on L_CE's scale; see ``prediction_loss``).
        temperature: T; both sides become ``sigmoid(logit(p) / T)`` first (T > 1 softer, T < 1 sharper).
    """

    key = "pred"
    symbol = "L_pred"

    teacher_outputs = frozenset({"probabilities"})

    def __init__(
        self, weight: float = 1.0, distance: PredictionDistance = "kl", temperature: float = 1.0
    ) -> None:
        super().__init__(weight)
        checked_distance(distance)
        if temperature <= 0:
            raise ConfigError(f"PredictionLoss temperature must be > 0, got {temperature}")
        self.distance = distance
        self.temperature = temperature

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, labels: Tensor) -> Tensor:
        return prediction_loss(teacher.probabilities, student.probabilities, self.distance, self.temperature)


def _checked_form(form: str) -> str:
    if form not in FORMS:
        raise ConfigError(f"representation form must be one of {', '.join(FORMS)}, got {form!r}")
    return form


class DistillLoss(nn.Module):
    """A named, weighted sum of loss terms; every weighted part is returned so each can be logged.

    Args:
        terms: name -> term, e.g. ``{"rep": RepresentationLoss(), "ce": ClassificationLoss()}``.
    """

    def __init__(self, terms: dict[str, LossTerm]) -> None:
        super().__init__()
        if not terms:
            raise ConfigError("the loss has no terms: give at least one, e.g. {ce: ClassificationLoss}")
        if "total" in terms:
            raise ConfigError("a loss term is named 'total', which names the sum: rename the term")
        self.terms = nn.ModuleDict(terms)

    @property
    def needs_teacher(self) -> bool:
        """Whether any term compares with the teacher's outputs."""
        return bool(self.teacher_outputs)

    @property
    def teacher_outputs(self) -> frozenset[str]:
        """The teacher's ``ModelOutput`` fields any term reads."""
        return frozenset().union(*(term.teacher_outputs for term in self.terms.values()))

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, labels: Tensor) -> dict[str, Tensor]:
        """``{name: weight * value for each term, "total": their sum}``.

        Args:
            student: outputs of the model being trained.
            teacher: outputs of the teacher; may be None only if no term ``needs_teacher``.
            labels: (B, C) multi-hot ground truth.
        """
        if teacher is None and self.needs_teacher:
            raise ValueError("DistillLoss got no teacher outputs but some of its terms compare with the teacher")
        parts = {name: term.weight * term(student, teacher, labels) for name, term in self.terms.items()}
        return {**parts, "total": sum(parts.values())}
