"""Classifier heads: probabilities strictly inside (0, 1) in float32, per class, computed as specified."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from lightning_distill.models import ClassifierHead, LogisticHead, MoEHead

HEADS = {
    "logistic": LogisticHead,
    "moe": MoEHead,
    "moe-prob-gating": partial(MoEHead, num_mixtures=3, probability_gating=True),
}


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("head_fn", HEADS.values(), ids=HEADS.keys())
def test_probabilities_strictly_inside_unit_interval_even_when_saturated(head_fn):
    head: ClassifierHead = head_fn(8, 5)  # built the way modules build it: head(encoder.output_dim, classes)
    assert (head.input_dim, head.num_classes) == (8, 5)
    representation = torch.randn(4, 8) * 1e4  # saturates every sigmoid and softmax in float32
    probabilities = head(representation)
    assert probabilities.shape == (4, 5) and probabilities.dtype == torch.float32
    assert ((probabilities > 0) & (probabilities < 1)).all()
    assert torch.isfinite(torch.nn.functional.binary_cross_entropy(probabilities, torch.ones(4, 5)))


@pytest.mark.parametrize("head_fn", HEADS.values(), ids=HEADS.keys())
def test_every_parameter_learns(head_fn):
    head = head_fn(8, 5)
    torch.nn.functional.binary_cross_entropy(head(torch.randn(4, 8)), torch.rand(4, 5).round()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


@pytest.mark.parametrize("head_fn", HEADS.values(), ids=HEADS.keys())
def test_bf16_autocast_gives_float32_probabilities(head_fn):
    head = head_fn(8, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probabilities = head(torch.randn(4, 8) * 100)
    assert probabilities.dtype == torch.float32
    assert ((probabilities > 0) & (probabilities < 1)).all()


def test_logistic_head_by_hand():
    head = LogisticHead(2, 2)
    with torch.no_grad():
        head.linear.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.25]]))
        head.linear.bias.copy_(torch.tensor([0.1, -0.3]))
    x = [0.4, 0.7]
    expected = [sigmoid(1.0 * 0.4 - 2.0 * 0.7 + 0.1), sigmoid(0.5 * 0.4 + 0.25 * 0.7 - 0.3)]
    torch.testing.assert_close(head(torch.tensor([x])), torch.tensor([expected]))


def test_moe_head_by_hand():
    # 2 classes, 2 experts each plus the dummy expert that always predicts 0.
    head = MoEHead(2, 2, num_mixtures=2)
    gate_w = [[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [-1.0, 2.0], [0.3, -0.2], [0.0, 0.0]]
    expert_w = [[2.0, -1.0], [0.5, 0.5], [-1.0, 1.0], [1.5, 0.0]]
    expert_b = [0.2, -0.1, 0.0, 0.3]
    with torch.no_grad():
        head.gates.weight.copy_(torch.tensor(gate_w))
        head.experts.weight.copy_(torch.tensor(expert_w))
        head.experts.bias.copy_(torch.tensor(expert_b))
    x = [0.8, -0.6]

    def dot(w: list[float]) -> float:
        return w[0] * x[0] + w[1] * x[1]

    expected = []
    for c in range(2):
        gate_logits = [dot(gate_w[3 * c + m]) for m in range(3)]
        norm = sum(math.exp(g) for g in gate_logits)
        experts = [sigmoid(dot(expert_w[2 * c + m]) + expert_b[2 * c + m]) for m in range(2)]
        expected.append(sum(math.exp(gate_logits[m]) / norm * experts[m] for m in range(2)))
    torch.testing.assert_close(head(torch.tensor([x])), torch.tensor([expected]))


def test_moe_classes_are_independent_and_need_not_sum_to_one():
    head = MoEHead(8, 4).eval()
    x = torch.randn(3, 8)
    before = head(x)
    with torch.no_grad():
        head.experts.weight[2 * 1 : 2 * 2] += 1.0  # class 1's two experts only
        head.gates.weight[3 * 1 : 3 * 2] += 1.0
    after = head(x)
    changed = (after - before).abs().amax(0) > 0
    assert changed.tolist() == [False, True, False, False]
    with torch.no_grad():
        head.gates.weight.zero_()
        head.experts.bias.fill_(10.0)
        head.experts.weight.zero_()
    # Gates 1/3 each, experts ~1: every class scores ~2/3, summing to ~8/3 over 4 classes.
    torch.testing.assert_close(head(x), torch.full((3, 4), 2 / 3), atol=1e-4, rtol=0)
