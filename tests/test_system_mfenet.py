"""IQATrainingModule with the real MFENet (conf/model/mfenet_tiny.yaml) at 32 px: losses, groups, checkpoint."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from mfe_iqa.systems.iqa import IQATrainingModule, load_net_from_checkpoint, warmup_cosine_schedule
from training_helpers import SIZE, NoiseDB, one_torch_thread  # noqa: F401 (autouse fixture)

MODEL_YAML = Path(__file__).resolve().parents[1] / "conf" / "model" / "mfenet_tiny.yaml"


def test_mfenet_tiny_trains_validates_and_reloads(tmp_path):
    if not MODEL_YAML.is_file():
        pytest.skip(f"{MODEL_YAML} not present")
    cfg = OmegaConf.load(MODEL_YAML)
    cfg.dan.num_dist_types = 3
    model_cfg = OmegaConf.to_container(cfg, resolve=True)
    torch.manual_seed(0)
    net = instantiate(model_cfg)
    # the stored config points at a DAN file that does not exist here: the reload must not need it
    stored_cfg = {
        **model_cfg,
        "dan": {**model_cfg["dan"], "pretrained_ckpt": str(tmp_path / "absent_dan.pt")},
    }
    system = IQATrainingModule(
        net=net,
        lambda_hf=0.1,
        lambda_dist=0.1,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
        scheduler=functools.partial(warmup_cosine_schedule, warmup_fraction=0.5),
        backbone_lr_mult=0.1,
        dan_lr_mult=0.3,
        weight_decay=0.01,
        model_cfg=OmegaConf.to_yaml(OmegaConf.create(stored_cfg)),
        database={"name": "toy", "mos_min": 0.0, "mos_max": 1.0, "lower_better": False},
    )
    losses = system.compute_losses(
        system(torch.rand(4, 3, SIZE, SIZE)),
        {"mos": torch.rand(4), "dist_type": torch.tensor([0, 1, -1, 2])},
    )
    assert all(torch.isfinite(v) and v > 0 for v in losses.values()), losses

    trainer = L.Trainer(
        default_root_dir=tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, accelerator="cpu",
        logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        num_sanity_val_steps=0,
    )  # fmt: skip
    train = DataLoader(NoiseDB(8, seed=1), batch_size=4)
    val = DataLoader(NoiseDB(6, seed=2, crops=2), batch_size=6)
    trainer.fit(system, train, val)
    assert {"train/loss_hf", "train/loss_dist", "val/srcc", "val/srcc_best"} <= set(trainer.callback_metrics)
    groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
    assert groups["backbone"]["initial_lr"] == pytest.approx(1e-4) and groups["head"][
        "initial_lr"
    ] == pytest.approx(1e-3)
    assert all(p.ndim <= 1 for p in groups["backbone_no_decay"]["params"])
    # the pre-trained DAN backbone at lr * dan_lr_mult, the QEN at lr * backbone_lr_mult
    for name in ("dan", "dan_no_decay"):
        assert groups[name]["initial_lr"] == pytest.approx(3e-4), name
    dan_ids = {id(p) for name in ("dan", "dan_no_decay") for p in groups[name]["params"]}
    assert dan_ids == {id(p) for p in net.dan.backbone.parameters()}

    path = tmp_path / "mfenet.ckpt"
    trainer.save_checkpoint(path)
    reloaded, database = load_net_from_checkpoint(path)
    assert database["name"] == "toy"
    x = torch.rand(2, 3, SIZE, SIZE)
    system.net.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(x).score, system.net(x).score, atol=1e-6)


def test_dan_lr_mult_defaults_to_backbone_and_rejects_zero():
    if not MODEL_YAML.is_file():
        pytest.skip(f"{MODEL_YAML} not present")
    cfg = OmegaConf.to_container(OmegaConf.load(MODEL_YAML), resolve=True)
    cfg["dan"]["pretrained_ckpt"] = None
    net = instantiate(cfg)
    adamw = functools.partial(torch.optim.AdamW, lr=1e-3)
    system = IQATrainingModule(net=net, optimizer=adamw, backbone_lr_mult=0.2)
    groups = {g["name"]: g for g in system.configure_optimizers().param_groups}
    assert groups["dan"]["lr"] == pytest.approx(2e-4) == groups["backbone"]["lr"]
    assert groups["head"]["lr"] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match=r"dan_lr_mult \(0\.0\).*model\.dan\.freeze=true"):
        IQATrainingModule(net=net, dan_lr_mult=0.0)


def test_stats_head_lr_mult_sets_its_own_group_and_zero_keeps_the_head(tmp_path):
    if not MODEL_YAML.is_file():
        pytest.skip(f"{MODEL_YAML} not present")
    cfg = OmegaConf.to_container(OmegaConf.load(MODEL_YAML), resolve=True)
    cfg["dan"]["pretrained_ckpt"] = None
    cfg["dan_stats_head"] = True
    torch.manual_seed(0)
    net = instantiate(cfg)
    adamw = functools.partial(torch.optim.AdamW, lr=1e-3)
    groups = {g["name"]: g for g in IQATrainingModule(net=net, optimizer=adamw, stats_head_lr_mult=0.1)
              .configure_optimizers().param_groups}  # fmt: skip
    # the head's weight (decayed) and bias (not decayed) at lr * 0.1; nothing of it in the other groups
    assert groups["stats_head"]["lr"] == pytest.approx(1e-4) == groups["stats_head_no_decay"]["lr"]
    assert {id(p) for n in ("stats_head", "stats_head_no_decay") for p in groups[n]["params"]} == {
        id(net.dan_stats.weight),
        id(net.dan_stats.bias),
    }
    assert groups["head"]["lr"] == pytest.approx(1e-3)
    with pytest.raises(ValueError, match=r"stats_head_lr_mult \(-1\.0\) must be >= 0"):
        IQATrainingModule(net=net, stats_head_lr_mult=-1.0)

    # at 0 the head keeps its start (a nonzero one, as the probe stage leaves it) while the rest of the net trains
    with torch.no_grad():
        net.dan_stats.weight.normal_(0, 0.01)
        net.dan_stats.bias.fill_(0.3)
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    system = IQATrainingModule(net=net, optimizer=adamw, stats_head_lr_mult=0.0, weight_decay=0.01)
    trainer = L.Trainer(
        default_root_dir=tmp_path, max_steps=2, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(system, DataLoader(NoiseDB(8, seed=1), batch_size=4))
    moved = {n for n, p in net.named_parameters() if not torch.equal(p, start[n])}
    assert not moved & {"dan_stats.weight", "dan_stats.bias"}
    assert any(n.startswith("qen.") for n in moved) and any(n.startswith("dan.backbone.") for n in moved)
