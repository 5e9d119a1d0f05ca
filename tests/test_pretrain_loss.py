"""MultiPositiveNTXent against a hand computation, and its behaviour when same-class embeddings align."""

from __future__ import annotations

import math

import pytest
import torch

from mfe_iqa.losses.contrastive import MultiPositiveNTXent


def _hand_loss(vectors: list[list[float]], labels: list[int], tau: float) -> float:
    """The CONTRIQUE formula written out with plain Python floats, loop by loop."""
    unit = []
    for v in vectors:
        norm = math.sqrt(sum(x * x for x in v))
        unit.append([x / norm for x in v])
    n = len(unit)

    def sim(i: int, k: int) -> float:
        return sum(a * b for a, b in zip(unit[i], unit[k]))

    per_anchor = []
    for i in range(n):
        pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
        if not pos:
            continue
        denom = math.log(sum(math.exp(sim(i, k) / tau) for k in range(n) if k != i))
        per_anchor.append(denom - sum(sim(i, j) / tau for j in pos) / len(pos))
    return sum(per_anchor) / len(per_anchor)


def test_matches_hand_computation_on_four_samples():
    vectors = [[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 1.0, 1.0], [0.0, -2.0, 1.0]]
    labels = [0, 0, 1, 1]
    # Worked out by hand at tau = 0.1 (s_ik / tau): s01 = 8, s02 = s03 = 0, s12 = 6/sqrt(2),
    # s13 = -12/sqrt(5), s23 = -10/sqrt(10); each anchor has one positive (its pair).
    s01, s12, s13, s23 = 8.0, 6 / math.sqrt(2), -12 / math.sqrt(5), -10 / math.sqrt(10)
    by_hand = [
        math.log(math.exp(s01) + 1 + 1) - s01,  # anchor 0: keys 1, 2, 3
        math.log(math.exp(s01) + math.exp(s12) + math.exp(s13)) - s01,  # anchor 1: keys 0, 2, 3
        math.log(1 + math.exp(s12) + math.exp(s23)) - s23,  # anchor 2: keys 0, 1, 3
        math.log(1 + math.exp(s13) + math.exp(s23)) - s23,  # anchor 3: keys 0, 1, 2
    ]
    assert _hand_loss(vectors, labels, 0.1) == pytest.approx(sum(by_hand) / 4)
    loss = MultiPositiveNTXent(temperature=0.1)(torch.tensor(vectors), torch.tensor(labels))
    assert loss.item() == pytest.approx(sum(by_hand) / 4, rel=1e-5)
    loss_t05 = MultiPositiveNTXent(temperature=0.5)(torch.tensor(vectors), torch.tensor(labels))
    assert loss_t05.item() == pytest.approx(_hand_loss(vectors, labels, 0.5), rel=1e-5)


def test_multiple_positives_and_anchor_without_positive():
    vectors = [[1.0, 0.2], [0.9, 0.1], [0.7, 0.5], [-0.3, 1.0], [0.2, -1.0]]
    labels = [3, 3, 3, 5, 7]  # anchors 3 and 4 have no positive: excluded from the mean, counted
    fn = MultiPositiveNTXent(temperature=0.2)
    loss = fn(torch.tensor(vectors), torch.tensor(labels))
    assert loss.item() == pytest.approx(_hand_loss(vectors, labels, 0.2), rel=1e-5)
    assert fn.last_anchors_without_positive == 2


def test_anchor_subset_equals_the_same_anchors_of_the_full_loss():
    """Under DDP each rank uses its own rows as anchors against all gathered rows."""
    torch.manual_seed(0)
    z = torch.randn(8, 16)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    fn = MultiPositiveNTXent(0.1)
    full = fn(z, labels)
    halves = [fn(z, labels, anchor_index=torch.arange(0, 4)), fn(z, labels, anchor_index=torch.arange(4, 8))]
    assert full.item() == pytest.approx(sum(h.item() for h in halves) / 2, rel=1e-5)


def test_lower_when_same_class_embeddings_align():
    torch.manual_seed(1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    centers = torch.nn.functional.normalize(torch.randn(4, 32), dim=1)
    noise = torch.randn(8, 32)
    fn = MultiPositiveNTXent(0.1)
    aligned = fn(centers[labels] + 0.05 * noise, labels)
    loose = fn(centers[labels] + 1.0 * noise, labels)
    shuffled = fn(
        centers[labels[torch.tensor([0, 2, 4, 6, 1, 3, 5, 7])]], labels
    )  # pairs split across classes
    assert aligned.item() < loose.item() < shuffled.item()


def test_gradient_flows_and_bad_shapes_refused():
    z = torch.randn(4, 8, requires_grad=True)
    MultiPositiveNTXent()(z, torch.tensor([1, 1, 2, 2])).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="labels"):
        MultiPositiveNTXent()(torch.randn(4, 8), torch.tensor([1, 1, 2]))
    with pytest.raises(ValueError, match="temperature"):
        MultiPositiveNTXent(temperature=0.0)
