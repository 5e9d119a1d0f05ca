"""MFENet and the presets of conf/model: shapes, switches, gradient flow, frozen DAN, bf16, DAN checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from mfe_iqa.models.dan import DistortionAwareNetwork
from mfe_iqa.models.flops import build_preset, list_presets
from mfe_iqa.models.mfenet import MFENet, PlainIQANet
from mfe_iqa.models.outputs import MFENetOutput

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
TINY = {
    "qen": {"variant": "van_b0", "drop_path_rate": 0.0},
    "dan": {"backbone": "resnet10t", "num_dist_types": 3},
    "hfen": {"stem_channels": 4, "channels": [8, 8, 16, 16]},
    "head": {"hidden_dims": [16]},
}
EXPECTED_PRESETS = {"mfenet", "mfenet_tiny", "no_hfen", "no_dan", "add_fusion", "concat_fusion", "plain"}


def tiny(**overrides) -> MFENet:
    torch.manual_seed(0)
    kwargs = {k: dict(v) for k, v in TINY.items()}
    for key, value in overrides.items():
        if key in kwargs:
            kwargs[key] = {**kwargs[key], **value}
        else:
            kwargs[key] = value
    return MFENet(**kwargs)


def test_all_presets_exist() -> None:
    assert set(list_presets(CONF_DIR)) >= EXPECTED_PRESETS


@pytest.mark.parametrize("preset", sorted(EXPECTED_PRESETS))
def test_preset_output_shapes_224_and_non_square(preset: str) -> None:
    torch.manual_seed(0)
    overrides = [] if preset == "plain" else ["dan.num_dist_types=5"]
    net = build_preset(preset, overrides, CONF_DIR).eval()
    for h, w in [(224, 224), (256, 320)]:
        with torch.no_grad():
            out = net(torch.rand(1, 3, h, w))  # batch of one, eval mode
        assert isinstance(out, MFENetOutput)
        assert (
            out.score.shape == (1,) and out.score.dtype == torch.float32 and torch.isfinite(out.score).all()
        )
        if isinstance(net, MFENet) and net.use_hfen:
            assert out.hf_pred.shape == out.hf_target.shape == (1, 1, h, w)
        else:
            assert out.hf_pred is None and out.hf_target is None
        if isinstance(net, MFENet) and net.use_dan:
            assert out.dist_logits.shape == (1, 5)
        else:
            assert out.dist_logits is None


def test_ablation_presets_switch_what_they_name() -> None:
    nets = {
        name: build_preset(name, conf_dir=CONF_DIR)
        for name in ("no_hfen", "no_dan", "add_fusion", "concat_fusion")
    }
    assert nets["no_hfen"].hfen is None and nets["no_hfen"].dan is not None
    assert nets["no_dan"].dan is None and nets["no_dan"].hfen is not None
    assert {type(m).__name__ for m in nets["add_fusion"].dan_fusions.values()} == {"AddFusion"}
    assert {type(m).__name__ for m in nets["add_fusion"].hf_fusions.values()} == {"AddFusion"}
    assert {type(m).__name__ for m in nets["concat_fusion"].dan_fusions.values()} == {"ConcatFusion"}
    assert nets["no_dan"].qen.variant == "van_b0"  # inherits mfenet_tiny through the defaults list
    paper = build_preset("mfenet", ["use_hfen=false"], CONF_DIR)
    assert paper.hfen is None and paper.qen.variant == "van_b2" and paper.dan.backbone_name == "resnet50"


def test_num_dist_types_follows_data_config() -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        with_data = compose(overrides=["+model=mfenet_tiny", "+data.num_dist_types=25"])
        without = compose(overrides=["+model=mfenet_tiny"])
    assert with_data.model.dan.num_dist_types == 25
    assert without.model.dan.num_dist_types == 0
    assert without.model.dan.pretrained_ckpt is None


@pytest.mark.parametrize("fusion,hf_fusion", [("aff", "ffm"), ("iaff", "concat")])
def test_gradients_reach_every_trainable_parameter(fusion: str, hf_fusion: str) -> None:
    net = tiny(fusion=fusion, hf_fusion=hf_fusion).train()
    with torch.no_grad():  # timm zero-initializes the last BN of each residual block, which blocks the
        for m in net.modules():  # gradient of the convs before it at step 0; give those BNs unit scale
            if isinstance(m, torch.nn.BatchNorm2d) and not m.weight.any():
                m.weight.fill_(1.0)
    out = net(torch.rand(2, 3, 48, 48))
    loss = out.score.sum() + (out.hf_pred - out.hf_target).pow(2).mean() + out.dist_logits.logsumexp(1).sum()
    loss.backward()
    no_grad = [
        n
        for n, p in net.named_parameters()
        if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)
    ]
    assert no_grad == []


def test_closed_hf_gate_makes_the_score_independent_of_hfen() -> None:
    x = torch.rand(2, 3, 48, 48)
    for gate_init, depends in ((0.0, False), (None, True)):
        net = tiny(hf_gate_init=gate_init).eval()
        before = net(x)
        with torch.no_grad():
            for p in net.hfen.parameters():
                p.add_(torch.randn_like(p))
        after = net(x)
        assert not torch.equal(before.hf_pred, after.hf_pred)  # the HFEN did change
        assert torch.equal(before.score, after.score) is not depends, gate_init
    gated = tiny(hf_gate_init=0.5)
    assert all(torch.equal(f.gate.detach(), torch.full_like(f.gate, 0.5)) for f in gated.hf_fusions.values())
    assert sum("gate" in n for n, _ in gated.named_parameters()) == 4  # one per fused stage


def test_channels_last_network_computes_the_same() -> None:
    x = torch.rand(2, 3, 48, 48)
    no_dropout = {"dropout": 0.0}  # train mode (batch statistics), without random masks
    ref = tiny(head=no_dropout).train()
    cl = tiny(head=no_dropout).train().to(memory_format=torch.channels_last)
    outs = [net(inp) for net, inp in ((ref, x), (cl, x.contiguous(memory_format=torch.channels_last)))]
    for out in outs:
        (out.score.sum() + out.hf_pred.mean() + out.dist_logits.sum()).backward()
    torch.testing.assert_close(outs[1].score, outs[0].score, rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(ref.named_parameters(), cl.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-3, atol=1e-4, msg=name)


def test_hf_gate_needs_ffm() -> None:
    with pytest.raises(ValueError, match=r"hf_gate_init=0.0 gates FFM, but model.hf_fusion='add'"):
        tiny(hf_fusion="add", hf_gate_init=0.0)


def test_frozen_dan_gets_no_gradient_and_keeps_statistics() -> None:
    net = tiny(dan={"freeze": True}).train()
    bn_before = {k: v.clone() for k, v in net.dan.backbone.state_dict().items() if "running" in k}
    out = net(torch.rand(2, 3, 48, 48))
    (out.score.sum() + out.dist_logits.sum() + out.hf_pred.mean()).backward()
    assert all(p.grad is None for p in net.dan.backbone.parameters())
    assert net.dan.dist_head.weight.grad is not None  # the distortion head still learns
    assert net.dan_projs["0"].proj[0].weight.grad is not None
    assert net.qen.patch_embed1.proj.weight.grad is not None
    for k, v in net.dan.backbone.state_dict().items():
        if k in bn_before:
            assert torch.equal(v, bn_before[k]), k
    groups = net.parameter_groups()
    frozen = {id(p) for p in net.dan.backbone.parameters()}
    assert not frozen & {id(p) for g in groups.values() for p in g}


def test_parameter_groups_partition_trainable_parameters() -> None:
    net = tiny()
    groups = net.parameter_groups()
    assert set(groups) == {"backbone", "dan", "stats_head", "head"}
    ids = {k: {id(p) for p in v} for k, v in groups.items()}
    every = [i for v in groups.values() for i in map(id, v)]
    assert len(every) == len(set(every))  # no parameter in two groups
    assert set(every) == {id(p) for p in net.parameters() if p.requires_grad}
    assert ids["backbone"] == {id(p) for p in net.qen.parameters()}
    assert ids["dan"] == {id(p) for p in net.dan.backbone.parameters()}
    assert {id(p) for p in net.hfen.parameters()} <= ids["head"]
    assert id(net.dan.dist_head.weight) in ids["head"]
    no_dan = tiny(use_dan=False).parameter_groups()
    assert no_dan["dan"] == [] and len(no_dan["backbone"]) == len(groups["backbone"])
    assert groups["stats_head"] == [] == no_dan["stats_head"]  # no DAN-statistics head in this net


def test_add_fusion_in_network_equals_sum() -> None:
    net = tiny(fusion="add", hf_fusion="add").eval()
    seen = {}

    def hook(module, inputs, output):
        seen["x"], seen["y"], seen["z"] = inputs[0], inputs[1], output

    net.dan_fusions["1"].register_forward_hook(hook)
    with torch.no_grad():
        net(torch.rand(1, 3, 64, 80))
    assert seen["x"].shape == seen["y"].shape == (1, 64, 8, 10)
    torch.testing.assert_close(seen["z"], seen["x"] + seen["y"])


def test_fuse_stages_subset_and_odd_sizes() -> None:
    net = tiny(fuse_stages=[2]).eval()
    assert set(net.dan_fusions) == set(net.hf_fusions) == {"2"}
    assert len(net.hfen.hf_modules) == 3  # HFEN only goes as deep as the deepest fused stage
    with torch.no_grad():
        out = net(torch.rand(2, 3, 67, 45))
    assert out.score.shape == (2,) and out.hf_pred.shape == (2, 1, 67, 45)


def test_bf16_autocast_cpu_close_to_fp32() -> None:
    net = tiny().eval()
    x = torch.rand(2, 3, 48, 64)
    with torch.no_grad():
        ref = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x)
    for name in ("score", "hf_pred", "dist_logits"):
        a, b = getattr(ref, name), getattr(low, name).float()
        assert torch.isfinite(b).all(), name
        scale = float(a.abs().max()) + 1e-2
        assert float((a - b).abs().max()) < 0.05 * scale, name


def test_bad_options_name_the_key() -> None:
    with pytest.raises(ValueError, match="qen.*varaint"):
        MFENet(qen={"varaint": "van_b0"})
    with pytest.raises(ValueError, match="fusion='sum'"):
        tiny(fusion="sum")
    with pytest.raises(ValueError, match="fuse_stages"):
        tiny(fuse_stages=[4])


def test_dan_checkpoint_loads_into_mfenet(tmp_path) -> None:
    torch.manual_seed(1)
    pretrained = DistortionAwareNetwork("resnet10t")
    path = tmp_path / "dan.pt"
    torch.save(pretrained.export_state(), path)
    net = tiny(dan={"pretrained_ckpt": str(path)})
    for k, v in pretrained.backbone.state_dict().items():
        assert torch.equal(net.dan.backbone.state_dict()[k], v), k


def test_plain_baseline() -> None:
    torch.manual_seed(0)
    net = PlainIQANet("resnet10t", head={"hidden_dims": [8]}).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 3, 64, 80))
    assert out.score.shape == (1,) and out.hf_pred is None and out.dist_logits is None
    groups = net.parameter_groups()
    assert len(groups["backbone"]) + len(groups["head"]) == len(list(net.parameters()))
    with pytest.raises(ValueError, match="plain model has none"):
        PlainIQANet("resnet10t", dan_stats_head=True)


def test_dan_stats_head_starts_as_the_network_without_it() -> None:
    x = torch.rand(3, 3, 48, 48)
    plain = tiny()
    rng_plain = torch.get_rng_state()
    stats = tiny(dan_stats_head=True)
    assert torch.equal(torch.get_rng_state(), rng_plain)  # building it drew no random numbers
    own = dict(stats.named_parameters())
    for name, p in plain.named_parameters():
        assert torch.equal(own[name], p), name
    assert {n for n in own if n not in dict(plain.named_parameters())} == {
        "dan_stats.weight",
        "dan_stats.bias",
    }
    for mode in (False, True):
        head_dropout_off = {"dropout": 0.0}
        a = tiny(head=head_dropout_off).train(mode)(x).score
        b = tiny(head=head_dropout_off, dan_stats_head=True).train(mode)(x).score
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    groups = stats.parameter_groups()
    # its own group (system.stats_head_lr_mult); the weight 2-D, so the optimizer's weight decay applies to it
    assert [id(p) for p in groups["stats_head"]] == [id(stats.dan_stats.weight), id(stats.dan_stats.bias)]
    assert stats.dan_stats.weight.ndim == 2
    with pytest.raises(ValueError, match="needs model.use_dan=true"):
        tiny(use_dan=False, dan_stats_head=True)


def test_dan_stats_head_by_hand_and_its_gradient() -> None:
    from mfe_iqa.models.heads import StatsLinearHead

    maps = [torch.rand(4, 2, 5, 5), torch.rand(4, 3, 2, 3) * 3]
    head = StatsLinearHead([2, 3]).eval()
    d = head.in_features
    assert d == 10
    rm, rv = torch.linspace(0.1, 1.0, d), torch.linspace(0.5, 2.0, d)
    w, b = torch.linspace(-1, 1, d), 0.3
    with torch.no_grad():
        head.norm.running_mean.copy_(rm)
        head.norm.running_var.copy_(rv)
        head.weight.copy_(w.view(1, -1))
        head.bias.fill_(b)
    by_hand = []
    for i in range(4):
        feats = []
        for m in maps:
            v = m[i].numpy().reshape(m.shape[1], -1)
            feats += [v.mean(1), v.std(1)]  # per stage: its channel means, then its channel stds
        f = np.concatenate(feats)
        by_hand.append(((f - rm.numpy()) / np.sqrt(rv.numpy() + head.norm.eps)) @ w.numpy() + b)
    np.testing.assert_allclose(head(maps).detach().numpy(), np.array(by_hand), rtol=1e-5, atol=1e-5)
    # trained from zero: the first backward reaches the weight and, through it, the branch's maps
    net = tiny(dan_stats_head=True).train()
    net(torch.rand(3, 3, 48, 48)).score.sum().backward()
    assert net.dan_stats.weight.grad.abs().sum() > 0 and net.dan_stats.bias.grad.abs() > 0
