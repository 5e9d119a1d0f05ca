"""VAN: published parameter counts, official checkpoint key names, any input size."""

from __future__ import annotations

import pytest
import torch

from mfe_iqa.models.van import (
    VAN,
    LargeKernelAttention,
    VANCheckpointError,
    dilated_depthwise_by_phases,
    van_param_count,
)

# Published sizes (VAN paper, Table / VAN-Classification README), in millions, with the ImageNet head.
PUBLISHED_PARAMS_M = {"van_b0": 4.1, "van_b1": 13.9, "van_b2": 26.6, "van_b3": 44.8}

# Official architecture (VAN-Classification models/van.py): widths, depths, MLP ratios per variant.
OFFICIAL = {
    "van_b0": ((32, 64, 160, 256), (3, 3, 5, 2)),
    "van_b1": ((64, 128, 320, 512), (2, 2, 4, 2)),
}
MLP_RATIOS = (8, 8, 4, 4)


def official_state_dict(variant: str, with_head: bool = True) -> dict[str, torch.Tensor]:
    """A state dict written from the official key names and shapes, with random values."""
    dims, depths = OFFICIAL[variant]
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (c,)

    for i in range(4):
        c_in = 3 if i == 0 else dims[i - 1]
        k = 7 if i == 0 else 3
        c = dims[i]
        shapes[f"patch_embed{i + 1}.proj.weight"] = (c, c_in, k, k)
        shapes[f"patch_embed{i + 1}.proj.bias"] = (c,)
        bn(f"patch_embed{i + 1}.norm", c)
        hidden = c * MLP_RATIOS[i]
        for j in range(depths[i]):
            b = f"block{i + 1}.{j}"
            shapes[f"{b}.layer_scale_1"] = (c,)
            shapes[f"{b}.layer_scale_2"] = (c,)
            bn(f"{b}.norm1", c)
            bn(f"{b}.norm2", c)
            shapes[f"{b}.attn.proj_1.weight"] = (c, c, 1, 1)
            shapes[f"{b}.attn.proj_1.bias"] = (c,)
            shapes[f"{b}.attn.spatial_gating_unit.conv0.weight"] = (c, 1, 5, 5)
            shapes[f"{b}.attn.spatial_gating_unit.conv0.bias"] = (c,)
            shapes[f"{b}.attn.spatial_gating_unit.conv_spatial.weight"] = (c, 1, 7, 7)
            shapes[f"{b}.attn.spatial_gating_unit.conv_spatial.bias"] = (c,)
            shapes[f"{b}.attn.spatial_gating_unit.conv1.weight"] = (c, c, 1, 1)
            shapes[f"{b}.attn.spatial_gating_unit.conv1.bias"] = (c,)
            shapes[f"{b}.attn.proj_2.weight"] = (c, c, 1, 1)
            shapes[f"{b}.attn.proj_2.bias"] = (c,)
            shapes[f"{b}.mlp.fc1.weight"] = (hidden, c, 1, 1)
            shapes[f"{b}.mlp.fc1.bias"] = (hidden,)
            shapes[f"{b}.mlp.dwconv.dwconv.weight"] = (hidden, 1, 3, 3)
            shapes[f"{b}.mlp.dwconv.dwconv.bias"] = (hidden,)
            shapes[f"{b}.mlp.fc2.weight"] = (c, hidden, 1, 1)
            shapes[f"{b}.mlp.fc2.bias"] = (c,)
        shapes[f"norm{i + 1}.weight"] = (c,)
        shapes[f"norm{i + 1}.bias"] = (c,)
    if with_head:
        shapes["head.weight"] = (1000, dims[-1])
        shapes["head.bias"] = (1000,)
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.rand(s, generator=g) + 0.5 for k, s in shapes.items()}  # +0.5: valid running_var
    return sd


@pytest.mark.parametrize("variant", sorted(PUBLISHED_PARAMS_M))
def test_param_counts_match_published(variant: str) -> None:
    assert abs(van_param_count(variant) / 1e6 - PUBLISHED_PARAMS_M[variant]) < 0.1


def test_official_keys_load_strict() -> None:
    sd = official_state_dict("van_b0")
    model = VAN("van_b0", num_classes=1000)
    model.load_state_dict(sd, strict=True)
    assert torch.equal(
        model.block2[1].attn.spatial_gating_unit.conv_spatial.weight,
        sd["block2.1.attn.spatial_gating_unit.conv_spatial.weight"],
    )


def test_pretrained_path_nested_checkpoint_skips_head(tmp_path) -> None:
    sd = official_state_dict("van_b0")
    path = tmp_path / "van_tiny_754.pth.tar"
    torch.save({"epoch": 300, "state_dict": sd}, path)
    model = VAN("van_b0", num_classes=0, pretrained_path=str(path))  # feature extractor: head.* ignored
    assert torch.equal(model.norm4.weight, sd["norm4.weight"])
    assert torch.equal(model.patch_embed1.norm.running_var, sd["patch_embed1.norm.running_var"])
    torch.save({"model": sd}, tmp_path / "b.pth")
    clf = VAN("van_b0", num_classes=1000, pretrained_path=str(tmp_path / "b.pth"))
    assert torch.equal(clf.head.bias, sd["head.bias"])


def test_mismatched_checkpoint_names_the_keys(tmp_path) -> None:
    path = tmp_path / "van_small.pth"
    sd = official_state_dict("van_b1")
    sd["extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": sd}, path)
    with pytest.raises(VANCheckpointError) as err:
        VAN(
            "van_b0", pretrained_path=str(path)
        )  # b1 has 2 blocks in stage 1 where b0 has 3; widths differ too
    msg = str(err.value)
    assert "block1.2.attn.proj_1.weight" in msg and "extra.weight" in msg and "shape mismatches" in msg
    with pytest.raises(FileNotFoundError, match="pretrained_path"):
        VAN("van_b0", pretrained_path=str(tmp_path / "absent.pth"))


@pytest.mark.parametrize("size", [(64, 64), (65, 81)])
def test_stage_shapes_any_size(size: tuple[int, int]) -> None:
    model = VAN("van_b0").eval()
    with torch.no_grad():
        feats = model(torch.rand(1, 3, *size))
    h, w = size
    expected = [(c, -(-h // r), -(-w // r)) for c, r in zip((32, 64, 160, 256), (4, 8, 16, 32))]
    assert [tuple(f.shape[1:]) for f in feats] == expected


def test_classifier_output_and_unknown_variant() -> None:
    model = VAN("van_b0", num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    with pytest.raises(ValueError, match="van_b9"):
        VAN("van_b9")


@pytest.mark.parametrize("size", [(16, 16), (17, 22), (30, 19), (5, 7)])
def test_dilated_depthwise_by_phases_equals_the_dilated_conv(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 6, 7, padding=9, groups=6, dilation=3)
    x = torch.randn(2, 6, *size, requires_grad=True)
    ref = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=9, dilation=3, groups=6)
    out = dilated_depthwise_by_phases(x, conv)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    grads_ref = torch.autograd.grad(ref, (x, conv.weight, conv.bias), g)
    grads = torch.autograd.grad(out, (x, conv.weight, conv.bias), g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_lka_takes_the_phase_path_from_the_threshold_on(monkeypatch) -> None:
    import mfe_iqa.models.van as van

    torch.manual_seed(0)
    lka = LargeKernelAttention(4).eval()
    calls = []
    monkeypatch.setattr(van, "dilated_depthwise_by_phases", lambda x, c: calls.append(x.shape) or c(x))
    for side in (van.PHASE_MIN_SIDE - 1, van.PHASE_MIN_SIDE):
        lka(torch.randn(1, 4, side, side + 3))
    assert calls == [(1, 4, van.PHASE_MIN_SIDE, van.PHASE_MIN_SIDE + 3)]


def test_lka_scripted_and_traced_match_eager() -> None:
    torch.manual_seed(0)
    lka = LargeKernelAttention(4).eval()
    x = torch.randn(2, 4, 20, 18)  # eager takes the phase path; the graphs use the plain dilated conv
    scripted, traced = torch.jit.script(lka), torch.jit.trace(lka, x, check_trace=False)
    y = torch.randn(1, 4, 33, 24)
    for graph in (scripted, traced):
        torch.testing.assert_close(graph(y), lka(y), rtol=1e-5, atol=1e-5)


def test_phase_benchmark_prints_every_stage_and_restores_the_switch() -> None:
    import mfe_iqa.models.van as van

    lines = van.benchmark_phases(batch=2, size=64, repeats=1)  # stage maps 16, 8, 4, 2 px
    assert len(lines) == 6 and "by phases" in lines[1] and "taps in reach" in lines[4]
    assert "whole van_b0" in lines[5] and van.CPU_FAST_DILATED_CONV is True
