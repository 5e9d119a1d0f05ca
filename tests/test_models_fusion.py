"""Fusion modules against hand-computed values: AFF/iAFF formula (no factor 2), add, concat, FFM."""

from __future__ import annotations

import math

import torch
from torch import nn

from mfe_iqa.models.fusion import AFF, FFM, IAFF, MSCAM, AddFusion, BranchProjection, ConcatFusion


def set_constant_attention(mscam: MSCAM, logits: list[float]) -> None:
    """Make M(.) = sigmoid(logits[c]) for every pixel: zero weights, the logit split over the two branch biases."""
    with torch.no_grad():
        for m in mscam.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
                if m.bias is not None:
                    m.bias.zero_()
        last_bn = mscam.local_att[-1]
        last_bn.weight.zero_()
        last_bn.bias.copy_(torch.tensor(logits) / 2)  # L(X) = logits / 2 everywhere (eval mode BN)
        mscam.global_att[-1].bias.copy_(torch.tensor(logits) / 2)  # G(X) = logits / 2
    mscam.eval()


def hand_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor([2.0, -4.0]).view(1, 2, 1, 1).expand(1, 2, 3, 3).clone()
    y = torch.tensor([-1.0, 6.0]).view(1, 2, 1, 1).expand(1, 2, 3, 3).clone()
    return x, y


def test_aff_equals_formula_on_hand_tensors() -> None:
    aff = AFF(2, reduction=1)
    set_constant_attention(aff.mscam, [0.0, math.log(3.0)])  # M = 0.5 for channel 0, 0.75 for channel 1
    x, y = hand_tensors()
    z = aff(x, y)
    # channel 0: 0.5 * 2 + 0.5 * (-1) = 0.5 ; channel 1: 0.75 * (-4) + 0.25 * 6 = -1.5
    expected = torch.tensor([0.5, -1.5]).view(1, 2, 1, 1).expand_as(z)
    torch.testing.assert_close(z, expected)


def test_iaff_equals_two_step_formula() -> None:
    iaff = IAFF(2, reduction=1)
    set_constant_attention(iaff.mscam1, [0.0, 0.0])
    set_constant_attention(iaff.mscam2, [math.log(3.0), -math.log(3.0)])  # M2 = 0.75, 0.25
    x, y = hand_tensors()
    z = iaff(x, y)
    expected = torch.tensor([0.75 * 2 + 0.25 * -1, 0.25 * -4 + 0.75 * 6]).view(1, 2, 1, 1).expand_as(z)
    torch.testing.assert_close(z, expected)


def test_mscam_combines_local_and_global_branches() -> None:
    torch.manual_seed(0)
    cam = MSCAM(8, reduction=2).eval()
    x = torch.randn(2, 8, 5, 6)

    def bn(t: torch.Tensor, m: nn.BatchNorm2d) -> torch.Tensor:
        scale = m.weight / torch.sqrt(m.running_var + m.eps)
        return (t - m.running_mean.view(1, -1, 1, 1)) * scale.view(1, -1, 1, 1) + m.bias.view(1, -1, 1, 1)

    with torch.no_grad():
        w = cam(x)
        c1, b1, _, c2, b2 = cam.local_att
        # local: point-wise bottleneck, as a per-pixel matrix product
        h = torch.einsum("oc,bchw->bohw", c1.weight[:, :, 0, 0], x)
        h = torch.relu(bn(h, b1))
        local = bn(torch.einsum("oc,bchw->bohw", c2.weight[:, :, 0, 0], h), b2)
        _, g1, _, g2 = cam.global_att
        v = x.mean(dim=(2, 3))  # (B, C)
        glob = torch.relu(v @ g1.weight[:, :, 0, 0].T + g1.bias) @ g2.weight[:, :, 0, 0].T + g2.bias
        expected = torch.sigmoid(local + glob[:, :, None, None])
    torch.testing.assert_close(w, expected)
    assert w.shape == x.shape and float(w.min()) > 0 and float(w.max()) < 1


def test_add_fusion_is_sum() -> None:
    x, y = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3, 5)
    torch.testing.assert_close(AddFusion()(x, y), x + y)


def test_concat_fusion_is_projection_of_concatenation() -> None:
    torch.manual_seed(0)
    fuse = ConcatFusion(3).eval()
    with torch.no_grad():
        fuse.proj[0].weight.zero_()
        fuse.proj[0].weight[0, 0] = 1.0  # out0 = x0
        fuse.proj[0].weight[1, 3] = 1.0  # out1 = y0
        fuse.proj[0].weight[2, 2] = 1.0
        fuse.proj[0].weight[2, 5] = -1.0  # out2 = x2 - y2
    x, y = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    z = fuse(x, y) * math.sqrt(1 + fuse.proj[1].eps)  # undo the eval BN scale 1/sqrt(1 + eps)
    torch.testing.assert_close(z, torch.stack([x[:, 0], y[:, 0], x[:, 2] - y[:, 2]], dim=1))


def fixed_ffm_attention(ffm: FFM) -> FFM:
    """A two-channel FFM whose attentions are constants: a_c = (0.5, 0.75), a_s = 0.25 (gate untouched)."""
    with torch.no_grad():
        for m in ffm.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
                m.bias.zero_()
        ffm.channel_att[3].bias.copy_(torch.tensor([0.0, math.log(3.0)]))  # a_c = 0.5, 0.75
        ffm.spatial_att[0].bias.fill_(math.log(1 / 3))  # a_s = 0.25
    return ffm


def test_ffm_weights_high_frequency_by_attention() -> None:
    ffm = fixed_ffm_attention(FFM(2, reduction=1))
    x, h = hand_tensors()
    z = ffm(x, h)
    expected = torch.tensor([2.0 + 0.5 * 0.25 * -1.0, -4.0 + 0.75 * 0.25 * 6.0]).view(1, 2, 1, 1).expand_as(z)
    torch.testing.assert_close(z, expected)
    torch.testing.assert_close(FFM(2)(x, torch.zeros_like(x)), x)  # no high-frequency content: QEN unchanged


def test_ffm_gate_scales_what_it_adds_per_channel() -> None:
    ffm = fixed_ffm_attention(FFM(2, reduction=1, gate_init=0.0))
    x, h = hand_tensors()
    torch.testing.assert_close(ffm(x, h), x)  # a closed gate: exactly the QEN features
    with torch.no_grad():
        ffm.gate.copy_(torch.tensor([2.0, -1.0]))
    expected = torch.tensor([2.0 + 2.0 * 0.5 * 0.25 * -1.0, -4.0 - 1.0 * 0.75 * 0.25 * 6.0])
    torch.testing.assert_close(ffm(x, h), expected.view(1, 2, 1, 1).expand_as(x))
    assert FFM(2).gate is None and "gate" not in dict(FFM(2).named_parameters())  # default: the plain formula


def test_ffm_closed_gate_learns_while_its_attention_waits() -> None:
    ffm = FFM(4, gate_init=0.0)
    x, h = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    (ffm(x, h) * torch.randn(2, 4, 5, 5)).sum().backward()
    assert ffm.gate.grad is not None and ffm.gate.grad.abs().min() > 0  # the gate opens from the loss
    assert all(not p.grad.any() for n, p in ffm.named_parameters() if n != "gate")  # nothing flows past 0


def test_branch_projection_resizes_to_qen_resolution() -> None:
    proj = BranchProjection(6, 4).eval()
    assert proj(torch.randn(2, 6, 5, 7), (3, 4)).shape == (2, 4, 3, 4)
    assert proj(torch.randn(2, 6, 3, 4), (3, 4)).shape == (2, 4, 3, 4)
