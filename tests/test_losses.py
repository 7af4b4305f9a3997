"""The distillation losses against values worked out by hand, and the properties the paper relies on."""

import math

import pytest
import torch

from lightning_distill.errors import ConfigError
from lightning_distill.training.losses import (
    ClassificationLoss,
    DistillLoss,
    IntermediateRepresentationLoss,
    PredictionLoss,
    RepresentationLoss,
    classification_loss,
    intermediate_representation_loss,
    prediction_loss,
    representation_loss,
)
from lightning_distill.training.outputs import ModelOutput

PROBS = torch.tensor([[0.9, 0.2, 0.5], [0.1, 0.6, 0.3]])
LABELS = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])


def test_classification_loss_by_hand():
    # video 0: -(ln .9 + ln .8 + ln .5) = 0.1053605 + 0.2231436 + 0.6931472 = 1.0216513
    # video 1: -(ln .9 + ln .6 + ln .7) = 0.1053605 + 0.5108256 + 0.3566749 = 0.9728610
    # mean over the 2 videos = 0.9972562 (eps = 1e-5 inside the logs moves it by ~4e-5)
    assert classification_loss(PROBS, LABELS).item() == pytest.approx(0.9972562, abs=1e-4)


def test_classification_loss_is_summed_over_classes():
    # Doubling the classes (same values repeated) doubles L_CE: a sum over classes, not a mean.
    doubled = classification_loss(PROBS.repeat(1, 2), LABELS.repeat(1, 2))
    assert doubled.item() == pytest.approx(2 * classification_loss(PROBS, LABELS).item(), rel=1e-6)


def test_representation_loss_by_hand():
    e_teacher = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    e_student = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    # video 0: 0 + 4 + 4 = 8; video 1: 1 + 1 + 1 = 3; mean 5.5
    assert representation_loss(e_teacher, e_student).item() == pytest.approx(5.5)


def test_intermediate_representation_loss_by_hand():
    # Teacher states at frames 0, 1, 2 (H = 2); the student saw 2 slots.
    i_teacher = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]], [[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]]])
    i_student = torch.tensor([[[1.0, 0.0], [2.0, 4.0]], [[1.0, 2.0], [9.0, 9.0]]])
    positions = torch.tensor([[1, 2], [0, -1]])
    mask = torch.tensor([[True, True], [True, False]])
    # video 0: frame 1 (1,1) vs (1,0) -> 1; frame 2 (2,2) vs (2,4) -> 4; sum 5
    # video 1: frame 0 (1,0) vs (1,2) -> 4; the padded slot counts nothing; sum 4
    # mean over the 2 videos = 4.5
    assert intermediate_representation_loss(i_teacher, i_student, positions, mask).item() == pytest.approx(4.5)


def test_standardized_representation_loss_by_hand():
    # Over the batch, dim 0 of the teacher has std 1 (values 1 and 3); dim 1 is constant (std 0), so its scale is
    # the floor: 1% of the mean std (0.5) = 0.005. Differences [-1, 0] and [0, -0.005] become [-1, 0] and [0, -1];
    # squared and averaged over the 2 dims: 0.5 per video, 0.5 in all.
    e_teacher = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    e_student = torch.tensor([[2.0, 0.0], [3.0, 0.005]])
    assert representation_loss(e_teacher, e_student, "standardized").item() == pytest.approx(0.5, rel=1e-4)


def test_cosine_representation_loss_by_hand():
    e_teacher = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    e_student = torch.tensor([[0.0, 3.0], [2.0, 2.0]])  # orthogonal: 1; same direction: 0
    assert representation_loss(e_teacher, e_student, "cosine").item() == pytest.approx(0.5, abs=1e-6)


def test_normalised_forms_do_not_depend_on_the_representations_scale_or_size():
    torch.manual_seed(0)
    e_teacher, e_student = torch.randn(64, 32), torch.randn(64, 32)
    for form in ("standardized", "cosine"):
        base = representation_loss(e_teacher, e_student, form).item()
        assert representation_loss(100 * e_teacher, 100 * e_student, form).item() == pytest.approx(base, rel=1e-5)
    # Unrelated unit-variance representations: about 2 whatever E (raw grows with E and with the scale).
    for size in (32, 4096):
        e_t, e_s = torch.randn(256, size), torch.randn(256, size)
        assert representation_loss(e_t, e_s, "standardized").item() == pytest.approx(2.0, rel=0.05)
    assert representation_loss(10 * e_teacher, 10 * e_student).item() == pytest.approx(
        100 * representation_loss(e_teacher, e_student).item(), rel=1e-5
    )


def test_standardized_intermediate_loss_uses_real_frames_only():
    # The teacher's states at the student's two real frames are 0 and 2 in the one dim: std 1; the student is
    # off by 1 at each: (1/1)^2 per frame, summed over the 2 real frames; the padded slot adds nothing.
    i_teacher = torch.tensor([[[0.0], [9.0], [2.0]]])
    i_student = torch.tensor([[[1.0], [1.0], [5.0]]])
    positions = torch.tensor([[0, 2, -1]])
    mask = torch.tensor([[True, True, False]])
    value = intermediate_representation_loss(i_teacher, i_student, positions, mask, "standardized")
    assert value.item() == pytest.approx(1.0 + 1.0, rel=1e-5)


def test_prediction_loss_squared_by_hand():
    p_student = torch.tensor([[0.5, 0.2, 0.5], [0.1, 0.3, 0.3]])
    # video 0: (0.9 - 0.5)^2 = 0.16; video 1: (0.6 - 0.3)^2 = 0.09; mean 0.125
    assert prediction_loss(PROBS, p_student, "squared").item() == pytest.approx(0.125)


def test_prediction_loss_kl_of_class_normalised_probabilities_by_hand():
    p_teacher = torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.2, 0.4]])
    p_student = torch.tensor([[0.25, 0.25, 0.5], [0.1, 0.1, 0.1]])
    # video 0: both sum to 1; KL = .5 ln(.5/.25) + .25 ln 1 + .25 ln(.25/.5) = .25 ln 2 = 0.1732868
    # video 1: normalised teacher (.25, .25, .5), student (1/3, 1/3, 1/3);
    #          KL = 2 * .25 ln(.75) + .5 ln(1.5) = -0.1438410 + 0.2027326 = 0.0588915
    # mean = 0.1160892
    assert prediction_loss(p_teacher, p_student, "kl").item() == pytest.approx(0.1160892, abs=1e-6)


def test_prediction_loss_binary_kl_by_hand():
    p_teacher = torch.tensor([[0.5, 1.0]])
    p_student = torch.tensor([[0.25, 0.5]])
    # class 0: .5 ln(.5/.25) + .5 ln(.5/.75) = .5 (ln 2 - ln 1.5) = 0.1438410; class 1: 1 ln(1/.5) + 0 = 0.6931472
    assert prediction_loss(p_teacher, p_student, "binary_kl").item() == pytest.approx(0.8369882, abs=1e-6)


def test_prediction_loss_binary_kl_has_the_gradient_of_l_ce_with_the_teachers_probabilities_as_labels():
    p_teacher = PROBS.flip(1)
    student = PROBS.clone().requires_grad_(True)
    prediction_loss(p_teacher, student, "binary_kl").backward()
    # dL_CE/dp = -(y/p - (1-y)/(1-p)) per class, averaged over the videos, with y the teacher's probabilities.
    expected = -(p_teacher / PROBS - (1 - p_teacher) / (1 - PROBS)) / len(PROBS)
    assert torch.allclose(student.grad, expected, atol=1e-6)
    # L_CE itself adds eps 1e-5 inside its logs, hence the looser tolerance.
    soft_ce = PROBS.clone().requires_grad_(True)
    classification_loss(soft_ce, p_teacher).backward()
    assert torch.allclose(student.grad, soft_ce.grad, atol=1e-3)


def test_prediction_loss_temperature_by_hand():
    # T = 2: sigmoid(logit(0.8) / 2) = sigmoid(ln 4 / 2) = sigmoid(ln 2) = 2/3; 0.5 stays 0.5.
    # squared distance (2/3 - 1/2)^2 = 1/36
    loss = prediction_loss(torch.tensor([[0.8]]), torch.tensor([[0.5]]), "squared", temperature=2.0)
    assert loss.item() == pytest.approx(1 / 36, rel=1e-5)


@pytest.mark.parametrize("distance", ["kl", "squared", "binary_kl"])
def test_losses_vanish_when_the_student_matches_the_teacher(distance):
    torch.manual_seed(0)
    probs = torch.rand(4, 7) * 0.98 + 0.01
    states = torch.randn(4, 6, 3)
    positions = torch.tensor([[0, 2, 5]] * 4)
    assert prediction_loss(probs, probs.clone(), distance).item() == pytest.approx(0.0, abs=1e-7)
    assert prediction_loss(probs, probs.clone(), distance, temperature=3.0).item() == pytest.approx(0.0, abs=1e-7)
    assert representation_loss(states[:, 0], states[:, 0].clone()).item() == 0.0
    student_states = states.gather(1, positions[..., None].expand(-1, -1, 3))
    mask = torch.ones(4, 3, dtype=torch.bool)
    assert intermediate_representation_loss(states, student_states, positions, mask).item() == 0.0


def test_kl_is_positive_when_the_student_differs():
    assert prediction_loss(PROBS, PROBS.flip(1), "kl").item() > 0.01


def _grad_check(loss_fn, teacher, student):
    teacher = teacher.clone().requires_grad_(True)
    student = student.clone().requires_grad_(True)
    loss_fn(teacher, student).backward()
    return teacher.grad, student.grad


@pytest.mark.parametrize(
    "loss_fn",
    [
        representation_loss,
        lambda t, s: prediction_loss(t, s, "kl"),
        lambda t, s: prediction_loss(t, s, "squared", temperature=2.0),
        lambda t, s: prediction_loss(t, s, "binary_kl"),
        lambda t, s: intermediate_representation_loss(
            t[:, None].expand(-1, 2, -1), s[:, None], torch.tensor([[1], [0]]), torch.ones(2, 1, dtype=torch.bool)
        ),
    ],
    ids=["rep", "pred_kl", "pred_squared", "pred_binary_kl", "rep_intermediate"],
)
def test_gradient_reaches_the_student_only(loss_fn):
    teacher_grad, student_grad = _grad_check(loss_fn, PROBS, PROBS.flip(1))
    assert teacher_grad is None
    assert student_grad is not None and student_grad.abs().sum() > 0


@pytest.mark.parametrize(
    "loss_fn",
    [
        lambda p: classification_loss(p, LABELS),
        lambda p: representation_loss(PROBS.flip(1), p),
        lambda p: prediction_loss(PROBS.flip(1), p, "kl"),
        lambda p: prediction_loss(PROBS.flip(1), p, "squared"),
        lambda p: prediction_loss(PROBS.flip(1), p, "binary_kl"),
    ],
    ids=["ce", "rep", "pred_kl", "pred_squared", "pred_binary_kl"],
)
def test_losses_run_in_float32_under_bf16_autocast(loss_fn):
    probs_bf16 = PROBS.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_fn(probs_bf16)
    assert loss.dtype == torch.float32
    # Same value as float32 arithmetic on the same (bf16-rounded) inputs.
    assert loss.item() == pytest.approx(loss_fn(probs_bf16.float()).item(), rel=1e-6)


def _output(representation, probabilities, intermediate=None):
    batch, slots = representation.shape[0], 2
    return ModelOutput(
        representation=representation,
        intermediate=intermediate,
        probabilities=probabilities,
        positions=torch.arange(slots).repeat(batch, 1),
        mask=torch.ones(batch, slots, dtype=torch.bool),
    )


def test_distill_loss_returns_each_weighted_term_and_their_sum():
    teacher = _output(torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]), PROBS)
    student = _output(torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]]), PROBS.flip(1))
    loss = DistillLoss(
        {
            "rep": RepresentationLoss(weight=0.5),
            "pred": PredictionLoss(weight=2.0, distance="squared"),
            "ce": ClassificationLoss(),
        }
    )
    parts = loss(student, teacher, LABELS)
    assert set(parts) == {"rep", "pred", "ce", "total"}
    assert parts["rep"].item() == pytest.approx(0.5 * 5.5)
    # flip: video 0 (.5, .2, .9) vs (.9, .2, .5) -> .16 + .16; video 1 (.3, .6, .1) vs (.1, .6, .3) -> .04 + .04
    assert parts["pred"].item() == pytest.approx(2.0 * (0.32 + 0.08) / 2)
    assert parts["ce"].item() == pytest.approx(classification_loss(PROBS.flip(1), LABELS).item())
    assert parts["total"].item() == pytest.approx(sum(parts[n].item() for n in ("rep", "pred", "ce")))


def test_distill_loss_knows_whether_it_needs_the_teacher():
    assert not DistillLoss({"ce": ClassificationLoss()}).needs_teacher
    assert DistillLoss({"ce": ClassificationLoss(), "rep": RepresentationLoss()}).needs_teacher
    student = _output(torch.zeros(2, 3), PROBS)
    assert DistillLoss({"ce": ClassificationLoss()})(student, None, LABELS)["total"].item() == pytest.approx(
        classification_loss(PROBS, LABELS).item()
    )


def test_intermediate_term_without_per_frame_states_is_a_config_error():
    output = _output(torch.zeros(2, 3), PROBS)
    with pytest.raises(ConfigError, match="per-frame"):
        IntermediateRepresentationLoss()(output, output, LABELS)


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: DistillLoss({}), "no terms"),
        (lambda: RepresentationLoss(weight=-1.0), "weight must be >= 0"),
        (lambda: PredictionLoss(distance="cosine"), "distance must be one of kl, squared, binary_kl, got 'cosine'"),
        (lambda: PredictionLoss(temperature=0.0), "temperature must be > 0"),
    ],
)
def test_bad_loss_settings_are_config_errors(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_cross_entropy_stays_finite_at_saturated_probabilities():
    probs = torch.tensor([[0.0, 1.0, 1.0]])
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    assert math.isfinite(classification_loss(probs, labels).item())
