"""`mfe-iqa-pretrain` end to end on a tiny demo: dan.pt and the Lightning checkpoint load into DAN and MFENet."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mfe_iqa.cli.common import CONF_DIR
from mfe_iqa.cli.pretrain import run_pretraining
from mfe_iqa.models.dan import DAN_CKPT_FORMAT, DANCheckpointError, DistortionAwareNetwork, load_dan_file


def _tiny_overrides(tmp_path) -> list[str]:
    return [
        f"pretrain_data.demo_root={tmp_path / 'demo'}",
        "pretrain_data.demo.num_refs=4",
        "pretrain_data.demo.short_side=40",
        "pretrain_data.demo.dist_types=[jpeg]",
        "pretrain_data.demo.levels=[1]",
        "pretrain_data.num_val_images=2",
        "pretrain_data.types=[jpeg,white_noise]",
        "pretrain_data.crop_size=16",
        "pretrain_data.batch_size=8",
        "pretrain_data.steps_per_epoch=2",
        "pretrain_system.projection_dim=16",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        "trainer.accelerator=cpu",
        "logger=csv",
        "callbacks.rich_progress_bar=null",
    ]


def test_pretrain_writes_a_dan_that_loads_into_dan_and_mfenet(compose_cfg, tmp_path, capsys):
    cfg = compose_cfg("pretrain", _tiny_overrides(tmp_path))
    assert cfg.callbacks.model_checkpoint.monitor == "val/knn_type_acc"
    assert cfg.trainer.use_distributed_sampler is False
    out = tmp_path / "run"
    dan_path = run_pretraining(cfg)
    assert dan_path == out / "dan.pt"

    exported = torch.load(dan_path, map_location="cpu", weights_only=False)
    assert exported["format"] == DAN_CKPT_FORMAT and exported["backbone"] == "resnet10t"
    dan = DistortionAwareNetwork("resnet10t", pretrained_ckpt=str(dan_path))
    for k, v in dan.backbone.state_dict().items():
        torch.testing.assert_close(v, exported["state_dict"][k])

    # The Lightning checkpoint that was selected carries the backbone name and dan.backbone.* keys.
    metrics = json.loads((out / "pretrain_metrics.json").read_text())
    assert 0.0 <= metrics["val/knn_type_acc"] <= 1.0 and 0.0 <= metrics["val/knn_class_acc"] <= 1.0
    assert metrics["images"] == {"train": 2, "val": 2, "authentic": 0, "synthetic": 0}
    printed = capsys.readouterr().out
    assert "k-NN distortion-type accuracy on 2 held-out images: " in printed and "(chance 50.0%)" in printed
    # beside the selected checkpoint's figure, the last epoch's, as the CSV logger recorded it
    with open(out / "csv" / "metrics.csv") as f:
        logged = [float(r["val/knn_type_acc"]) for r in csv.DictReader(f) if r.get("val/knn_type_acc")]
    assert len(logged) == 2 and metrics["last_epoch"]["val/knn_type_acc"] == pytest.approx(logged[-1])
    assert f"the last epoch's type accuracy: {100 * logged[-1]:.1f}%" in printed
    assert f"{100 * metrics['val/knn_type_acc']:.1f}%" in printed  # 2 types; (type, level): 10 classes
    ckpt = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=False)
    assert ckpt["mfe_iqa_dan"] == {"backbone": "resnet10t"}
    from_ckpt = load_dan_file(metrics["checkpoint"])
    assert from_ckpt["state_dict"].keys() == exported["state_dict"].keys()
    for k, v in from_ckpt["state_dict"].items():
        torch.testing.assert_close(v, exported["state_dict"][k])  # dan.pt is the selected checkpoint's DAN

    with open(out / "pretrain_images.csv") as f:
        assert sorted(r["role"] for r in csv.DictReader(f)) == ["train", "train", "val", "val"]
    with open(out / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("train/loss_step") for r in rows) and any(r.get("val/knn_type_acc") for r in rows)

    # MFENet (the CPU preset, whose DAN is resnet10t) loads the pre-trained DAN by key.
    model_cfg = OmegaConf.load(CONF_DIR / "model" / "mfenet_tiny.yaml")
    model_cfg.dan.pretrained_ckpt = str(dan_path)
    model_cfg.dan.num_dist_types = 0
    net = instantiate(model_cfg)
    for k, v in net.dan.backbone.state_dict().items():
        torch.testing.assert_close(v, exported["state_dict"][k])

    with pytest.raises(DANCheckpointError, match="pre-trained with backbone 'resnet10t'.*model.dan.backbone"):
        DistortionAwareNetwork("resnet18", pretrained_ckpt=str(dan_path))


def test_pretrain_under_two_process_ddp_gathers_and_exports(compose_cfg, tmp_path):
    """2-process DDP on CPU (gloo): embeddings are all-gathered with gradients; dan.pt is still written once."""
    cfg = compose_cfg(
        "pretrain",
        # ddp_spawn: plain `ddp` relaunches sys.argv (here: pytest itself) in the second process.
        [
            *_tiny_overrides(tmp_path),
            "trainer=ddp_cpu",
            "trainer.strategy=ddp_spawn",
            "trainer.sync_batchnorm=false",
        ],
    )
    dan_path = run_pretraining(cfg)
    exported = torch.load(dan_path, map_location="cpu", weights_only=False)
    assert exported["backbone"] == "resnet10t"
    with open(tmp_path / "run" / "csv" / "metrics.csv") as f:
        losses = [float(r["train/loss_step"]) for r in csv.DictReader(f) if r.get("train/loss_step")]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
